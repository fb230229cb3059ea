"""Decision quality of the task gates (issue 26): simulated steps of a regression and an
embedding rollout (controller/simulation/task_scenarios.py) through the controller's own judge.
A student at its gate's limit must be promoted in at most 1 - confidence of the runs (the gate's
error, at every look), one twice over it rolled back, one at half of it promoted. 25 runs each
here, to stay quick; the README's numbers are 400 runs each of the same scenarios."""

from __future__ import annotations

import numpy as np
import pytest

from controller.policy import Policy
from controller.simulation.task_scenarios import simulate_task_step, task_scenarios

RUNS = 25
POLICIES = {
    "regression": {"max_mean_abs_error": 0.05, "max_error_rate": 0.01},
    "embedding": {"min_cosine": 0.95, "max_error_rate": 0.01},
}


@pytest.mark.parametrize("task", sorted(POLICIES))
def test_the_task_gate_promotes_a_good_student_and_no_bad_one(task: str) -> None:
    policy = Policy(task=task, gates=POLICIES[task], steps=[5, 25, 100],  # type: ignore[arg-type]
                    bake_seconds=300, interval_seconds=30, min_requests=300,
                    max_step_seconds=1800)  # fmt: skip
    for index, scenario in enumerate(task_scenarios(policy, shares=(0.05,))):
        rng = np.random.default_rng([26, index])
        outcomes = [simulate_task_step(scenario, policy, rng).outcome for _ in range(RUNS)]
        promoted = outcomes.count("promoted") / RUNS
        if scenario.expected == "promote":
            assert promoted >= 0.95, (scenario, promoted)
        elif "twice" in scenario.name:
            assert outcomes.count("rolled_back") == RUNS, (scenario, outcomes)
        else:  # at the limit: the gate's error, at most alpha
            assert promoted <= 1 - policy.confidence, (scenario, promoted)

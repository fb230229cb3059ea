"""``max_class_accuracy_drop`` at its threshold, at every look (issue 29): one class of ten exactly
as much worse as the gate allows, the others as good as the teacher, labels arriving look after
look. The gate passes (and the step would be promoted) in at most 1 - confidence of the runs,
whether the labels are paired (shadowed requests) or unpaired; a class twice as much worse fails
in nearly every run, and a student no worse anywhere passes. Monte Carlo through the controller's
own ``assess``, the same judge the simulator and the real controller run."""

from __future__ import annotations

import os

import numpy as np
import pytest

from controller.analysis import BackendWindow, Verdict, WindowMetrics, assess
from controller.labels import Labels, PairedLabels
from controller.policy import Gates, Policy

pytestmark = pytest.mark.e2e  # half a minute of Monte Carlo: with the simulator's, in `make test`
CLASSES = 10
THRESHOLD = 0.05
TEACHER_ACCURACY = 0.95
LOOKS = 80
PER_LOOK = 40  # labels a class gains each look, per backend (or pairs, when paired)
RUNS = int(os.environ.get("CLASS_GATE_RUNS", "100"))  # docs/simulation.md's numbers: 1,000
POLICY = Policy(steps=[5, 100], min_requests=1, confidence=0.95,
                gates=Gates(max_class_accuracy_drop=THRESHOLD))  # fmt: skip
ALPHA = 1 - POLICY.confidence


def _pair_probabilities(drop: float) -> list[float]:
    """both right, teacher only, student only, both wrong: the student worse by ``drop``, with
    some disagreement either way, as real pairs have."""
    student_only = 0.01
    teacher_only = student_only + drop
    both_correct = TEACHER_ACCURACY - teacher_only
    return [
        both_correct,
        teacher_only,
        student_only,
        1 - both_correct - teacher_only - student_only,
    ]


def _run(drops: list[float], paired: bool, rng: np.random.Generator) -> Verdict:
    """Looks until the gate decides; INCONCLUSIVE when it never does within LOOKS."""
    student = np.zeros((CLASSES, 2))  # total, correct
    teacher = np.zeros((CLASSES, 2))
    pairs = np.zeros((CLASSES, 4))
    for _ in range(LOOKS):
        for c, drop in enumerate(drops):
            if paired:
                pairs[c] += rng.multinomial(PER_LOOK, _pair_probabilities(drop))
            student[c] += (PER_LOOK, rng.binomial(PER_LOOK, TEACHER_ACCURACY - drop))
            teacher[c] += (PER_LOOK, rng.binomial(PER_LOOK, TEACHER_ACCURACY))
        labels = {str(c): Labels(*student[c]) for c in range(CLASSES)}
        step = WindowMetrics(
            student=BackendWindow(requests=1e6, feedback_by_class=labels),
            paired_by_class={str(c): PairedLabels(*pairs[c]) for c in range(CLASSES)} if paired
            else {},
        )  # fmt: skip
        rollout = WindowMetrics(teacher=BackendWindow(
            feedback_by_class={str(c): Labels(*teacher[c]) for c in range(CLASSES)}))  # fmt: skip
        (result,) = assess(step, rollout, POLICY, dark_launch=False)
        if result.verdict in (Verdict.PASS, Verdict.FAIL):
            return result.verdict
    return Verdict.INCONCLUSIVE


def _rates(drops: list[float], paired: bool, seed: int) -> dict[Verdict, float]:
    rng = np.random.default_rng([29, seed, int(paired)])
    verdicts = [_run(drops, paired, rng) for _ in range(RUNS)]
    return {v: verdicts.count(v) / RUNS for v in Verdict}


@pytest.mark.parametrize("paired", [True, False], ids=["paired", "unpaired"])
def test_one_class_at_the_threshold_passes_in_at_most_alpha_of_runs_at_any_look(
    paired: bool,
) -> None:
    at_threshold = _rates([THRESHOLD] + [0.0] * (CLASSES - 1), paired, seed=1)
    twice = _rates([2 * THRESHOLD] + [0.0] * (CLASSES - 1), paired, seed=2)
    good = _rates([0.0] * CLASSES, paired, seed=3)
    for name, rates in (("at the threshold", at_threshold), ("twice", twice), ("good", good)):
        shown = ", ".join(f"{v.value} {rate:.1%}" for v, rate in rates.items() if rate)
        print(f"{'paired' if paired else 'unpaired'}, {name}, {RUNS} runs: {shown}")  # pytest -s
    # seeded; measured 0.2 % (paired) and 0 % (unpaired) of 1,000 runs, against alpha's 5 %
    assert at_threshold[Verdict.PASS] <= ALPHA, at_threshold
    assert twice[Verdict.FAIL] >= 0.95, twice
    assert good[Verdict.PASS] >= 0.95, good

"""Simulated rollouts of a regression and an embedding model (issue 26): the gates
``max_mean_abs_error`` and ``min_cosine`` put through the controller's own judge, like the
classifier's scenarios in ``controller.simulation.scenarios``.

The traffic is the classifier's (``traffic.draw``: requests, shares, shadow comparisons,
latency), and each shadow comparison also yields the task's per-example value, as the gateway
records it (``gateway.tasks``): a regression's mean absolute error, an embedding's cosine
distance, each exponential with the scenario's true mean, drawn as multinomial counts over the
gateway's own bucket edges (its sum as the gamma sum of those exponentials), so the judge sees
the histogram's resolution as in production. Labels are not simulated for these tasks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import Literal

import numpy as np

from controller.analysis import Mean, TaskWindow, WindowMetrics
from controller.policy import Policy
from controller.simulation.judges import ControllerJudge, Decision
from controller.simulation.scenarios import Expected, Scenario
from controller.simulation.traffic import RunTraffic, draw
from gateway.metrics import COSINE_DISTANCE_BUCKETS
from gateway.task_config import ABS_ERROR_BUCKETS

Task = Literal["regression", "embedding"]


@dataclass(frozen=True)
class TaskScenario:
    name: str
    expected: Expected
    task: Task
    mean: float
    """The true mean per example: absolute error (regression) or 1 - cosine (embedding)."""
    traffic: Scenario = field(default_factory=lambda: Scenario("", "promote"))
    """Requests, share and shadow rate (the classifier's defaults: 60 req/s, 5 %, half shadowed)."""


@dataclass(frozen=True)
class TaskRunTraffic(RunTraffic):
    """A run's traffic with the task's histogram per interval."""

    task: Task = "regression"
    task_sum: np.ndarray = field(default_factory=lambda: np.zeros(0))  # per interval
    task_buckets: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))  # [n, buckets]

    def _task_window(self, start: int, end: int) -> TaskWindow:
        counts = self.task_buckets[start:end].sum(axis=0)
        edges = _edges(self.task)
        cumulative = list(zip((*edges, math.inf), np.cumsum(counts).tolist(), strict=True))
        mean = Mean(float(self.task_sum[start:end].sum()), float(counts.sum()), cumulative)
        return TaskWindow(abs_error=mean) if self.task == "regression" else TaskWindow(
            cosine_distance=mean)  # fmt: skip

    def window(self, start: int, end: int) -> WindowMetrics:
        return replace(super().window(start, end), task=self._task_window(start, end))

    def rollout_window(self, end: int) -> WindowMetrics:
        return replace(super().rollout_window(end), task=self._task_window(0, end))


def _edges(task: Task) -> tuple[float, ...]:
    return ABS_ERROR_BUCKETS if task == "regression" else COSINE_DISTANCE_BUCKETS


def draw_task(scenario: TaskScenario, intervals: int, interval_seconds: float,
              rng: np.random.Generator) -> TaskRunTraffic:  # fmt: skip
    base = draw(scenario.traffic, intervals, interval_seconds, rng)
    edges, mean = _edges(scenario.task), scenario.mean
    cdf = [1.0 - math.exp(-bound / mean) for bound in edges]
    probabilities = np.diff([0.0, *cdf, 1.0])
    comparisons = base.comparisons
    buckets = np.array([rng.multinomial(n, probabilities) for n in comparisons])
    sums = np.where(comparisons > 0, rng.gamma(np.maximum(comparisons, 1), mean), 0.0)
    kept = {f.name: getattr(base, f.name) for f in fields(RunTraffic)}
    return TaskRunTraffic(**kept, task=scenario.task, task_sum=sums, task_buckets=buckets)


def task_scenarios(policy: Policy, shares: tuple[float, ...] = (0.05, 0.25)) -> list[TaskScenario]:
    """For the policy's task gate: a good student (half the threshold's error), one at the
    threshold ("rollback" is right: a gate passes only when the data show it holds) and one at
    twice it, at each share."""
    gates = policy.gates
    if policy.task == "regression" and gates.max_mean_abs_error is not None:
        task: Task = "regression"
        limit = gates.max_mean_abs_error  # the mean error allowed
    elif policy.task == "embedding" and gates.min_cosine is not None:
        task, limit = "embedding", 1.0 - gates.min_cosine  # the mean distance allowed
    else:
        raise ValueError("task scenarios need a regression policy with max_mean_abs_error or an "
                         "embedding policy with min_cosine")  # fmt: skip
    scenarios = []
    for share in shares:
        traffic = replace(Scenario("", "promote"), share=share)
        scenarios += [
            TaskScenario(f"{task}: half the limit", "promote", task, limit / 2, traffic),
            TaskScenario(f"{task}: at the limit", "rollback", task, limit, traffic),
            TaskScenario(f"{task}: twice the limit", "rollback", task, 2 * limit, traffic),
        ]
    return scenarios


def simulate_task_step(scenario: TaskScenario, policy: Policy,
                       rng: np.random.Generator) -> Decision:  # fmt: skip
    """One run of one step, judged by the controller until it decides or time runs out."""
    intervals = math.floor(policy.max_step_seconds / policy.interval_seconds) + 1
    traffic = draw_task(scenario, intervals, policy.interval_seconds, rng)
    judge = ControllerJudge(policy)
    for analysed in range(1, intervals + 1):
        decision = judge.analyse(traffic, analysed)
        if decision is not None:
            return decision
    return Decision("inconclusive", intervals * policy.interval_seconds,
                    float(traffic.student.requests.sum()), None)  # fmt: skip

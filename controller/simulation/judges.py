"""The judges a simulated step is put to, each fed the same simulated data.

- ``controller``: this project's own ``analysis.assess``, ``decisions.judge`` and
  ``machine.transition``, called exactly as ``rollout.CanaryController`` calls them.
- ``threshold``: Flagger's way: each interval, the point value of every gate over that interval
  alone is compared with its threshold; no data is a failed check (Flagger's "no values found");
  the second failed check in a step rolls back; the step passes once baked with a passing check.
  At a dark launch it checks the gates shadow traffic can answer, as the controller does.
- ``mann_whitney``: Kayenta's way: the student's and the teacher's latency series (one value per
  interval: the policy's latency quantile of that interval's histogram) compared with a one-sided
  Mann-Whitney U test at the policy's confidence; a significant "student higher" fails the
  analysis, two failures in a row roll back, a baked step with no failure passes. Like Kayenta
  configured with latency alone, it sees nothing else.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

from scipy.stats import mannwhitneyu

from controller import analysis, machine
from controller.decisions import judge
from controller.policy import LIVE_ONLY_GATES, Policy
from controller.promtext import histogram_quantile
from controller.rollout_store import Phase
from controller.simulation.traffic import RunTraffic

Outcome = Literal["promoted", "rolled_back", "inconclusive"]
FLAGGER_FAILED_CHECKS = 2  # "fail on two breaches"


@dataclass(frozen=True)
class Decision:
    outcome: Outcome
    seconds: float  # from the start of the step
    samples: float  # student requests behind it
    enough_at: float | None  # when the step first had min_requests student requests


class StepJudge(Protocol):
    name: str

    def analyse(self, traffic: RunTraffic, intervals: int) -> Decision | None:
        """The decision after ``intervals`` intervals of the step, or None to hold."""


class ControllerJudge:
    name = "controller"

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.failures = 0
        self.enough_at: float | None = None
        # One step of two, confirmed: passing it advances, as at a 5 % or 25 % step.
        self.position = machine.Position(Phase.PROGRESSING, 0, 1, confirmed=True)

    def analyse(self, traffic: RunTraffic, intervals: int) -> Decision | None:
        step = traffic.window(0, intervals)
        elapsed = intervals * traffic.interval_seconds
        volume = traffic.volume(intervals)
        if self.enough_at is None and volume >= self.policy.min_requests:
            self.enough_at = elapsed
        # The rollout's window is the step's (the simulated step is the rollout's first), with the
        # teacher's earlier latency at the last step.
        rollout = traffic.rollout_window(intervals)
        results = analysis.assess(step, rollout, self.policy, dark_launch=traffic.dark_launch)
        judgement = judge(results, elapsed, self.failures, self.policy, is_last_step=False,
                          paused=False)  # fmt: skip
        self.failures = judgement.consecutive_failures
        moved = machine.transition(self.position, machine.Analysed(judgement))
        for effect in moved.effects:
            if isinstance(effect, machine.RollBack):
                outcome: Outcome = ("inconclusive" if effect.cause == "inconclusive_timeout"
                                    else "rolled_back")  # fmt: skip
                return Decision(outcome, elapsed, volume, self.enough_at)
            return Decision("promoted", elapsed, volume, self.enough_at)
        return None


class ThresholdJudge:
    name = "threshold"

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.failed_checks = 0

    def analyse(self, traffic: RunTraffic, intervals: int) -> Decision | None:
        elapsed = intervals * traffic.interval_seconds
        last = traffic.window(intervals - 1, intervals)
        samples = traffic.volume(intervals)
        # At a dark launch, the gates shadow traffic can answer (as the controller does).
        gates = {gate: threshold for gate, threshold in self.policy.gates.configured().items()
                 if not (traffic.dark_launch and gate in LIVE_ONLY_GATES)}  # fmt: skip
        if not all(_point_check(gate, threshold, last, self.policy)
                   for gate, threshold in gates.items()):  # fmt: skip
            self.failed_checks += 1
            if self.failed_checks >= FLAGGER_FAILED_CHECKS:
                return Decision("rolled_back", elapsed, samples, None)
            return None
        if elapsed >= self.policy.bake_seconds:
            return Decision("promoted", elapsed, samples, None)
        return None


def _point_check(gate: str, threshold: float, window: analysis.WindowMetrics,
                 policy: Policy) -> bool:  # fmt: skip
    """Whether the gate's point value over the window holds; no data fails the check."""
    student, teacher = window.student, window.teacher
    q = policy.latency_quantile

    def ratio(numerator: float, denominator: float) -> float:
        return numerator / denominator if denominator > 0 else math.nan

    values = {
        "max_error_rate": lambda: ratio(student.errors, student.requests),
        "min_agreement": lambda: ratio(window.agreements, window.comparisons),
        "max_accuracy_drop": lambda: (ratio(teacher.feedback_correct, teacher.feedback_total)
                                      - ratio(student.feedback_correct, student.feedback_total)),
        "max_latency_ms": lambda: histogram_quantile(q, student.latency) * 1000.0,
        "max_latency_ratio": lambda: ratio(histogram_quantile(q, student.latency),
                                           histogram_quantile(q, teacher.latency)),
        "max_kl": lambda: ratio(window.kl_sum, window.kl_count),
        "max_cost_per_1k": lambda: ratio(student.cost_dollars, student.requests) * 1000.0,
    }  # fmt: skip
    value = values[gate]()
    if math.isnan(value):
        return False
    return value >= threshold if gate == "min_agreement" else value <= threshold


class MannWhitneyJudge:
    name = "mann_whitney"

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.failures = 0
        self.student_series: list[float] = []
        self.teacher_series: list[float] = []

    def analyse(self, traffic: RunTraffic, intervals: int) -> Decision | None:
        elapsed = intervals * traffic.interval_seconds
        last = traffic.window(intervals - 1, intervals)
        q = self.policy.latency_quantile
        for series, window in ((self.student_series, last.student),
                               (self.teacher_series, last.teacher)):  # fmt: skip
            value = histogram_quantile(q, window.latency)
            if not math.isnan(value):
                series.append(value)
        samples = traffic.volume(intervals)
        if len(self.student_series) >= 3 and len(self.teacher_series) >= 3:
            test = mannwhitneyu(self.student_series, self.teacher_series, alternative="greater")
            if test.pvalue < 1.0 - self.policy.confidence:
                self.failures += 1
                if self.failures >= FLAGGER_FAILED_CHECKS:
                    return Decision("rolled_back", elapsed, samples, None)
                return None
            self.failures = 0
        if elapsed >= self.policy.bake_seconds and len(self.student_series) >= 3:
            return Decision("promoted", elapsed, samples, None)
        return None


JUDGES: dict[str, Callable[[Policy], StepJudge]] = {
    "controller": ControllerJudge,
    "threshold": ThresholdJudge,
    "mann_whitney": MannWhitneyJudge,
}

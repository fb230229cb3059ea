"""Draws what the gateways of a fleet would have exported, interval by interval, for one run.

Every count is drawn from the scenario's truth the way requests produce it: a Poisson number of
requests, a binomial split by the share, binomial errors, shadow comparisons and labels, and the
latency and KL histograms as multinomial bucket counts over the gateway's own bucket bounds. So
the analysis sees what it sees in production, histogram resolution included.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import cached_property
from statistics import NormalDist

import numpy as np

from controller.analysis import BackendWindow, WindowMetrics
from controller.labels import PairedLabels
from controller.simulation.scenarios import STALL_SHAPE, Scenario
from gateway.metrics import KL_BUCKETS, LATENCY_BUCKETS

_NORMAL = NormalDist()


def _lognormal_bucket_probabilities(median: float, sigma: float) -> np.ndarray:
    """P(latency in each bucket), the last one being (highest bound, +Inf)."""
    cdf = [_NORMAL.cdf(math.log(bound / median) / sigma) for bound in LATENCY_BUCKETS]
    return np.diff([0.0, *cdf, 1.0])


def _stalled_bucket_probabilities(median: float, sigma: float, stall_rate: float,
                                  stall: float) -> np.ndarray:  # fmt: skip
    """The lognormal, with a share ``stall_rate`` of calls replaced by a Pareto stall from
    ``stall`` seconds (the stall dominates the call it hits)."""
    calm = _lognormal_bucket_probabilities(median, sigma)
    if stall_rate <= 0:
        return calm
    cdf = [0.0 if bound < stall else 1.0 - (stall / bound) ** STALL_SHAPE
           for bound in LATENCY_BUCKETS]  # fmt: skip
    return (1.0 - stall_rate) * calm + stall_rate * np.diff([0.0, *cdf, 1.0])


EARLIER_STEPS_SECONDS = (0.95 + 0.75) * 900.0
"""At the last step, the teacher's live calls of the rollout's earlier steps: 15 minutes at 5 %
and at 25 % (the teacher serving 95 % and 75 %), in seconds of the whole fleet's traffic."""


def _exponential_bucket_probabilities(mean: float) -> np.ndarray:
    cdf = [1.0 - math.exp(-bound / mean) for bound in KL_BUCKETS]
    return np.diff([0.0, *cdf, 1.0])


@dataclass(frozen=True)
class BackendCounts:
    """One backend's per-interval increases (arrays of the run's length)."""

    requests: np.ndarray
    errors: np.ndarray
    latency: np.ndarray  # [intervals, buckets] samples per bucket (not cumulative)
    feedback_total: np.ndarray
    feedback_correct: np.ndarray
    cost_dollars: np.ndarray


@dataclass(frozen=True)
class RunTraffic:
    """Per-interval increases for one simulated step; index i covers (i, i+1] intervals."""

    interval_seconds: float
    teacher: BackendCounts
    student: BackendCounts
    comparisons: np.ndarray
    agreements: np.ndarray
    kl_sum: np.ndarray
    kl_buckets: np.ndarray  # [intervals, buckets]
    paired: np.ndarray  # [intervals, 4]: labelled examples both answered, by PairedLabels field
    earlier_teacher_latency: np.ndarray | None = None  # [buckets]: the earlier steps' (last step)
    earlier_teacher_labels: tuple[float, float] = (0.0, 0.0)  # their labels: total, correct
    dark_launch: bool = False  # share 0: the student answers shadow calls only

    def volume(self, end: int) -> float:
        """What ``min_requests`` counts in the first ``end`` intervals: student requests, or
        shadow comparisons at a dark launch."""
        step = self.window(0, end)
        return step.comparisons if self.dark_launch else step.student.requests

    @property
    def intervals(self) -> int:
        return len(self.comparisons)

    @cached_property
    def _running(self) -> dict[str, np.ndarray]:
        """Running totals with a leading zero row: any window is one subtraction."""
        columns = {"comparisons": self.comparisons, "agreements": self.agreements,
                   "kl_sum": self.kl_sum, "kl_buckets": self.kl_buckets,
                   "paired": self.paired}  # fmt: skip
        for role, counts in (("teacher", self.teacher), ("student", self.student)):
            for name in BackendCounts.__dataclass_fields__:
                columns[f"{role}.{name}"] = getattr(counts, name)
        return {name: np.concatenate([np.zeros((1, *values.shape[1:])), np.cumsum(values, 0)])
                for name, values in columns.items()}  # fmt: skip

    def window(self, start: int, end: int) -> WindowMetrics:
        """The increases over intervals [start, end), as the metrics source would report them."""
        running = self._running

        def total(name: str) -> np.ndarray:
            return running[name][end] - running[name][start]  # type: ignore[no-any-return]

        def backend(role: str) -> BackendWindow:
            return BackendWindow(
                requests=float(total(f"{role}.requests")),
                errors=float(total(f"{role}.errors")),
                latency=_cumulative(LATENCY_BUCKETS, total(f"{role}.latency")),
                feedback_total=float(total(f"{role}.feedback_total")),
                feedback_correct=float(total(f"{role}.feedback_correct")),
                cost_dollars=float(total(f"{role}.cost_dollars")),
            )

        kl_counts = total("kl_buckets")
        return WindowMetrics(
            teacher=backend("teacher"),
            student=backend("student"),
            paired=PairedLabels(*total("paired").tolist()),
            comparisons=float(total("comparisons")),
            agreements=float(total("agreements")),
            kl_sum=float(total("kl_sum")),
            kl_count=float(kl_counts.sum()),
            kl_buckets=_cumulative(KL_BUCKETS, kl_counts),
        )

    def rollout_window(self, end: int) -> WindowMetrics:
        """The rollout so far: this step, and at the last step the teacher's earlier latency and
        labels."""
        step = self.window(0, end)
        if self.earlier_teacher_latency is None:
            return step
        running = self._running["teacher.latency"]
        counts = running[end] - running[0] + self.earlier_teacher_latency
        total, correct = self.earlier_teacher_labels
        teacher = replace(step.teacher, latency=_cumulative(LATENCY_BUCKETS, counts),
                          feedback_total=step.teacher.feedback_total + total,
                          feedback_correct=step.teacher.feedback_correct + correct)  # fmt: skip
        return replace(step, teacher=teacher)


def _cumulative(bounds: tuple[float, ...], counts: np.ndarray) -> list[tuple[float, float]]:
    running = np.cumsum(counts).tolist()
    return list(zip((*bounds, math.inf), running, strict=True))


def draw(scenario: Scenario, intervals: int, interval_seconds: float,
         rng: np.random.Generator) -> RunTraffic:  # fmt: skip
    """One run's traffic for ``intervals`` analysis intervals at the scenario's share. At share 0
    (a dark launch) every request is the teacher's and the gateways mirror ``shadow_rate`` of
    them to the student: its only calls, timed, compared and (when labelled) paired."""
    s = scenario
    expected = np.full(intervals, s.requests_per_second * interval_seconds)
    expected[1 : 1 + s.gap_intervals] = 0.0
    total = rng.poisson(expected)
    student_live = rng.binomial(total, s.share)
    teacher_live = total - student_live
    student_errors = rng.binomial(student_live, s.error_rate)
    # A failed student request falls back to the teacher, which then serves it.
    teacher_served = teacher_live + student_errors
    student_served = student_live - student_errors

    # Shadow: a sample of requests also runs on the other backend, and the two are compared.
    shadow_on_student = rng.binomial(teacher_live, s.shadow_rate)
    shadow_on_teacher = rng.binomial(student_served, s.shadow_rate)
    comparisons = shadow_on_student + shadow_on_teacher
    agreements = rng.binomial(comparisons, s.agreement)
    kl_probabilities = _exponential_bucket_probabilities(s.mean_kl)
    kl_buckets = rng.multinomial(comparisons, kl_probabilities)
    kl_sum = np.where(comparisons > 0, rng.gamma(np.maximum(comparisons, 1), s.mean_kl), 0.0)

    def latency(backend: str, calls: np.ndarray) -> np.ndarray:
        stalls = s.teacher_stall_rate if backend == "teacher" else 0.0
        p = _stalled_bucket_probabilities(s.median_seconds(backend), s.latency_sigma, stalls,
                                          s.stall_ms / 1000.0)  # fmt: skip
        return rng.multinomial(calls, p)

    # The teacher's shadow calls at the last step are batched and timed apart (not in its
    # histogram); its reference is the earlier steps' live calls.
    teacher_timed = teacher_served if s.last_step else teacher_served + shadow_on_teacher
    earlier_calls = round(s.requests_per_second * EARLIER_STEPS_SECONDS) if s.last_step else 0
    earlier = latency("teacher", np.array(earlier_calls)) if s.last_step else None
    earlier_labelled = rng.binomial(earlier_calls, s.label_fraction)
    earlier_labels = (float(earlier_labelled),
                      float(rng.binomial(earlier_labelled, s.teacher_accuracy)))  # fmt: skip

    def labels(served: np.ndarray, accuracy: float) -> tuple[np.ndarray, np.ndarray]:
        labelled = rng.binomial(served, s.label_fraction)
        correct = rng.binomial(labelled, accuracy)
        delay = round(s.label_delay_seconds / interval_seconds)  # labels arrive this much later
        return _shift(labelled, delay), _shift(correct, delay)

    # A shadowed request that gets a label scores both backends: which of the two was right.
    paired_labelled = rng.binomial(comparisons, s.label_fraction)
    paired = _shift(rng.multinomial(paired_labelled, s.paired_probabilities()),
                         round(s.label_delay_seconds / interval_seconds))  # fmt: skip
    teacher_total, teacher_correct = labels(teacher_served, s.teacher_accuracy)
    student_total, student_correct = labels(student_served, s.student_accuracy)
    return RunTraffic(
        interval_seconds=interval_seconds,
        teacher=BackendCounts(
            requests=teacher_live, errors=np.zeros(intervals),
            latency=latency("teacher", teacher_timed),
            feedback_total=teacher_total, feedback_correct=teacher_correct,
            cost_dollars=teacher_served * s.student_cost_per_1k * 4 / 1000.0,
        ),
        student=BackendCounts(
            requests=student_live, errors=student_errors,
            latency=latency("student", student_live + shadow_on_student),
            feedback_total=student_total, feedback_correct=student_correct,
            cost_dollars=student_live * s.student_cost_per_1k / 1000.0,
        ),
        comparisons=comparisons, agreements=agreements, kl_sum=kl_sum, kl_buckets=kl_buckets,
        paired=paired, earlier_teacher_latency=earlier, earlier_teacher_labels=earlier_labels,
        dark_launch=s.share == 0,
    )  # fmt: skip


def _shift(values: np.ndarray, by: int) -> np.ndarray:
    """Each interval's values (rows, for a 2-D array) moved ``by`` intervals later: labels that
    arrive late."""
    if by <= 0:
        return values
    shifted = np.zeros_like(values)
    shifted[by:] = values[: len(values) - by]
    return shifted

"""Draws what the gateways of a fleet would have exported, interval by interval, for one run.

Every count is drawn from the scenario's truth the way requests produce it: a Poisson number of
requests, a binomial split by the share, binomial errors, shadow comparisons and labels, and the
latency and KL histograms as multinomial bucket counts over the gateway's own bucket bounds. So
the analysis sees what it sees in production, histogram resolution included.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from statistics import NormalDist

import numpy as np

from controller.analysis import BackendWindow, PairedLabels, WindowMetrics
from controller.simulation.scenarios import Scenario
from gateway.metrics import KL_BUCKETS, LATENCY_BUCKETS

_NORMAL = NormalDist()


def _lognormal_bucket_probabilities(median: float, sigma: float) -> np.ndarray:
    """P(latency in each bucket), the last one being (highest bound, +Inf)."""
    cdf = [_NORMAL.cdf(math.log(bound / median) / sigma) for bound in LATENCY_BUCKETS]
    return np.diff([0.0, *cdf, 1.0])


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


def _cumulative(bounds: tuple[float, ...], counts: np.ndarray) -> list[tuple[float, float]]:
    running = np.cumsum(counts).tolist()
    return list(zip((*bounds, math.inf), running, strict=True))


def draw(scenario: Scenario, intervals: int, interval_seconds: float,
         rng: np.random.Generator) -> RunTraffic:  # fmt: skip
    """One run's traffic for ``intervals`` analysis intervals at the scenario's share."""
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
        p = _lognormal_bucket_probabilities(s.median_seconds(backend), s.latency_sigma)
        return rng.multinomial(calls, p)

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
            latency=latency("teacher", teacher_served + shadow_on_teacher),
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
        paired=paired,
    )  # fmt: skip


def _shift(values: np.ndarray, by: int) -> np.ndarray:
    """Each interval's values (rows, for a 2-D array) moved ``by`` intervals later: labels that
    arrive late."""
    if by <= 0:
        return values
    shifted = np.zeros_like(values)
    shifted[by:] = values[: len(values) - by]
    return shifted

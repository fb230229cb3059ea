"""Analysis: turns the metrics of one step into a verdict per gate, with the numbers behind it.

Every gate returns pass only when the data show, at the policy's confidence, that it holds; fail
only when they show it is broken; inconclusive otherwise. No data is never a pass.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum

from controller import stats
from controller.policy import LIVE_ONLY_GATES, Policy
from controller.promtext import histogram_quantile


class Verdict(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"
    SKIPPED = "skipped"  # not applicable at this step (a dark launch has no live student traffic)


@dataclass(frozen=True)
class BackendWindow:
    """What one backend did in a window, summed over every gateway."""

    requests: float = 0.0  # live requests routed here (those that fell back included)
    errors: float = 0.0  # answers that were not 2xx, plus fallbacks to the other backend
    latency: stats.Buckets = field(default_factory=list)  # backend time, live and shadow calls
    feedback_total: float = 0.0
    feedback_correct: float = 0.0
    cost_dollars: float = 0.0
    cpu_seconds: float = 0.0  # measured in process (0 for a backend on Triton)
    feedback_by_class: dict[str, Labels] = field(default_factory=dict)  # true class -> labels


@dataclass(frozen=True)
class Labels:
    """Labelled examples, and how many of them the backend got right."""

    total: float = 0.0
    correct: float = 0.0


@dataclass(frozen=True)
class PairedLabels:
    """Labelled examples that both backends answered (one live, one on shadow traffic), by which
    was right: the order of ``gateway.metric_names.PAIRED_OUTCOMES``."""

    both_correct: float = 0.0
    teacher_only: float = 0.0
    student_only: float = 0.0
    both_wrong: float = 0.0

    @property
    def total(self) -> float:
        return self.both_correct + self.teacher_only + self.student_only + self.both_wrong


@dataclass(frozen=True)
class WindowMetrics:
    teacher: BackendWindow = field(default_factory=BackendWindow)
    student: BackendWindow = field(default_factory=BackendWindow)
    paired: PairedLabels = field(default_factory=PairedLabels)
    paired_by_class: dict[str, PairedLabels] = field(default_factory=dict)
    comparisons: float = 0.0
    agreements: float = 0.0
    kl_sum: float = 0.0
    kl_count: float = 0.0
    kl_buckets: stats.Buckets = field(default_factory=list)


@dataclass(frozen=True)
class GateResult:
    gate: str
    verdict: Verdict
    value: float  # the point estimate; NaN when there is none
    low: float  # the interval around it
    high: float
    threshold: float
    samples: float
    reason: str

    def as_dict(self) -> dict[str, object]:
        record = asdict(self)
        record["verdict"] = self.verdict.value
        return record


def observe(
    step: WindowMetrics, quantile: float, rollout: WindowMetrics | None = None
) -> dict[str, object]:
    """Point estimates of the step so far (and, under "rollout", of each backend over the whole
    rollout so far), for the rollout's history and its report."""

    def backend(window: BackendWindow) -> dict[str, float | None]:
        def ratio(numerator: float, denominator: float, scale: float = 1.0) -> float | None:
            return numerator / denominator * scale if denominator else None

        p50 = histogram_quantile(0.5, window.latency)
        tail = histogram_quantile(quantile, window.latency)
        return {
            "requests": window.requests,
            "p50_ms": None if math.isnan(p50) else p50 * 1000.0,
            "p99_ms": None if math.isnan(tail) else tail * 1000.0,
            "accuracy": ratio(window.feedback_correct, window.feedback_total),
            "cost_per_1k": ratio(window.cost_dollars, window.requests, 1000.0),
            "cpu_ms_per_request": ratio(window.cpu_seconds, window.requests, 1000.0) or None,
        }

    observed: dict[str, object] = {
        "teacher": backend(step.teacher),
        "student": backend(step.student),
        "agreement": step.agreements / step.comparisons if step.comparisons else None,
        "mean_kl": step.kl_sum / step.kl_count if step.kl_count else None,
    }
    if rollout is not None:
        observed["rollout"] = {"teacher": backend(rollout.teacher),
                               "student": backend(rollout.student)}  # fmt: skip
    return observed


def assess(
    step: WindowMetrics, rollout: WindowMetrics, policy: Policy, dark_launch: bool
) -> list[GateResult]:
    """Judges every configured gate on this step's window.

    The teacher's accuracy is the reference for ``max_accuracy_drop``; it is pooled over the whole
    rollout (``rollout``), since at 100 % the teacher serves no one in the step itself.
    """
    z = stats.z_value(policy.confidence)
    student_volume = step.comparisons if dark_launch else step.student.requests
    results = []
    for gate, threshold in policy.gates.configured().items():
        if dark_launch and gate in LIVE_ONLY_GATES:
            results.append(_result(gate, Verdict.SKIPPED, threshold, 0, "dark launch"))
        elif student_volume < policy.min_requests:
            reason = f"{student_volume:.0f} of {policy.min_requests} student requests"
            results.append(_result(gate, Verdict.INCONCLUSIVE, threshold, student_volume, reason))
        else:
            results.append(_GATES[gate](step, rollout, policy, threshold, z))
    return results


def _result(
    gate: str, verdict: Verdict, threshold: float, samples: float, reason: str
) -> GateResult:
    return GateResult(gate, verdict, math.nan, math.nan, math.nan, threshold, samples, reason)


def _at_most(gate: str, value: float, low: float, high: float, threshold: float,
             samples: float) -> GateResult:  # fmt: skip
    """For gates whose value must stay at or below the threshold."""
    if high <= threshold:
        verdict, reason = Verdict.PASS, "interval below threshold"
    elif low > threshold:
        verdict, reason = Verdict.FAIL, "interval above threshold"
    else:
        verdict, reason = Verdict.INCONCLUSIVE, "interval straddles threshold"
    return GateResult(gate, verdict, value, low, high, threshold, samples, reason)


def _at_least(gate: str, value: float, low: float, high: float, threshold: float,
              samples: float) -> GateResult:  # fmt: skip
    if low >= threshold:
        verdict, reason = Verdict.PASS, "interval above threshold"
    elif high < threshold:
        verdict, reason = Verdict.FAIL, "interval below threshold"
    else:
        verdict, reason = Verdict.INCONCLUSIVE, "interval straddles threshold"
    return GateResult(gate, verdict, value, low, high, threshold, samples, reason)


def _error_rate(step: WindowMetrics, _: WindowMetrics, __: Policy, threshold: float,
                z: float) -> GateResult:  # fmt: skip
    n, errors = step.student.requests, step.student.errors
    low, high = stats.wilson(errors, n, z)
    return _at_most("max_error_rate", errors / n, low, high, threshold, n)


def _agreement(step: WindowMetrics, _: WindowMetrics, __: Policy, threshold: float,
               z: float) -> GateResult:  # fmt: skip
    n = step.comparisons
    if n <= 0:
        return _result("min_agreement", Verdict.INCONCLUSIVE, threshold, 0, "no shadow data")
    low, high = stats.wilson(step.agreements, n, z)
    return _at_least("min_agreement", step.agreements / n, low, high, threshold, n)


@dataclass(frozen=True)
class _Drop:
    """Teacher minus student accuracy on one set of labels, with its interval."""

    value: float
    low: float
    high: float
    samples: float
    paired: bool


def _drop(student: Labels, teacher: Labels, pairs: PairedLabels, z: float) -> _Drop | None:
    """Paired when shadow traffic gave at least as many labelled examples that both backends
    answered as the student's own live labels: the difference on the same requests (Newcombe's
    paired interval, the interval behind McNemar's test) is far tighter than two independent
    proportions, and at a 5 % step there are up to 20 times more of them. None without data."""
    if pairs.total > 0 and pairs.total >= student.total:
        low, high = stats.newcombe_paired_difference(
            pairs.both_correct, pairs.teacher_only, pairs.student_only, pairs.both_wrong, z
        )
        value = (pairs.teacher_only - pairs.student_only) / pairs.total
        return _Drop(value, low, high, pairs.total, paired=True)
    if student.total <= 0 or teacher.total <= 0:
        return None
    low, high = stats.newcombe_difference(teacher.correct, teacher.total, student.correct,
                                          student.total, z)  # fmt: skip
    value = teacher.correct / teacher.total - student.correct / student.total
    return _Drop(value, low, high, student.total, paired=False)


def _accuracy_drop(step: WindowMetrics, rollout: WindowMetrics, _: Policy, threshold: float,
                   z: float) -> GateResult:  # fmt: skip
    """The student's own labels are this step's; the teacher's are pooled over the rollout (at
    100 % the teacher serves no one in the step itself)."""
    gate = "max_accuracy_drop"
    student = Labels(step.student.feedback_total, step.student.feedback_correct)
    teacher = Labels(rollout.teacher.feedback_total, rollout.teacher.feedback_correct)
    drop = _drop(student, teacher, step.paired, z)
    if drop is None:
        return _result(gate, Verdict.INCONCLUSIVE, threshold, student.total, "no feedback yet")
    result = _at_most(gate, drop.value, drop.low, drop.high, threshold, drop.samples)
    return replace(result, reason=f"{result.reason} (paired)") if drop.paired else result


def _class_accuracy_drop(step: WindowMetrics, rollout: WindowMetrics, policy: Policy,
                         threshold: float, z: float) -> GateResult:  # fmt: skip
    """The accuracy drop of every true class, each judged like ``max_accuracy_drop`` at a
    Bonferroni-corrected confidence (1 - (1 - confidence) / classes): with ten classes, the
    chance that any one of them fails by chance stays at the policy's, not ten times it. It
    fails when some class's interval is above the threshold, passes when every class's is below,
    and names the class that decided."""
    gate = "max_class_accuracy_drop"
    classes = sorted(set(step.student.feedback_by_class) | set(rollout.teacher.feedback_by_class)
                     | set(step.paired_by_class), key=_class_order)  # fmt: skip
    if not classes:
        return _result(gate, Verdict.INCONCLUSIVE, threshold, 0, "no feedback yet")
    corrected = stats.z_value(1.0 - (1.0 - policy.confidence) / len(classes))
    drops: dict[str, _Drop | None] = {
        c: _drop(step.student.feedback_by_class.get(c, Labels()),
                 rollout.teacher.feedback_by_class.get(c, Labels()),
                 step.paired_by_class.get(c, PairedLabels()), corrected)
        for c in classes
    }  # fmt: skip
    judged = {c: d for c, d in drops.items() if d is not None}
    bonferroni = f"Bonferroni over {len(classes)} classes"
    failing = [c for c, d in judged.items() if d.low > threshold]
    if failing:
        worst = max(failing, key=lambda c: judged[c].low)
        reason = f"class {worst}: interval above threshold ({bonferroni})"
        return _class_result(gate, Verdict.FAIL, judged[worst], threshold, reason)
    unjudged = [c for c, d in drops.items() if d is None]
    if unjudged:
        return _result(gate, Verdict.INCONCLUSIVE, threshold, 0,
                       f"no feedback yet for class {', '.join(unjudged)}")  # fmt: skip
    worst = max(judged, key=lambda c: judged[c].high)
    if judged[worst].high <= threshold:
        reason = f"every class's interval below threshold; highest class {worst} ({bonferroni})"
        return _class_result(gate, Verdict.PASS, judged[worst], threshold, reason)
    reason = f"class {worst}: interval straddles threshold ({bonferroni})"
    return _class_result(gate, Verdict.INCONCLUSIVE, judged[worst], threshold, reason)


def _class_result(gate: str, verdict: Verdict, drop: _Drop, threshold: float,
                  reason: str) -> GateResult:  # fmt: skip
    return GateResult(gate, verdict, drop.value, drop.low, drop.high, threshold, drop.samples,
                      reason)  # fmt: skip


def _class_order(label: str) -> tuple[int, str]:
    return (int(label), label) if label.isdigit() else (1 << 30, label)


def _kl(step: WindowMetrics, _: WindowMetrics, __: Policy, threshold: float,
        z: float) -> GateResult:  # fmt: skip
    if step.kl_count <= 0:
        return _result("max_kl", Verdict.INCONCLUSIVE, threshold, 0, "no shadow data")
    mean, (low, high) = stats.mean_interval(step.kl_sum, step.kl_count, step.kl_buckets, z)
    return _at_most("max_kl", mean, low, high, threshold, step.kl_count)


def _latency(step: WindowMetrics, _: WindowMetrics, policy: Policy, threshold: float,
         z: float) -> GateResult:  # fmt: skip
    latency = step.student.latency
    low, high = stats.quantile_interval(latency, policy.latency_quantile, z)
    value = histogram_quantile(policy.latency_quantile, latency) * 1000.0
    return _at_most("max_latency_ms", value, low * 1000.0, high * 1000.0, threshold,
                    stats.sample_count(latency))  # fmt: skip


def _latency_ratio(step: WindowMetrics, rollout: WindowMetrics, policy: Policy, threshold: float,
               z: float) -> GateResult:  # fmt: skip
    """The student's latency quantile over the teacher's. The teacher's comes from this step
    while it serves enough live requests; at 100 % (and in a dark launch) it serves none, its
    shadow calls are batched and timed apart, so the reference is the teacher's live latency
    pooled over the rollout's earlier steps, never missing at the last step."""
    q = policy.latency_quantile
    student, teacher = step.student.latency, step.teacher.latency
    reference = ""
    if stats.sample_count(teacher) < policy.min_requests:
        teacher, reference = rollout.teacher.latency, " (teacher: the rollout's earlier steps)"
    s_low, s_high = stats.quantile_interval(student, q, z, interpolate=True)
    t_low, t_high = stats.quantile_interval(teacher, q, z, interpolate=True)
    samples = min(stats.sample_count(student), stats.sample_count(teacher))
    teacher_value = histogram_quantile(q, teacher)
    if not teacher_value or math.isnan(teacher_value):
        return _result("max_latency_ratio", Verdict.INCONCLUSIVE, threshold, samples,
                       "no teacher latency")  # fmt: skip
    value = histogram_quantile(q, student) / teacher_value
    low = s_low / t_high if t_high > 0 and not math.isinf(t_high) else 0.0
    high = s_high / t_low if t_low > 0 else math.inf
    result = _at_most("max_latency_ratio", value, low, high, threshold, samples)
    return replace(result, reason=result.reason + reference) if reference else result


def _cost(step: WindowMetrics, _: WindowMetrics, __: Policy, threshold: float,
          ___: float) -> GateResult:  # fmt: skip
    # Cost is measured, not sampled: the value itself is compared once there is enough traffic.
    n = step.student.requests
    value = step.student.cost_dollars / n * 1000.0
    verdict = Verdict.PASS if value <= threshold else Verdict.FAIL
    return GateResult("max_cost_per_1k", verdict, value, value, value, threshold, n, "measured")


_GATES = {
    "max_latency_ms": _latency,
    "max_latency_ratio": _latency_ratio,
    "max_error_rate": _error_rate,
    "min_agreement": _agreement,
    "max_accuracy_drop": _accuracy_drop,
    "max_class_accuracy_drop": _class_accuracy_drop,
    "max_kl": _kl,
    "max_cost_per_1k": _cost,
}

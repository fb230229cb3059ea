"""Analysis: turns the metrics of one step into a verdict per gate, with the numbers behind it.

Every gate returns pass only when the data show, at the policy's confidence, that it holds; fail
only when they show it is broken; inconclusive otherwise. No data is never a pass.

The intervals are confidence sequences (``controller.sequences``): they hold at every look of
the step, not just at one, so acting on the first look that clears a threshold keeps the error
the policy names. ``Levels`` says how the step's error is split between the gates.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum

from controller import sequences, stats
from controller.cascade_window import CascadeWindow
from controller.labels import Labels, PairedLabels
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
class Mean:
    """Per-example values from a histogram: their sum, count and cumulative buckets."""

    total: float = 0.0
    count: float = 0.0
    buckets: stats.Buckets = field(default_factory=list)


@dataclass(frozen=True)
class TaskWindow:
    """What the model's task measured (``gateway.tasks``): on shadow traffic (student against
    teacher), and against labels by backend. Empty for a classifier."""

    abs_error: Mean = field(default_factory=Mean)  # regression: mean |student - teacher|
    relative_error: Mean = field(default_factory=Mean)  # regression: over |teacher|
    cosine_distance: Mean = field(default_factory=Mean)  # embedding: 1 - cosine
    hamming_loss: Mean = field(default_factory=Mean)  # multilabel: share of labels disagreeing
    label_abs_error: dict[str, Mean] = field(default_factory=dict)  # regression, by backend
    label_relative_error: dict[str, Mean] = field(default_factory=dict)
    label_hamming_loss: dict[str, Mean] = field(default_factory=dict)  # multilabel, by backend


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
    task: TaskWindow = field(default_factory=TaskWindow)
    cascade: CascadeWindow = field(default_factory=CascadeWindow)  # traffic.mode cascade's lanes


# A cascade's labels by backend score only its sure student answers (an escalated request's label
# scores the teacher), so a per-class drop does not judge one; the accuracy drop and latency gates
# judge the cascade's own answers (controller.cascade_gates).
CASCADE_REFUSED_GATES = frozenset({"max_class_accuracy_drop"})
CASCADE_REFUSAL = ("refused in cascade mode: per-backend labels score only the student's sure "
                   "answers; gate the cascade on min_agreement (its answers against the "
                   "teacher's)")  # fmt: skip


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
    dry_run: bool = False  # measured and shown, never decides (the policy's ``dry_run``)

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
        "mean_kl": _mean_of(Mean(step.kl_sum, step.kl_count, step.kl_buckets)),
    }
    task = step.task
    for key, mean, flip in (("mean_abs_error", task.abs_error, False),
                            ("mean_relative_error", task.relative_error, False),
                            ("mean_cosine", task.cosine_distance, True),
                            ("hamming_agreement", task.hamming_loss, True)):  # fmt: skip
        value = _mean_of(mean)
        if value is not None:  # only what the task measures
            observed[key] = 1.0 - value if flip else value
    if rollout is not None:
        observed["rollout"] = {"teacher": backend(rollout.teacher),
                               "student": backend(rollout.student)}  # fmt: skip
    return observed


def _mean_of(mean: Mean) -> float | None:
    """The mean the gates judge (a broken sum is not used: ``stats.mean_interval``); None
    without data."""
    return stats.mean_interval(mean.total, mean.count, mean.buckets, 0.0)[0] if mean.count else None


RARE_FLOOR = 1e-6  # the rate sequence's prior mean when a threshold is 0 (a gate that never passes)
MEASURED_GATES = frozenset({"max_cost_per_1k"})
"""Gates compared by value, not by an interval: they spend none of the step's error."""
LABEL_GATES = frozenset({"max_accuracy_drop", "max_class_accuracy_drop",
                         "max_hamming_accuracy_drop"})  # fmt: skip
LABEL_SHARE = 0.5
"""The share of a step's fail side that the gates judged on labels split (``Levels``)."""


@dataclass(frozen=True)
class Levels:
    """The error each gate's confidence sequence may spend in a step (alpha = 1 - confidence).

    A wrong promotion needs the gate the student truly breaks to pass wrongly; every gate must
    pass to advance, so each gate's pass side at alpha keeps the step's chance of a wrong
    promotion at alpha, however many gates there are. A wrong rollback needs any one gate to fail
    wrongly: the fail side is split over the deciding gates (weighted Bonferroni: any split
    fixed before the data keeps the step's chance of a wrong rollback at most alpha; Holm would
    not help, the rollback needs only the first failure, which Holm judges as Bonferroni does).
    The gates judged on labels (``LABEL_GATES``) share half of it, the others the other half:
    labels are the scarcest data (a fraction of requests, often late), so those gates are the
    ones still waiting for evidence when every other gate could already fail; evenly, a student
    3 points worse with a tenth of its requests labelled was rolled back a look later. A gate
    built from several sequences (the latency ratio, the per-class drop) splits its share again
    between them.
    """

    pass_alpha: float
    fail_alpha: float
    n_star: float  # where the sequences are tightest: the policy's min_requests

    @classmethod
    def of(cls, policy: Policy, gate: str, dark_launch: bool = False) -> Levels:
        """``gate``'s levels. At a dark launch the live-only gates are skipped: they cannot fail
        there, so the fail side is split over the gates that can. A dry-run gate is judged at
        the share it would have among gates of its kind."""
        alpha = 1.0 - policy.confidence
        deciding = [g for g in policy.gates.configured()
                    if g not in policy.dry_run and g not in MEASURED_GATES
                    and not (dark_launch and g in LIVE_ONLY_GATES)]  # fmt: skip
        counted = deciding if gate in deciding else [*deciding, gate]
        labelled = [g for g in counted if g in LABEL_GATES]
        if not labelled or len(labelled) == len(counted):
            share = 1.0 / len(counted)
        else:
            kind = labelled if gate in LABEL_GATES else [g for g in counted if g not in labelled]
            share = LABEL_SHARE / len(kind)
        return cls(alpha, alpha * share, float(policy.min_requests))

    def z(self, samples: float, alpha: float) -> float:
        """One end's z: every bound a gate reads is its own one-sided sequence at its alpha."""
        return sequences.one_sided_z(samples, alpha, self.n_star)

    def bounds(self, interval: Callable[[float], stats.Interval], at_most: bool,
               fail_parts: int = 1, pass_parts: int = 1) -> stats.Interval:  # fmt: skip
        """(low, high) from ``interval(alpha)``: the end that can pass the gate at the pass level,
        the end that can fail it at the fail level, each shared by that many sequences."""
        pass_low, pass_high = interval(self.pass_alpha / pass_parts)
        fail_low, fail_high = interval(self.fail_alpha / fail_parts)
        return (fail_low, pass_high) if at_most else (pass_low, fail_high)


def assess(
    step: WindowMetrics, rollout: WindowMetrics, policy: Policy, dark_launch: bool
) -> list[GateResult]:
    """Judges every configured gate on this step's window; gates in the policy's ``dry_run`` are
    judged alike and marked, and ``decisions.judge`` leaves them out.

    The teacher's accuracy is the reference for ``max_accuracy_drop``; it is pooled over the whole
    rollout (``rollout``), since at 100 % the teacher serves no one in the step itself.
    """
    student_volume = step.comparisons if dark_launch else step.student.requests
    results = []
    for gate, threshold in policy.gates.configured().items():
        z = Levels.of(policy, gate, dark_launch)
        if dark_launch and gate in LIVE_ONLY_GATES:
            results.append(_result(gate, Verdict.SKIPPED, threshold, 0, "dark launch"))
        elif step.cascade.requests > 0 and gate in CASCADE_REFUSED_GATES:  # never passes
            results.append(_result(gate, Verdict.INCONCLUSIVE, threshold, 0, CASCADE_REFUSAL))
        elif student_volume < policy.min_requests:
            reason = f"{student_volume:.0f} of {policy.min_requests} student requests"
            results.append(_result(gate, Verdict.INCONCLUSIVE, threshold, student_volume, reason))
        elif step.cascade.requests > 0 and gate in cascade_gates.GATES:
            results.append(cascade_gates.judge(gate, step, rollout, policy, threshold, z))
        else:
            results.append(_GATES[gate](step, rollout, policy, threshold, z))
    dry = set(policy.dry_run)
    return [replace(r, dry_run=True) if r.gate in dry else r for r in results]


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
                z: Levels) -> GateResult:  # fmt: skip
    n, errors = step.student.requests, step.student.errors
    low = sequences.proportion(errors, n, z.fail_alpha, z.n_star, one_sided=True)[0]
    # Errors are rare: the pass side is the exact rate sequence, its prior at half the threshold.
    high = sequences.rate_upper(errors, n, z.pass_alpha, max(threshold / 2.0, RARE_FLOOR))
    return _at_most("max_error_rate", errors / n, low, high, threshold, n)


def _agreement(step: WindowMetrics, _: WindowMetrics, __: Policy, threshold: float,
               z: Levels) -> GateResult:  # fmt: skip
    n = step.comparisons
    if n <= 0:
        return _result("min_agreement", Verdict.INCONCLUSIVE, threshold, 0, "no shadow data")
    low, high = z.bounds(lambda a: sequences.proportion(step.agreements, n, a, z.n_star, True),
                         False)  # fmt: skip
    return _at_least("min_agreement", step.agreements / n, low, high, threshold, n)


@dataclass(frozen=True)
class _Drop:
    """Teacher minus student accuracy on one set of labels, with its interval."""

    value: float
    low: float
    high: float
    samples: float
    paired: bool


def _drop(student: Labels, teacher: Labels, pairs: PairedLabels, z: Levels,
          classes: int = 1) -> _Drop | None:  # fmt: skip
    """Paired when shadow traffic gave at least as many labelled examples that both backends
    answered as the student's own live labels: the difference on the same requests is far
    tighter than two independent proportions, and at a 5 % step there are up to 20 times more
    of them. Its pass end is Tango's score interval (the interval behind McNemar's test) at the
    mixture's z; its fail end the betting sequence (``sequences.paired_difference_lower``),
    which a student worse where its teacher is right, and almost never right where it is
    wrong, clears with far fewer pairs. None without data."""
    if pairs.total > 0 and pairs.total >= student.total:
        high = stats.tango_paired_difference(
            pairs.teacher_only, pairs.student_only, pairs.total,
            z.z(pairs.total, z.pass_alpha), sequences.CONTINUITY)[1]  # fmt: skip
        low = sequences.paired_difference_lower(pairs.teacher_only, pairs.student_only,
                                                pairs.total, z.fail_alpha / classes)  # fmt: skip
        value = (pairs.teacher_only - pairs.student_only) / pairs.total
        return _Drop(value, low, high, pairs.total, paired=True)
    if student.total <= 0 or teacher.total <= 0:
        return None
    value, interval = _unpaired_drop(student, teacher, z)
    low, high = z.bounds(interval, True, classes)
    return _Drop(value, low, high, student.total, paired=False)


def _unpaired_drop(student: Labels, teacher: Labels,
                   z: Levels) -> tuple[float, Callable[[float], stats.Interval]]:  # fmt: skip
    """Teacher minus student accuracy on labels of different requests (both totals above 0),
    and its interval at a given alpha: Newcombe's, at the wider of the two sequences' z."""
    fewer = min(teacher.total, student.total)

    def interval(alpha: float) -> stats.Interval:
        return stats.newcombe_difference(teacher.correct, teacher.total, student.correct,
                                         student.total, z.z(fewer, alpha),
                                         sequences.CONTINUITY)  # fmt: skip

    return teacher.correct / teacher.total - student.correct / student.total, interval


def _accuracy_drop(step: WindowMetrics, rollout: WindowMetrics, _: Policy, threshold: float,
                   z: Levels) -> GateResult:  # fmt: skip
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
                         threshold: float, z: Levels) -> GateResult:  # fmt: skip
    """The accuracy drop of every true class, each judged like ``max_accuracy_drop``, its fail
    side's error split over the classes (Bonferroni): with ten classes, the chance that any one
    of them fails by chance stays at the gate's, not ten times it (a wrong pass needs the one bad
    class to pass, so the pass side needs no split). It
    fails when some class's interval is above the threshold, passes when every class's is below,
    and names the class that decided."""
    gate = "max_class_accuracy_drop"
    classes = sorted(set(step.student.feedback_by_class) | set(rollout.teacher.feedback_by_class)
                     | set(step.paired_by_class), key=_class_order)  # fmt: skip
    if not classes:
        return _result(gate, Verdict.INCONCLUSIVE, threshold, 0, "no feedback yet")
    drops: dict[str, _Drop | None] = {
        c: _drop(step.student.feedback_by_class.get(c, Labels()),
                 rollout.teacher.feedback_by_class.get(c, Labels()),
                 step.paired_by_class.get(c, PairedLabels()), z, len(classes))
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
        z: Levels) -> GateResult:  # fmt: skip
    if step.kl_count <= 0:
        return _result("max_kl", Verdict.INCONCLUSIVE, threshold, 0, "no shadow data")
    value, low, high = _mean_bounds(Mean(step.kl_sum, step.kl_count, step.kl_buckets), z)
    return _at_most("max_kl", value, low, high, threshold, step.kl_count)


def _latency(step: WindowMetrics, _: WindowMetrics, policy: Policy, threshold: float,
         z: Levels) -> GateResult:  # fmt: skip
    latency = step.student.latency
    low, high = _quantile_bounds(latency, policy.latency_quantile, z, upper_passes=True,
                                 interpolate=False)  # fmt: skip
    value = histogram_quantile(policy.latency_quantile, latency) * 1000.0
    return _at_most("max_latency_ms", value, low * 1000.0, high * 1000.0, threshold,
                    stats.sample_count(latency))  # fmt: skip


MEDIAN = 0.5


def _latency_ratio(step: WindowMetrics, rollout: WindowMetrics, policy: Policy, threshold: float,
                   z: Levels) -> GateResult:  # fmt: skip
    """The student's latency over the teacher's, at the median and at ``latency_quantile``: it
    fails when either ratio is above the threshold, passes when both are below.

    The median is what decides a slower student: it is the body of the distribution, where a
    student's extra model time shows whole, while a busy gateway's stalls (event-loop pauses,
    scheduling) land in the tail of both backends and put the teacher's p99 near the student's
    (a student 40x slower passed a p99-only gate on a busy machine). The tail ratio still catches
    a student whose tail alone is slower. Each ratio's interval divides the two backends'
    order-statistic sequences, so the gate splits its error four ways.

    The teacher's latency comes from this step while it serves enough live requests; at 100 %
    (and in a dark launch) it serves none, its shadow calls are batched and timed apart, so the
    reference is the teacher's live latency pooled over the rollout's earlier steps, never
    missing at the last step."""
    gate, q = "max_latency_ratio", policy.latency_quantile
    student, teacher = step.student.latency, step.teacher.latency
    reference = ""
    if stats.sample_count(teacher) < policy.min_requests:
        teacher, reference = rollout.teacher.latency, " (teacher: the rollout's earlier steps)"
    samples = min(stats.sample_count(student), stats.sample_count(teacher))
    if not histogram_quantile(MEDIAN, teacher) or math.isnan(histogram_quantile(q, teacher)):
        return _result(gate, Verdict.INCONCLUSIVE, threshold, samples, "no teacher latency")
    ratios = {quantile: _quantile_ratio(student, teacher, quantile, z)
              for quantile in (MEDIAN, q)}  # fmt: skip
    failing = [k for k, (_, low, _) in ratios.items() if low > threshold]
    if failing:
        decides = max(failing, key=lambda k: ratios[k][1])
    else:
        decides = max(ratios, key=lambda k: ratios[k][2])
    value, low, high = ratios[decides]
    result = _at_most(gate, value, low, high, threshold, samples)
    return replace(result, reason=f"{result.reason} at p{decides * 100:g}{reference}")


def _quantile_ratio(student: stats.Buckets, teacher: stats.Buckets, quantile: float,
                    z: Levels) -> tuple[float, float, float]:  # fmt: skip
    """Student over teacher latency at one quantile: (estimate, low, high)."""

    # The ratio's low end is the student's low over the teacher's high, and the other way round.
    # A wrong pass needs the one truly slower ratio's two sequences to miss; a wrong fail, any of
    # the four.
    s_low, s_high = _quantile_bounds(student, quantile, z, upper_passes=True, interpolate=True,
                                     fail_parts=4, pass_parts=2)  # fmt: skip
    t_low, t_high = _quantile_bounds(teacher, quantile, z, upper_passes=False, interpolate=True,
                                     fail_parts=4, pass_parts=2)  # fmt: skip
    value = histogram_quantile(quantile, student) / histogram_quantile(quantile, teacher)
    low = s_low / t_high if t_high > 0 and not math.isinf(t_high) else 0.0
    high = s_high / t_low if t_low > 0 else math.inf
    return value, low, high


TAIL = 0.9
"""From this quantile up, a quantile's upper bound is the exact exceedance sequence
(``sequences.quantile_upper``): the samples above a p99 are a rare-event count."""


def _quantile_bounds(buckets: stats.Buckets, quantile: float, z: Levels, upper_passes: bool,
                     interpolate: bool, fail_parts: int = 1,
                     pass_parts: int = 1) -> stats.Interval:  # fmt: skip
    """A quantile's (low, high): the end that can pass at the pass level, the other at the fail
    level. Lower bounds (and upper ones below ``TAIL``) are the order-statistic ranks at
    ``mixture_z``; upper bounds of a tail quantile are exact (``sequences.quantile_upper``)."""
    n = stats.sample_count(buckets)
    pass_alpha, fail_alpha = z.pass_alpha / pass_parts, z.fail_alpha / fail_parts
    high_alpha, low_alpha = (pass_alpha, fail_alpha) if upper_passes else (fail_alpha, pass_alpha)
    low, high = stats.quantile_interval(buckets, quantile, z.z(n, low_alpha), interpolate)
    if quantile >= TAIL:
        high = sequences.quantile_upper(buckets, quantile, high_alpha, interpolate)
    elif high_alpha != low_alpha:
        high = stats.quantile_interval(buckets, quantile, z.z(n, high_alpha), interpolate)[1]
    return (low, high)


def _cost(step: WindowMetrics, _: WindowMetrics, __: Policy, threshold: float,
          ___: Levels) -> GateResult:  # fmt: skip
    # Cost is measured, not sampled: the value itself is compared once there is enough traffic.
    n = step.student.requests
    value = step.student.cost_dollars / n * 1000.0
    verdict = Verdict.PASS if value <= threshold else Verdict.FAIL
    return GateResult("max_cost_per_1k", verdict, value, value, value, threshold, n, "measured")


def _mean_bounds(mean: Mean, z: Levels, fail_parts: int = 1,
                 pass_parts: int = 1) -> tuple[float, float, float]:  # fmt: skip
    """A histogram's mean (value, low, high) for a gate on its upper end (an error, a loss).
    Every gate on a histogram's mean reads it here: a window whose sum disagrees with its
    buckets (a broken ``_sum``) is judged from the buckets alone (``stats.mean_interval``)."""
    low, high = z.bounds(lambda alpha: stats.mean_interval(
        mean.total, mean.count, mean.buckets, z.z(mean.count, alpha))[1], True, fail_parts,
        pass_parts)  # fmt: skip
    return stats.mean_interval(mean.total, mean.count, mean.buckets, 0.0)[0], low, high


def _error_gate(gate: str, shadow: Mean, student: Mean, teacher: Mean, threshold: float,
                z: Levels) -> GateResult:  # fmt: skip
    """A regression's error gate, on what there is of two measures: the student's mean error
    against the teacher (shadow traffic), and its mean error against labels less the teacher's
    (the teacher's pooled over the rollout). It fails when either's interval is above the
    threshold, passes when every one measured is below. A wrong pass needs the measure that is
    truly over to pass, so each keeps the pass level; a wrong fail, any of them: the fail side
    is split between them (and the label difference splits its share between its two
    sequences, its pass side too)."""
    measures: dict[str, tuple[float, float, float, float]] = {}
    parts = int(shadow.count > 0) + int(student.count > 0 and teacher.count > 0)
    if shadow.count > 0:
        measures["against the teacher"] = (*_mean_bounds(shadow, z, parts), shadow.count)
    if student.count > 0 and teacher.count > 0:
        s_value, s_low, s_high = _mean_bounds(student, z, 2 * parts, 2)
        t_low, t_high = z.bounds(lambda alpha: stats.mean_interval(
            teacher.total, teacher.count, teacher.buckets, z.z(teacher.count, alpha))[1], False,
            2 * parts, 2)  # fmt: skip
        t_value = stats.mean_interval(teacher.total, teacher.count, teacher.buckets, 0.0)[0]
        value = s_value - t_value
        measures["against labels, over the teacher's"] = (value, s_low - t_high, s_high - t_low,
                                                          student.count)  # fmt: skip
    if not measures:
        return _result(gate, Verdict.INCONCLUSIVE, threshold, 0, "no shadow data or labels")
    failing = [k for k, m in measures.items() if m[1] > threshold]
    decides = (max(failing, key=lambda k: measures[k][1]) if failing
               else max(measures, key=lambda k: measures[k][2]))  # fmt: skip
    value, low, high, samples = measures[decides]
    result = _at_most(gate, value, low, high, threshold, samples)
    return replace(result, reason=f"{result.reason} ({decides})")


def _mean_abs_error(step: WindowMetrics, rollout: WindowMetrics, _: Policy, threshold: float,
                    z: Levels) -> GateResult:  # fmt: skip
    task = step.task
    return _error_gate("max_mean_abs_error", task.abs_error,
                       task.label_abs_error.get("student", Mean()),
                       rollout.task.label_abs_error.get("teacher", Mean()), threshold,
                       z)  # fmt: skip


def _relative_error(step: WindowMetrics, rollout: WindowMetrics, _: Policy, threshold: float,
                    z: Levels) -> GateResult:  # fmt: skip
    task = step.task
    return _error_gate("max_relative_error", task.relative_error,
                       task.label_relative_error.get("student", Mean()),
                       rollout.task.label_relative_error.get("teacher", Mean()), threshold,
                       z)  # fmt: skip


def _hamming_accuracy_drop(step: WindowMetrics, rollout: WindowMetrics, _: Policy,
                           threshold: float, z: Levels) -> GateResult:  # fmt: skip
    """Multilabel: the teacher's Hamming accuracy on labels less the student's, each a mean over
    labelled examples (the student's this step, the teacher's pooled over the rollout), which is
    the student's mean Hamming loss less the teacher's."""
    return _error_gate("max_hamming_accuracy_drop", Mean(),
                       step.task.label_hamming_loss.get("student", Mean()),
                       rollout.task.label_hamming_loss.get("teacher", Mean()), threshold,
                       z)  # fmt: skip


def _one_minus(gate: str, loss: Mean, threshold: float, z: Levels) -> GateResult:
    """A gate on the least mean of ``1 - loss`` (a cosine from its distance, a Hamming
    agreement from its loss), from the loss's interval."""
    if loss.count <= 0:
        return _result(gate, Verdict.INCONCLUSIVE, threshold, 0, "no shadow data")
    value, low, high = _mean_bounds(loss, z)
    return _at_least(gate, 1.0 - value, 1.0 - high, 1.0 - low, threshold, loss.count)


def _cosine(step: WindowMetrics, _: WindowMetrics, __: Policy, threshold: float,
            z: Levels) -> GateResult:  # fmt: skip
    return _one_minus("min_cosine", step.task.cosine_distance, threshold, z)


def _hamming_agreement(step: WindowMetrics, _: WindowMetrics, __: Policy, threshold: float,
                       z: Levels) -> GateResult:  # fmt: skip
    return _one_minus("min_hamming_agreement", step.task.hamming_loss, threshold, z)


_GATES = {
    "max_latency_ms": _latency,
    "max_latency_ratio": _latency_ratio,
    "max_error_rate": _error_rate,
    "min_agreement": _agreement,
    "max_accuracy_drop": _accuracy_drop,
    "max_class_accuracy_drop": _class_accuracy_drop,
    "max_kl": _kl,
    "max_cost_per_1k": _cost,
    "max_mean_abs_error": _mean_abs_error,
    "max_relative_error": _relative_error,
    "min_cosine": _cosine,
    "min_hamming_agreement": _hamming_agreement,
    "max_hamming_accuracy_drop": _hamming_accuracy_drop,
}

from controller import cascade_gates  # noqa: E402  (it builds on this module's gates)

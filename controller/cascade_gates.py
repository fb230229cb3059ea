"""The gates that judge a cascade (``traffic.mode: cascade``) by what its clients get.

In cascade mode the student's lane is the cascade: its answers are the student's when it is sure
and the teacher's when it escalates. Per-backend labels score only the sure answers (an
escalated request's label is the teacher's), and the backends' call latency leaves out that an
escalated request pays both calls. So in cascade mode three gates read the cascade's own series
(``controller.cascade_window``) instead:

- ``max_accuracy_drop``: the teacher's accuracy less the cascade's returned answers'. Two
  intervals, each at half the gate's error, and their intersection is judged (the drop is in
  both at once with the gate's confidence, by a union bound):
  *paired*: an escalated answer is the teacher's, so only the rows the student answered can
  differ: drop = f x d, f the share of labelled cascade rows the student answered and d the
  paired drop (Tango's interval) on those of them whose teacher answer is known (shadowed);
  the product's ends come from f's and d's one-sided sequences, each at half again.
  *unpaired*: the cascade's accuracy on its labels (this step) against the teacher's on the
  labels of requests outside the cascade (pooled over the rollout, as the split gate's reference
  is; the escalated requests' labels, the hard ones, are taken out of it), Newcombe's interval.
- ``max_latency_ratio``: the cascade's end-to-end latency (gateway_cascade_request_duration_
  seconds, escalated requests included: student then teacher) over the teacher-only lane's
  (gateway_request_duration_seconds{backend="teacher"}: the requests outside the cascade, this
  step's, or the rollout's earlier steps' once the cascade takes them all), at the median and at
  the policy's quantile, as the split gate does with call latency.
- ``max_latency_ms``: the cascade's end-to-end latency at the policy's quantile.

``max_class_accuracy_drop`` still refuses a cascade (``analysis.CASCADE_REFUSED_GATES``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace

from controller import analysis, sequences, stats
from controller.analysis import GateResult, Levels, Verdict, WindowMetrics
from controller.labels import Labels
from controller.policy import Policy


def judge(gate: str, step: WindowMetrics, rollout: WindowMetrics, policy: Policy,
          threshold: float, z: Levels) -> GateResult:  # fmt: skip
    """``analysis.assess``'s hook: the gate on the windows' cascade series."""
    return GATES[gate](step, rollout, policy, threshold, z)


def accuracy_drop(step: WindowMetrics, rollout: WindowMetrics, _: Policy, threshold: float,
                  z: Levels) -> GateResult:  # fmt: skip
    gate = "max_accuracy_drop"
    cascade = step.cascade
    answered = cascade.labelled()
    # the teacher's own: its labels less those of escalated cascade requests, over the rollout
    reference = rollout.cascade.labelled("true")
    total = max(rollout.teacher.feedback_total - reference.total, 0.0)
    correct = max(rollout.teacher.feedback_correct - reference.correct, 0.0)
    teacher = Labels(total, min(correct, total))
    pairs = cascade.paired
    sure = cascade.labelled("false").total  # the student answered, sure of itself
    failed = cascade.labelled("failed").total  # the student's answer, its escalation failed
    intervals: dict[str, tuple[float, Callable[[float], stats.Interval]]] = {}
    if pairs.total > 0 and answered.total > 0:

        def paired(alpha: float) -> stats.Interval:
            """The sure lane's paired drop times its share, and the failed lane's share at its
            worst (every answer there wrong, or right): its rows are rarely paired."""
            d_low, d_high = stats.tango_paired_difference(
                pairs.teacher_only, pairs.student_only, pairs.total, z.z(pairs.total, alpha / 3),
                sequences.CONTINUITY)  # fmt: skip
            f_low, f_high = sequences.proportion(sure, answered.total, alpha / 3,
                                                 z.n_star, one_sided=True)  # fmt: skip
            g_high = sequences.proportion(failed, answered.total, alpha / 3, z.n_star,
                                          one_sided=True)[1] if failed else 0.0  # fmt: skip
            return (d_low * (f_low if d_low >= 0 else f_high) - g_high,
                    d_high * (f_high if d_high >= 0 else f_low) + g_high)  # fmt: skip

        value = (pairs.teacher_only - pairs.student_only) / pairs.total * sure / answered.total
        intervals["paired"] = (value, paired)
    if answered.total > 0 and teacher.total > 0:
        intervals["unpaired"] = analysis._unpaired_drop(answered, teacher, z)
    if not intervals:
        return analysis._result(gate, Verdict.INCONCLUSIVE, threshold, answered.total,
                                "no cascade labels yet (or no teacher reference)")  # fmt: skip
    parts = len(intervals)
    bounds = {name: z.bounds(interval, True, parts, parts)
              for name, (_, interval) in intervals.items()}  # fmt: skip
    low = max(b[0] for b in bounds.values())
    high = min(b[1] for b in bounds.values())
    if low > high:  # each holds at its share of the error: both cannot, so neither decides
        return analysis._result(gate, Verdict.INCONCLUSIVE, threshold, answered.total,
                                "paired and unpaired intervals disagree (cascade)")  # fmt: skip
    # the point: the paired one where there is one (its variance is the discordant pairs')
    value = intervals["paired" if "paired" in intervals else "unpaired"][0]
    result = analysis._at_most(gate, value, low, high, threshold, answered.total)
    return replace(result, reason=f"{result.reason} (cascade: {' and '.join(intervals)})")


def _end_to_end(window: WindowMetrics) -> WindowMetrics:
    """The window with the cascade's end-to-end latency in the student's place and the
    teacher-only lane's in the teacher's, for the split gates' latency code."""
    cascade = window.cascade
    return replace(window, student=replace(window.student, latency=cascade.latency),
                   teacher=replace(window.teacher, latency=cascade.teacher_latency))  # fmt: skip


def latency_ratio(step: WindowMetrics, rollout: WindowMetrics, policy: Policy, threshold: float,
                  z: Levels) -> GateResult:  # fmt: skip
    result = analysis._latency_ratio(_end_to_end(step), _end_to_end(rollout), policy, threshold,
                                     z)  # fmt: skip
    return replace(result, reason=f"{result.reason} (cascade end to end over teacher-only)")


def latency(step: WindowMetrics, rollout: WindowMetrics, policy: Policy, threshold: float,
            z: Levels) -> GateResult:  # fmt: skip
    result = analysis._latency(_end_to_end(step), rollout, policy, threshold, z)
    if math.isnan(result.value):
        return analysis._result("max_latency_ms", Verdict.INCONCLUSIVE, threshold, 0,
                                "no cascade latency yet")  # fmt: skip
    return replace(result, reason=f"{result.reason} (cascade end to end)")


GATES = {
    "max_accuracy_drop": accuracy_drop,
    "max_latency_ratio": latency_ratio,
    "max_latency_ms": latency,
}

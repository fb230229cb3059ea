"""What the cascade's gates read of a window (``traffic.mode: cascade``): the cascade's labels by
lane, its paired labels, its end-to-end latency and the teacher-only latency, from the gateways'
counter increases. Apart from ``controller.analysis`` (which holds it in ``WindowMetrics``) so
that module can import it without a cycle."""

from __future__ import annotations

from dataclasses import dataclass, field

from controller.labels import Labels, PairedLabels
from controller.promtext import Snapshot, buckets, select
from gateway import metric_names as names
from gateway.metric_names import CASCADE_ESCALATION_CALLS, CASCADE_FEEDBACK_PAIRED


@dataclass(frozen=True)
class CascadeWindow:
    requests: float = 0.0  # answered through the cascade, every lane
    labels: dict[str, Labels] = field(default_factory=dict)  # escalated flag -> labels
    # labelled rows the student answered sure of itself (lane "false") whose teacher answer is
    # known, by PAIRED_OUTCOMES; the "failed" lane's shadow calls go to the teacher that failed
    # it, so its rows are rarely paired, and pooling them would weight the sure ones' answers
    paired: PairedLabels = field(default_factory=PairedLabels)
    latency: list[tuple[float, float]] = field(default_factory=list)  # end to end, every lane
    teacher_latency: list[tuple[float, float]] = field(default_factory=list)  # teacher-only lane
    escalation_failures: float = 0.0  # escalations the teacher did not answer (its failures)

    def labelled(self, *lanes: str) -> Labels:
        """The labels of ``lanes`` (every lane when none is named) together."""
        chosen = [self.labels.get(lane, Labels()) for lane in lanes or list(self.labels)]
        return Labels(sum(x.total for x in chosen), sum(x.correct for x in chosen))


def cascade_window(increase: Snapshot, model: str) -> CascadeWindow:
    """A window's cascade series (empty outside cascade mode)."""

    def count(name: str, **labels: str) -> float:
        return select(increase, name, model=model, **labels)

    labels = {lane: Labels(count(names.CASCADE_FEEDBACK, escalated=lane),
                               count(names.CASCADE_FEEDBACK_CORRECT, escalated=lane))
              for lane in names.CASCADE_ESCALATED}  # fmt: skip
    paired = PairedLabels(*(count(CASCADE_FEEDBACK_PAIRED, escalated="false", outcome=outcome)
                            for outcome in names.PAIRED_OUTCOMES))  # fmt: skip
    teacher = names.TEACHER
    calls = count(CASCADE_ESCALATION_CALLS, backend=teacher)
    answered = count(CASCADE_ESCALATION_CALLS, backend=teacher, code="200")
    return CascadeWindow(
        requests=count(names.CASCADE_REQUESTS),
        labels=labels,
        paired=paired,
        latency=buckets(increase, names.CASCADE_DURATION, model=model),
        # a teacher-only request's time in the gateway: the lane the cascade's share leaves
        teacher_latency=buckets(increase, names.REQUEST_DURATION, model=model, backend=teacher),
        escalation_failures=calls - answered,
    )

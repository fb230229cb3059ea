"""The cascade (``traffic.mode: cascade``): the student answers when it is sure, the teacher when
it is not.

A request routed to the student (its share, ``student_share``, is now the fraction of traffic
that goes through the cascade) runs on the student first; when the student's confidence (the
task's: ``Task.confidence``) is below the threshold, the request is escalated: the teacher runs
it and its answer is returned. The threshold is ``min_confidence``, or chosen from shadowed
traffic (``gateway.thresholds``) when ``max_disagreement`` is set.

Shadowed requests are the cascade's evidence: each gives the student's confidence and whether
its answer equals the teacher's, whichever backend served it (a teacher-served request shadowed
on the student, a cascade request shadowed on the teacher). A cascade request is drawn once, at
the shadow's rate, escalated or not, and its evidence counts only once its shadow call to the
teacher has answered: an escalated one makes that call too (although its teacher answer is
known), so that a full queue, an open circuit or a failed call drops sure and unsure requests
alike and the evidence stays a random sample of the traffic (the test assumes one; recording
escalated requests always and sure ones only when their shadow call got through made the chosen
threshold too low). What is dropped is counted (``gateway_cascade_evidence_dropped_total``).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import numpy as np

from gateway import metric_names as names
from gateway.cascade_config import CascadeConfig
from gateway.errors import GatewayError
from gateway.feedback import LabelRules, Scored
from gateway.metric_families import shared_counter, shared_gauge, shared_histogram
from gateway.metric_names import (
    CASCADE_ESCALATION_CALLS,
    CASCADE_FEEDBACK_PAIRED,
    ESCALATION_REASONS,
)
from gateway.metrics import LATENCY_BUCKETS, GatewayMetrics
from gateway.roles import NO_BACKEND
from gateway.tasks import Task
from gateway.thresholds import Choice, ThresholdSelector

log = logging.getLogger(__name__)
ESCALATED = names.CASCADE_ESCALATED  # false, true, failed (the teacher failed: the student's)
STUDENT_ANSWERED = ("false", "failed")  # the lanes whose returned answer is the student's
# An escalation's teacher call: (backend, code) by reason; shed and deadline are no backend's
_CALL_OUTCOMES = {"ok": ("teacher", "200"), "error": ("teacher", "503"),
                  "timeout": ("teacher", "504"), "shed": (NO_BACKEND, "503"),
                  "deadline": (NO_BACKEND, "504")}  # fmt: skip
# A cascade request's lane travels in its remembered prediction's backend, "student@cascade:
# false" (the one field a fleet's store keeps besides the classes), so a label posted to any
# replica finds it; ``LaneRules`` scores it as the plain backend.
_LANE_MARK = "@cascade:"


class CascadeRefused(GatewayError):
    """The model's task has no confidence to cascade on (found at start-up)."""


class CascadeMetrics:
    """The cascade's own series (made in cascade mode only)."""

    def __init__(self, metrics: GatewayMetrics) -> None:
        registry, model = metrics.registry, metrics.model
        m, me = ["model"], ["model", "escalated"]
        requests = shared_counter(
            names.CASCADE_REQUESTS,
            "Requests answered through the cascade; "
            "escalated='true': the teacher's answer was returned; 'failed': the "
            "teacher failed, the student's was.",
            me,
            registry=registry,
        )
        duration = shared_histogram(
            names.CASCADE_DURATION,
            "Time of a cascade request in the gateway "
            "(an escalated one runs on the student, then the teacher).",
            me,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.requests = {flag: requests.labels(model, flag) for flag in ESCALATED}
        self.duration = {flag: duration.labels(model, flag) for flag in ESCALATED}
        self.threshold = shared_gauge(
            names.CASCADE_THRESHOLD,
            "Confidence below which a request is escalated to the teacher.",
            m,
            multiprocess_mode="livemostrecent",
            registry=registry,
        ).labels(model)
        source = shared_gauge(
            names.CASCADE_THRESHOLD_SOURCE,
            "1 for where the threshold comes from (fixed, chosen, no_evidence).",
            ["model", "source"],
            multiprocess_mode="livemostrecent",
            registry=registry,
        )
        self.source = {kind: source.labels(model, kind) for kind in names.CASCADE_SOURCES}
        self.samples = shared_gauge(
            names.CASCADE_CALIBRATION_SAMPLES,
            "Shadowed requests the last threshold choice was made from.",
            m,
            multiprocess_mode="livemostrecent",
            registry=registry,
        ).labels(model)
        self.bound = shared_gauge(
            names.CASCADE_DISAGREEMENT_BOUND,
            "Upper bound on the fraction of "
            "requests the cascade answers unlike the teacher, at the last choice.",
            m,
            multiprocess_mode="livemostrecent",
            registry=registry,
        ).labels(model)
        self.comparisons = shared_counter(
            names.CASCADE_COMPARISONS, "Shadowed cascade requests.", m, registry=registry
        ).labels(model)
        self.agreements = shared_counter(
            names.CASCADE_AGREEMENTS,
            "Shadowed cascade requests whose returned answer equals the teacher's.",
            m,
            registry=registry,
        ).labels(model)
        labelled = shared_counter(
            names.CASCADE_FEEDBACK, "Labelled rows of cascade requests.", me, registry=registry
        )
        right = shared_counter(
            names.CASCADE_FEEDBACK_CORRECT,
            "Labelled rows of cascade requests whose returned answer was right.",
            me,
            registry=registry,
        )
        self.labelled = {flag: labelled.labels(model, flag) for flag in ESCALATED}
        self.right = {flag: right.labels(model, flag) for flag in ESCALATED}
        dropped = shared_counter(
            names.CASCADE_EVIDENCE_DROPPED,
            "Cascade requests drawn as evidence whose shadow call did not answer, by why.",
            ["model", "reason"],
            registry=registry,
        )
        self.dropped = {why: dropped.labels(model, why) for why in names.CASCADE_DROP_REASONS}
        calls = shared_counter(
            CASCADE_ESCALATION_CALLS,
            "Escalations' calls to the teacher, by the status a teacher-only request would "
            "have had (backend 'none': shed or out of time, no backend's failure).",
            ["model", "backend", "code", "reason"],
            registry=registry,
        )
        self.calls = {why: calls.labels(model, *_CALL_OUTCOMES[why], why)
                      for why in ESCALATION_REASONS}  # fmt: skip
        paired = shared_counter(
            CASCADE_FEEDBACK_PAIRED,
            "Labelled rows of cascade requests answered by the student whose teacher answer is "
            "known too (shadowed), by which was right.",
            ["model", "escalated", "outcome"],
            registry=registry,
        )
        outcomes = names.PAIRED_OUTCOMES
        self.paired = {(flag, outcome): paired.labels(model, flag, outcome)
                       for flag in STUDENT_ANSWERED for outcome in outcomes}  # fmt: skip


class Cascade:
    def __init__(self, config: CascadeConfig, task: Task, metrics: GatewayMetrics) -> None:
        if task.confidence(np.zeros((1, 2)), config.confidence) is None:
            raise CascadeRefused(f"traffic.mode cascade: the task {task.kind} has no confidence "
                                 "to escalate on (a cascade is for classification)")  # fmt: skip
        self.config = config
        self._task = task
        self._metrics = CascadeMetrics(metrics)
        self.selector = (None if config.max_disagreement is None else ThresholdSelector(
            config.max_disagreement, config.confidence_level, config.grid_step,
            config.min_samples))  # fmt: skip
        # until the data speaks: min_confidence if given, else escalate everything
        self._fallback = 1.0 if config.min_confidence is None else config.min_confidence
        self.threshold = self._fallback
        self.source = "fixed" if self.selector is None else "no_evidence"
        self._show()

    # -- the request path ----------------------------------------------------------------------

    def confidence(self, answer: np.ndarray) -> float:
        """A request's confidence: its least sure row's (a NaN answer is not sure at all)."""
        rows = self._task.confidence(answer, self.config.confidence)
        assert rows is not None  # refused at start otherwise
        return float(np.nan_to_num(rows, nan=0.0).min()) if len(rows) else 1.0

    def escalates(self, confidence: float) -> bool:
        return not confidence >= self.threshold

    def count(self, lane: str, seconds: float) -> None:
        self._metrics.requests[lane].inc()
        self._metrics.duration[lane].observe(seconds)

    def escalation_call(self, reason: str) -> None:
        """An escalation's call to the teacher: ``ok``, or why it gave no answer."""
        self._metrics.calls[reason].inc()

    def labelled(self, lane: str, scored: Scored) -> None:
        """A label's scores for a cascade request (its lane from ``lane_of``); a retried label
        is counted once. Where the student's answer was returned and the teacher's is known
        (shadowed), the pair counts too: the cascade's accuracy gate reads it."""
        if scored.repeat:
            return
        self._metrics.labelled[lane].inc(sum(n for n, _ in scored.by_class.values()))
        self._metrics.right[lane].inc(sum(right for _, right in scored.by_class.values()))
        if lane in STUDENT_ANSWERED and scored.paired:
            for table in scored.paired.values():
                for outcome, rows in table.by_outcome().items():
                    self._metrics.paired[lane, outcome].inc(rows)

    def dropped(self, reason: str, requests: int) -> None:
        """Cascade requests drawn as evidence whose shadow call did not answer (the shadow's)."""
        self._metrics.dropped[reason].inc(requests)

    # -- the evidence --------------------------------------------------------------------------

    def served(self, teacher: np.ndarray, student: np.ndarray, lane: str) -> np.ndarray:
        """One shadowed request's rows of both answers: observed as evidence, and returned as
        what the cascade answers. ``lane``: "student", the cascade returned the student's answer;
        "escalated", the teacher's (both count toward the cascade's agreement); "teacher", a
        teacher-served request, whose cascade answer is the student's when it is sure."""
        confidence = self.confidence(student)
        agreed = self._agree(teacher, student)
        if lane == "student":
            cascade = student
        elif lane == "escalated":
            cascade = teacher
        else:
            cascade = teacher if self.escalates(confidence) else student
        if lane != "teacher":
            self._compared(agreed or lane == "escalated")
        self.observe(confidence, agreed)
        return cascade

    def _agree(self, teacher: np.ndarray, student: np.ndarray) -> bool:
        task = self._task
        a, b = task.prediction(teacher), task.prediction(student)
        return a is not None and b is not None and bool(np.array_equal(a, b))

    def _compared(self, agreed: bool) -> None:
        self._metrics.comparisons.inc()
        if agreed:
            self._metrics.agreements.inc()

    def observe(self, confidence: float, agreed: bool) -> None:
        if self.selector is None:
            return
        choice = self.selector.observe(confidence, agreed)
        if choice is None:
            return
        previous = self.threshold
        if choice.threshold is None:
            self.threshold, self.source = self._fallback, "no_evidence"
        else:
            self.threshold, self.source = choice.threshold, "chosen"
        self._show(choice)
        log.info("cascade threshold %.4g -> %.4g (%s; %d shadowed requests, disagreement at most "
                 "%.4g at look %d)", previous, self.threshold, self.source, choice.samples,
                 choice.upper_bound, choice.look)  # fmt: skip

    def _show(self, choice: Choice | None = None) -> None:
        metrics = self._metrics
        metrics.threshold.set(self.threshold)
        for kind, gauge in metrics.source.items():
            gauge.set(int(kind == self.source))
        if choice is not None:
            metrics.samples.set(choice.samples)
            metrics.bound.set(choice.upper_bound)

    def status(self) -> dict[str, object]:
        """What the admin API's traffic state shows of the cascade."""
        config, selector = self.config, self.selector
        shown: dict[str, object] = {
            "threshold": self.threshold,
            "source": self.source,
            "confidence": config.confidence,
            "min_confidence": config.min_confidence,
            "max_disagreement": config.max_disagreement,
            "confidence_level": config.confidence_level,
        }
        if selector is not None:
            shown["samples_seen"] = selector.samples
            choice = selector.choice
            if choice is not None:
                shown["evidence"] = {
                    "samples": choice.samples,
                    "disagreements": choice.disagreements,
                    "upper_bound": choice.upper_bound,
                    "escalation_rate": choice.escalation_rate,
                    "look": choice.look,
                    "chosen": choice.threshold,
                }
        return shown


def carried(backend: str, lane: str | None) -> str:
    """What a prediction remembers as its backend: the backend, and a cascade request's lane."""
    return backend if lane is None else _CARRIED[backend, lane]


def lane_of(remembered: str) -> tuple[str, str | None]:
    """A remembered backend's (backend, lane); a request outside the cascade has no lane."""
    backend, marked, lane = remembered.partition(_LANE_MARK)
    return (backend, lane) if marked and lane in ESCALATED else (remembered, None)


# one str per (backend, lane): a remembered lane costs a process no bytes of its own
_CARRIED = {(backend, lane): f"{backend}{_LANE_MARK}{lane}"
            for backend in ("teacher", "student") for lane in ESCALATED}  # fmt: skip


class LaneRules:
    """A task's label rules, for predictions whose backend carries a cascade lane: scored as
    the plain backend (whose answer it was decides the paired table), the lane kept in
    ``Scored.backend`` for the service to read (``lane_of``) and strip."""

    def __init__(self, rules: LabelRules) -> None:
        self.rules = rules

    @property
    def task(self) -> str:
        return self.rules.task

    def check(self, label: Any) -> np.ndarray:
        return self.rules.check(label)

    def score(
        self, backend: str, predicted: np.ndarray, other: np.ndarray | None, labels: np.ndarray
    ) -> Scored:
        plain, lane = lane_of(backend)
        scored = self.rules.score(plain, predicted, other, labels)
        return scored if lane is None else replace(scored, backend=backend)

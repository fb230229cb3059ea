"""The post-promotion watch: the promoted student is judged, window after window, against a
reference recorded from production traffic, and rolled back or alerted on when it degrades.

Each look judges the window so far (``judge_window``): drift of the inputs and of the student's
predictions (``controller.drift``: PSI per feature, Bonferroni over features, alpha spent over
the window's looks), label-free accuracy (classification), and the rollout's own gates from
``watch.gates`` with the decisions' anytime-valid sequences (``controller.analysis.assess``).
The drift checks share the policy's alpha (Bonferroni over them). A FAIL is a breach: rollback
sets share 0 with reason "drift: ...", and the watch ends; alert sends a ``watch_alert`` event.
The window then restarts, as it does after ``window_seconds`` without a breach.

The reference is the last step's window of the rollout (``Reference.of`` on its counters), or,
for ``distill-canary watch`` on a student promoted without it, the first ``reference_seconds``
of watching.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from controller import analysis
from controller.actuator import Fleet, FleetNotConfirmed
from controller.analysis import GateResult, Verdict
from controller.drift import DriftCounts, judge_drift_recent, judge_estimated_accuracy
from controller.events import EventType, RolloutEvent, rollout_fields, watch_alert
from controller.policy import Gates, Policy
from controller.promtext import Snapshot, increase
from controller.sources import Mark, MetricsSource, MetricsUnavailable
from controller.sources.base import window_metrics
from controller.state import Phase, RolloutState

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Reference:
    """What the student's traffic looked like when it was judged good."""

    counts: DriftCounts
    accuracy: float | None  # the student's, from labels, else its agreement with the teacher
    at: float

    @classmethod
    def of(cls, snapshot: Snapshot, model: str, at: float) -> Reference:
        window = window_metrics(snapshot, model)
        accuracy = None
        if window.student.feedback_total > 0:
            accuracy = window.student.feedback_correct / window.student.feedback_total
        elif window.comparisons > 0:
            accuracy = window.agreements / window.comparisons
        return cls(DriftCounts.of(snapshot, model), accuracy, at)

    def save(self, path: Path) -> None:
        data = {"counts": self.counts.to_json(), "accuracy": self.accuracy, "at": self.at}
        path.write_text(json.dumps(data))

    @classmethod
    def load(cls, path: Path) -> Reference:
        data = json.loads(path.read_text())
        return cls(DriftCounts.from_json(data["counts"]), data["accuracy"], float(data["at"]))


def judge_window(snapshot: Snapshot, reference: Reference, policy: Policy, look: int,
                 recent: Snapshot | None = None) -> list[GateResult]:  # fmt: skip
    """Every configured check on one window's counter increases, at its ``look``-th look; the
    drift checks also on ``recent``, the increases of the window's last ``recent_seconds``."""
    watch = policy.watch
    assert watch is not None
    counts = DriftCounts.of(snapshot, policy.model)
    latest = DriftCounts.of(recent, policy.model) if recent is not None else None
    drift_checks = [c for c in (watch.max_input_psi, watch.max_prediction_psi,
                                watch.max_estimated_accuracy_drop) if c is not None]  # fmt: skip
    alpha = (1.0 - policy.confidence) / max(len(drift_checks), 1)
    ref, results = reference.counts, []
    if watch.max_input_psi is not None:
        results.append(judge_drift_recent(
            "max_input_psi", (counts.inputs, counts.rows),
            None if latest is None else (latest.inputs, latest.rows), (ref.inputs, ref.rows),
            watch.max_input_psi, alpha, look, watch.min_rows))  # fmt: skip
    if watch.max_prediction_psi is not None:
        results.append(judge_drift_recent(
            "max_prediction_psi", (counts.predictions, counts.student_rows),
            None if latest is None else (latest.predictions, latest.student_rows),
            (ref.predictions, ref.student_rows), watch.max_prediction_psi, alpha, look,
            watch.min_rows))  # fmt: skip
    if watch.max_estimated_accuracy_drop is not None:
        results.append(judge_estimated_accuracy(counts, ref, reference.accuracy,
                                                watch.max_estimated_accuracy_drop, alpha,
                                                float(watch.min_rows), watch.min_rows))  # fmt: skip
    if watch.gates:
        update = {"gates": Gates.model_validate(watch.gates), "dry_run": [],
                  "min_requests": watch.min_rows}  # fmt: skip
        gated = policy.model_copy(update=update)
        window = window_metrics(snapshot, policy.model)
        results += analysis.assess(window, window, gated, dark_launch=False)
    return results


class Outcome(StrEnum):
    RECORDING = "recording"
    """Recording the reference (``distill-canary watch`` with none)."""
    WATCHING = "watching"
    """No breach (yet) in this window."""
    ALERTED = "alerted"
    """A breach, alerted on; a new window starts."""
    ROLLED_BACK = "rolled_back"
    """A breach, rolled back: share 0; the watch ends."""
    UNAVAILABLE = "unavailable"
    """The metrics could not be read: no verdict (never a pass)."""


@dataclass(frozen=True)
class Look:
    at: float
    outcome: Outcome
    reason: str
    results: list[GateResult] = field(default_factory=list)


class Watch:
    def __init__(
        self,
        policy: Policy,
        source: MetricsSource,
        fleet: Fleet,
        notify: Callable[[RolloutEvent], None],
        rollout: RolloutState,
        reference: Reference | None,
        clock: Callable[[], float] = time.time,
        holder: str = "watch",
    ) -> None:
        """``rollout``: the promoted rollout (or one made for the model), whose fields every
        event carries; the watch sets its phase and reason when it rolls back."""
        if policy.watch is None:
            raise ValueError("the policy has no watch: section")
        self.policy, self.watch = policy, policy.watch
        self.source, self.fleet, self._notify = source, fleet, notify
        self.rollout, self.reference = rollout, reference
        self.clock, self.holder = clock, holder
        self._window: Mark | None = None
        self._look = 0
        # the window's increases at its last looks, for the drift checks' recent part
        recent_looks = round(self.watch.recent_seconds / self.watch.interval_seconds)
        self._history: deque[Snapshot] = deque(maxlen=max(recent_looks, 1))
        self._recent_looks = recent_looks

    def tick(self) -> Look:
        """One look; starts the first window (or the reference's recording) on its first call."""
        now = self.clock()
        try:
            if self._window is None:
                self._restart()
                what = "recording the reference" if self.reference is None else "window started"
                return Look(now, Outcome.RECORDING if self.reference is None else
                            Outcome.WATCHING, what)  # fmt: skip
            assert self._window is not None
            snapshot = self.source.increase_since(self._window)
        except MetricsUnavailable as exc:
            return Look(now, Outcome.UNAVAILABLE, str(exc))
        elapsed = now - self._window.at
        if self.reference is None:
            if elapsed < self.watch.reference_seconds:
                return Look(now, Outcome.RECORDING, f"recording the reference, {elapsed:.0f} of "
                            f"{self.watch.reference_seconds:.0f} s")  # fmt: skip
            self.reference = Reference.of(snapshot, self.policy.model, now)
            self._restart()
            rows = self.reference.counts.rows
            return Look(now, Outcome.WATCHING, f"reference recorded: {rows:.0f} rows")
        self._look += 1
        full = self._recent_looks and len(self._history) == self._recent_looks
        recent = increase(snapshot, self._history[0]) if full else None
        self._history.append(snapshot)
        results = judge_window(snapshot, self.reference, self.policy, self._look, recent)
        failed = [r for r in results if r.verdict is Verdict.FAIL]
        if failed:
            self._restart()
            return self._breach(now, failed, results)
        if elapsed >= self.watch.window_seconds:
            self._restart()
        pending = [r.gate for r in results if r.verdict is Verdict.INCONCLUSIVE]
        reason = "no breach" + (f" (inconclusive: {', '.join(pending)})" if pending else "")
        return Look(now, Outcome.WATCHING, reason, results)

    def run(self, stopped: Callable[[], bool], sleep: Callable[[float], None] = time.sleep,
            on_look: Callable[[Look], None] | None = None) -> Look:  # fmt: skip
        """Looks every ``interval_seconds`` until a rollback or ``stopped()``; the last look."""
        while True:
            look = self.tick()
            if on_look is not None:
                on_look(look)
            if look.outcome is Outcome.ROLLED_BACK or stopped():
                return look
            sleep(self.watch.interval_seconds)

    def _restart(self) -> None:
        self._window = self.source.mark()
        self._look = 0
        self._history.clear()

    def _breach(self, now: float, failed: list[GateResult], results: list[GateResult]) -> Look:
        reason = "drift: " + "; ".join(f"{r.gate} {r.reason}" for r in failed)
        numbers: dict[str, Any] = {"gates": [_finite(r.as_dict()) for r in results]}
        if self.watch.on_breach == "alert":
            self._notify(watch_alert(self.rollout, self.holder, now, reason, numbers))
            log.warning("watch alert: %s", reason)
            return Look(now, Outcome.ALERTED, reason, results)
        before = self.rollout.share
        try:
            self.fleet.set_share(0.0)
            self.fleet.verify(0.0)
            outcome = "share 0 on every gateway"
        except FleetNotConfirmed as exc:
            outcome = f"share 0 not confirmed everywhere ({exc})"
        self.rollout.phase, self.rollout.share = Phase.ROLLED_BACK, 0.0
        self.rollout.rollback_reason, self.rollout.ended_at = reason, now
        self._notify(RolloutEvent(EventType.ROLLED_BACK, now, self.holder,
                                  rollout_fields(self.rollout), before, 0.0, reason,
                                  cause=failed[0].gate, numbers=numbers))  # fmt: skip
        log.warning("watch rolled back: %s; %s", reason, outcome)
        return Look(now, Outcome.ROLLED_BACK, f"{reason}; {outcome}", results)


def promoted_rollout(model: str, share: float = 1.0) -> RolloutState:
    """A rollout record for a student promoted without one (``distill-canary watch``)."""
    return RolloutState(phase=Phase.PROMOTED, steps=[100.0], share=share, policy={"model": model},
                        name=f"watch-{model}")  # fmt: skip


def _finite(record: dict[str, object]) -> dict[str, object]:
    """NaN is not JSON: a number without a value is None in an event."""
    return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in record.items()}


def reference_of_last_step(source: MetricsSource, rollout: RolloutState, model: str,
                           now: float) -> Reference | None:  # fmt: skip
    """The reference a promoted rollout leaves: its last step's window (the student at 100 %,
    judged good), read at promotion; None when the rollout kept no mark of it."""
    if rollout.step_mark is None:
        return None
    return Reference.of(source.increase_since(Mark.from_json(rollout.step_mark)), model, now)

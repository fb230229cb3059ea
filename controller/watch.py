"""The post-promotion watch: the promoted student is judged, window after window, against a
reference recorded from production traffic, and rolled back or alerted on when it degrades.

Each look judges the window so far (``judge_window``): drift of the inputs and of the student's
predictions (``controller.drift``: PSI per feature, Bonferroni over features, alpha spent over
the window's looks), label-free accuracy (classification), and the rollout's own gates from
``watch.gates`` with the decisions' anytime-valid sequences (``controller.analysis.assess``).
The drift checks share the policy's alpha (Bonferroni over them). A FAIL is a breach: rollback
sets share 0 with reason "drift: ...", retried at every look until every gateway confirms it
(``rollback_unconfirmed`` meanwhile), and the watch ends; alert sends a ``watch_alert`` event.
The window then restarts, as it does after ``window_seconds`` without a breach.

The watch holds the state file's lease, as a rollout's controller does (a new rollout is refused
meanwhile), and records every look in the rollout's history.

The reference is the last step's window of the rollout (``Reference.of`` on its counters), or
the registry's profile of the student's training split (``watch.reference: registry``,
``registry_reference``), or, when there is none or it has fewer than ``min_rows`` rows, the
first ``reference_seconds`` of watching.

Each window spends the alpha ``WatchPolicy.window_alphas`` gives it (a false-alarm budget per
day, spread over the day's windows); the window (its mark, looks and reference) is saved in the
rollout store at every look, so a restarted watch goes on with it. The watch sets its
``shadow_sample_rate`` on every gateway (``controller.shadow_rate``) and counts its looks and
verdicts in the controller's exporter.
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
from controller.exporter import ControllerMetrics
from controller.policy import Gates, Policy
from controller.promtext import Snapshot, increase
from controller.rollout_store import (
    DecisionRecord,
    LeaseLost,
    Phase,
    Record,
    RolloutState,
    RolloutStore,
)
from controller.shadow_rate import ShadowRateSetter
from controller.sources import Mark, MetricsSource, MetricsUnavailable
from controller.sources.base import window_metrics
from controller.watch_policy import DRIFT_CHECKS

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

    def to_json(self) -> dict[str, Any]:
        return {"counts": self.counts.to_json(), "accuracy": self.accuracy, "at": self.at}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Reference:
        """Also reads a registry entry's profile (``models.registry.PROFILE_KEY``), a superset."""
        return cls(DriftCounts.from_json(data["counts"]), data["accuracy"], float(data["at"]))

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_json()))

    @classmethod
    def load(cls, path: Path) -> Reference:
        return cls.from_json(json.loads(path.read_text()))


def judge_window(snapshot: Snapshot, counts: DriftCounts, reference: Reference, policy: Policy,
                 look: int, recent: Snapshot | None = None) -> list[GateResult]:  # fmt: skip
    """Every configured check on one window's counter increases (``counts``, their drift
    summaries), at its ``look``-th look; the drift checks also on ``recent``, the increases of
    the window's last ``recent_seconds``."""
    watch = policy.watch
    assert watch is not None
    latest = DriftCounts.of(recent, policy.model) if recent is not None else None
    drift_alpha, gates_alpha = watch.window_alphas(policy.confidence)
    alpha = drift_alpha / max(len(watch.drift_checks), 1)
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
                  "min_requests": watch.min_rows, "confidence": 1.0 - gates_alpha}  # fmt: skip
        gated = policy.model_copy(update=update)
        window = window_metrics(snapshot, policy.model)
        results += analysis.assess(window, window, gated, dark_launch=False)
    return results


class Outcome(StrEnum):
    RECORDING = "recording"
    """Recording the reference (none given, or one with fewer than ``min_rows`` rows)."""
    WATCHING = "watching"
    """No breach (yet) in this window."""
    ALERTED = "alerted"
    """A breach (or drift checks blind for ``blind_looks``), alerted on; a breach starts a new
    window."""
    ROLLED_BACK = "rolled_back"
    """A breach, rolled back: share 0 confirmed on every gateway; the watch ends."""
    ROLLBACK_UNCONFIRMED = "rollback_unconfirmed"
    """A breach, rolled back, but some gateway has not confirmed share 0: retried at every look
    until it does; the watch ends here only when stopped (gave up)."""
    LEASE_LOST = "lease_lost"
    """Another controller took the model's lease: the watch stops without touching the fleet."""
    UNAVAILABLE = "unavailable"
    """The metrics could not be read: no verdict (never a pass)."""


FINAL = (Outcome.ROLLED_BACK, Outcome.LEASE_LOST)
RECORD_OF = {Outcome.ROLLED_BACK: Record.ROLLED_BACK,
             Outcome.ROLLBACK_UNCONFIRMED: Record.ROLLBACK_UNCONFIRMED}  # fmt: skip
"""The history's record of a look (``Record.WATCH`` for every other outcome)."""


@dataclass(frozen=True)
class Look:
    at: float
    outcome: Outcome
    reason: str
    results: list[GateResult] = field(default_factory=list)


@dataclass(frozen=True)
class WatchWindow:
    """What the rollout store keeps of a watch (``RolloutStore.save_watch_window``)."""

    mark: Mark
    look: int
    reference: Reference | None
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        reference = None if self.reference is None else self.reference.to_json()
        return {"mark": self.mark.to_json(), "look": self.look, "reference": reference,
                "note": self.note}  # fmt: skip

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> WatchWindow:
        reference = data.get("reference")
        return cls(Mark.from_json(data["mark"]), int(data["look"]),
                   None if reference is None else Reference.from_json(reference),
                   str(data.get("note", "")))  # fmt: skip


@dataclass(frozen=True)
class _Rollback:
    """A breach rolled back, for the retries of share 0 until every gateway confirms it."""

    reason: str
    cause: str
    numbers: dict[str, Any]
    before: float


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
        store: RolloutStore | None = None,
        metrics: ControllerMetrics | None = None,
        shadow: ShadowRateSetter | None = None,
        reference_note: str = "",
    ) -> None:
        """``rollout``: the promoted rollout (or one made for the model), whose fields every
        event carries; the watch sets its phase and reason when it rolls back. ``store``: the
        state file whose lease ``holder`` holds (taken by the caller): renewed at every look,
        which is also saved in the rollout's history, with the window (a watch started again on
        the rollout keeps it); a lost lease stops the watch at once. ``metrics``: the
        exporter its looks, verdicts and window are counted in. ``shadow``: sets the watch's
        ``shadow_sample_rate`` on the gateways at its first look (and on any that missed it, at
        the next). ``reference_note``: why there is no ``reference`` (said while recording)."""
        if policy.watch is None:
            raise ValueError("the policy has no watch: section")
        self.policy, self.watch = policy, policy.watch
        self.source, self.fleet, self._notify = source, fleet, notify
        self.rollout, self.reference = rollout, reference
        self.clock, self.holder, self.store = clock, holder, store
        self._window: Mark | None = None
        self._look = 0
        # the window's increases at its last looks, for the drift checks' recent part
        recent_looks = round(self.watch.recent_seconds / self.watch.interval_seconds)
        self._history: deque[Snapshot] = deque(maxlen=max(recent_looks, 1))
        self._recent_looks = recent_looks
        self._rollback: _Rollback | None = None  # share 0 sent, not yet confirmed everywhere
        self._told = False  # the rollback_unconfirmed event sent for this rollback
        self._blind = 0  # looks in a row with no drift rows in the window
        self._note = reference_note  # why the reference is being recorded
        if reference is not None and (short := self._too_small(reference.counts)):
            self.reference, self._note = None, f"the given reference {short}"
        self.metrics, self.shadow = metrics, shadow
        if metrics is not None:
            checks = [*DRIFT_CHECKS, *self.watch.gates]
            metrics.add_watch([each.value for each in Outcome], checks)
        self._resume()

    def tick(self) -> Look:
        """One look (renewing the lease first, saved in the history after); starts the first
        window (or the reference's recording) on its first call."""
        now = self.clock()
        try:
            if self.store is not None:
                lease_seconds = watch_lease_seconds(self.policy)
                self.store.renew(self.holder, lease_seconds, now, self.policy.model)
            if self.shadow is not None and self._rollback is None:
                self._set_shadow_rate()
            look = self._confirm_share_0(now, []) if self._rollback else self._look_at(now)
            self._save(look)
        except LeaseLost as exc:
            log.error("watch stopped: %s", exc)
            look = Look(now, Outcome.LEASE_LOST, str(exc))
        if self.metrics is not None:
            self.metrics.watch_looked(look.outcome.value, look.results)
        return look

    def _set_shadow_rate(self) -> None:
        assert self.shadow is not None
        try:
            problems = self.shadow.apply()
        except MetricsUnavailable as exc:  # a fleet store that cannot list its replicas
            problems = [str(exc)]
        for problem in problems:
            log.warning("shadow sample rate %g not set: %s", self.shadow.rate, problem)
        if self.metrics is not None:
            self.metrics.watch_shadow(self.shadow.rate if self.shadow.everywhere() else -1.0)

    def run(self, stopped: Callable[[], bool], sleep: Callable[[float], object] = time.sleep,
            on_look: Callable[[Look], None] | None = None) -> Look:  # fmt: skip
        """Looks every ``interval_seconds`` until a confirmed rollback, a lost lease or
        ``stopped()``; the last look. Stopped before share 0 was confirmed, it gives up: a last
        ``rollback_unconfirmed`` event and record say so."""
        while True:
            look = self.tick()
            if on_look is not None:
                on_look(look)
            if look.outcome in FINAL:
                return look
            if stopped():
                if self._rollback is None:
                    return look
                return self._give_up(look)
            sleep(self.watch.interval_seconds)

    def _look_at(self, now: float) -> Look:
        try:
            if self._window is None:
                self._restart()
                if self.reference is None:
                    return Look(now, Outcome.RECORDING, self._recording(0.0))
                return Look(now, Outcome.WATCHING, "window started")
            assert self._window is not None
            snapshot = self.source.increase_since(self._window)
        except MetricsUnavailable as exc:
            return Look(now, Outcome.UNAVAILABLE, str(exc))
        elapsed = now - self._window.at
        if self.reference is None:
            return self._record_reference(now, snapshot, elapsed)
        counts = DriftCounts.of(snapshot, self.policy.model)
        if unlike := self._unlike(counts):
            # binned otherwise (a profile made under other drift: settings, another gateway's
            # reference file): every feature would "drift"; record one from these gateways
            self.reference, self._note = None, f"the reference {unlike}"
            self._restart()
            log.warning("watch: %s", self._note)
            return Look(now, Outcome.RECORDING, self._recording(0.0))
        self._look += 1
        full = self._recent_looks and len(self._history) == self._recent_looks
        recent = increase(snapshot, self._history[0]) if full else None
        self._history.append(snapshot)
        results = judge_window(snapshot, counts, self.reference, self.policy, self._look, recent)
        failed = [r for r in results if r.verdict is Verdict.FAIL]
        if failed:
            self._restart()
            return self._breach(now, failed, results)
        if elapsed >= self.watch.window_seconds:
            self._restart()
        if blind := self._blindness(counts):
            self._notify(watch_alert(self.rollout, self.holder, now, blind, {}))
            log.warning("watch alert: %s", blind)
            return Look(now, Outcome.ALERTED, blind, results)
        pending = [r.gate for r in results if r.verdict is Verdict.INCONCLUSIVE]
        reason = "no breach" + (f" (inconclusive: {', '.join(pending)})" if pending else "")
        return Look(now, Outcome.WATCHING, reason, results)

    def _recording(self, elapsed: float) -> str:
        note = f"{self._note}; " if self._note else ""
        return (f"{note}recording the reference, {elapsed:.0f} of "
                f"{self.watch.reference_seconds:.0f} s")  # fmt: skip

    def _record_reference(self, now: float, snapshot: Snapshot, elapsed: float) -> Look:
        if elapsed < self.watch.reference_seconds:
            return Look(now, Outcome.RECORDING, self._recording(elapsed))
        recorded = Reference.of(snapshot, self.policy.model, now)
        self._restart()
        if short := self._too_small(recorded.counts):
            self._note = f"the recorded reference {short}"  # more traffic: record again, longer
            return Look(now, Outcome.RECORDING, self._recording(0.0))
        self.reference, self._note = recorded, ""
        return Look(now, Outcome.WATCHING, f"reference recorded: {recorded.counts.rows:.0f} rows")

    def _drift_checks(self) -> tuple[bool, bool]:
        """Whether the drift checks read the inputs' rows, and the student's."""
        checks = self.watch.drift_checks
        students = {"max_prediction_psi", "max_estimated_accuracy_drop"}
        return "max_input_psi" in checks, not students.isdisjoint(checks)

    def _too_small(self, counts: DriftCounts) -> str:
        """Why a reference cannot serve the drift checks ('' when it can)."""
        inputs, students = self._drift_checks()
        least = self.watch.min_rows
        if inputs and counts.rows < least:
            return f"has {counts.rows:.0f} rows, under min_rows {least}"
        if students and counts.student_rows < least:
            return f"has {counts.student_rows:.0f} student rows, under min_rows {least}"
        return ""

    def _unlike(self, counts: DriftCounts) -> str:
        """Why the reference's features are not the ones the gateways count ('' when they are,
        or when the window has no rows yet to tell)."""
        assert self.reference is not None
        ref, inputs, students = self.reference.counts, *self._drift_checks()
        pairs = []
        if inputs and counts.rows > 0:
            pairs.append((set(ref.inputs), set(counts.inputs)))
        if students and counts.student_rows > 0:
            pairs.append((set(ref.predictions), set(counts.predictions)))
        for known, counted in pairs:
            if known != counted:
                only = sorted(" ".join(k) for k in known - counted)[:3]
                missing = sorted(" ".join(k) for k in counted - known)[:3]
                return (f"has features the gateways do not count ({', '.join(only) or 'none'}) "
                        f"and lacks ones they do ({', '.join(missing) or 'none'}): binned "
                        "under other drift: settings")  # fmt: skip
        return ""

    def _blindness(self, counts: DriftCounts) -> str:
        """An alert when the drift checks have had no rows for ``blind_looks`` looks."""
        inputs, students = self._drift_checks()
        if not (inputs or students):
            return ""
        self._blind = self._blind + 1 if (counts.student_rows if students and not inputs
                                          else counts.rows) <= 0 else 0  # fmt: skip
        if self._blind < self.watch.blind_looks:
            return ""
        self._blind = 0
        return (
            f"blind: no drift rows for {self.watch.blind_looks} looks (drift: off on the "
            "gateways, a metrics source without gateway_drift_* counters, or no traffic)"
        )

    def _restart(self) -> None:
        self._window = self.source.mark()
        self._look = 0
        self._history.clear()
        if self.metrics is not None:
            self.metrics.watch_window(self._window.at)

    def _resume(self) -> None:
        """The window a watch of this rollout saved (its look count, and its reference when
        this watch was given none or the same): a restarted watch goes on spending that
        window's alpha instead of starting a new one. The recent part starts again."""
        if self.store is None:
            return
        saved = self.store.watch_window(self.policy.model, self.rollout.rollout_id)
        if saved is None:
            return
        window = WatchWindow.from_json(saved)
        given = self.reference
        if given is not None and (window.reference is None or window.reference.at != given.at):
            return  # judged against another reference: a new window
        self._window, self._look = window.mark, window.look
        self.reference = window.reference
        if self.reference is None:
            self._note = window.note
        if self.metrics is not None:
            self.metrics.watch_window(window.mark.at)
        log.info("watch: resumed the window of %s (look %d)", time.ctime(window.mark.at),
                 window.look)  # fmt: skip

    def _breach(self, now: float, failed: list[GateResult], results: list[GateResult]) -> Look:
        reason = "drift: " + "; ".join(f"{r.gate} {r.reason}" for r in failed)
        numbers: dict[str, Any] = {"gates": [_finite(r.as_dict()) for r in results]}
        if self.watch.on_breach == "alert":
            self._notify(watch_alert(self.rollout, self.holder, now, reason, numbers))
            log.warning("watch alert: %s", reason)
            return Look(now, Outcome.ALERTED, reason, results)
        self._rollback = _Rollback(reason, failed[0].gate, numbers, self.rollout.share)
        self.rollout.phase, self.rollout.share = Phase.ROLLED_BACK, 0.0
        self.rollout.rollback_reason, self.rollout.ended_at = reason, now
        return self._confirm_share_0(now, results)

    def _confirm_share_0(self, now: float, results: list[GateResult]) -> Look:
        """Sends share 0 and checks every gateway serves it; a gateway that missed it gets it
        again at the next look (as the rollout controller's ``_confirm_final_share``)."""
        rollback = self._rollback
        assert rollback is not None
        try:
            self.fleet.set_share(0.0)
            self.fleet.verify(0.0)
        except FleetNotConfirmed as exc:
            outcome = f"share 0 not confirmed everywhere ({exc})"
            if not self._told:  # once; the history has every retry
                self._told = True
                self._event(EventType.ROLLBACK_UNCONFIRMED, now, f"{rollback.reason}; {outcome}",
                            rollback)  # fmt: skip
            log.error("watch rollback: %s; retrying every %.0f s", outcome,
                      self.watch.interval_seconds)  # fmt: skip
            return Look(now, Outcome.ROLLBACK_UNCONFIRMED,
                        f"{rollback.reason}; {outcome}; retrying", results)  # fmt: skip
        self._rollback = None
        self._event(EventType.ROLLED_BACK, now, rollback.reason, rollback)
        log.warning("watch rolled back: %s; share 0 on every gateway", rollback.reason)
        return Look(now, Outcome.ROLLED_BACK, f"{rollback.reason}; share 0 on every gateway",
                    results)  # fmt: skip

    def _give_up(self, look: Look) -> Look:
        assert self._rollback is not None
        reason = f"{self._rollback.reason}; gave up confirming share 0 (stopped): {look.reason}"
        self._event(EventType.ROLLBACK_UNCONFIRMED, look.at, reason, self._rollback)
        last = Look(look.at, Outcome.ROLLBACK_UNCONFIRMED, reason, look.results)
        try:
            self._save(last)
        except LeaseLost as exc:
            log.error("the watch's last record is not saved: %s", exc)
        return last

    def _event(self, kind: EventType, now: float, reason: str, rollback: _Rollback) -> None:
        self._notify(RolloutEvent(kind, now, self.holder, rollout_fields(self.rollout),
                                  rollback.before, 0.0, reason, cause=rollback.cause,
                                  numbers=rollback.numbers))  # fmt: skip

    def _save(self, look: Look) -> None:
        """The look in the rollout's history (and the state file, when the watch has one)."""
        action = RECORD_OF.get(look.outcome, Record.WATCH)
        reason = look.reason if action is not Record.WATCH else f"{look.outcome}: {look.reason}"
        self.rollout.history.append(DecisionRecord(
            at=look.at, step_index=self.rollout.step_index, share=self.rollout.share,
            action=action, reason=reason,
            gates=[r.as_dict() for r in look.results]))  # fmt: skip
        if self.store is not None:
            self.store.save(self.rollout, self.holder)
            if self._window is not None:
                window = WatchWindow(self._window, self._look, self.reference, self._note)
                self.store.save_watch_window(self.policy.model, self.rollout.rollout_id,
                                             window.to_json(), self.holder)  # fmt: skip


def watch_lease_seconds(policy: Policy) -> float:
    """The watch's lease: the rollout's, or 3 of the watch's (longer) intervals, so it never
    lapses between two looks."""
    assert policy.watch is not None
    return max(policy.lease_seconds, 3 * policy.watch.interval_seconds)


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


def registry_reference(registry_path: Path, student_id: str | None) -> tuple[Reference | None, str]:
    """``watch.reference: registry``: the profile of the training split stored in the student's
    registry entry (``distill-models profile``), or None and why not."""
    from models import registry

    if not student_id:
        return None, "watch.reference registry: the gateways name no registry student"
    try:
        entry = registry.lookup(registry_path, student_id)
    except LookupError as exc:
        return None, f"watch.reference registry: {exc}"
    profile = registry.profile(entry)
    if profile is None:
        return None, (f"watch.reference registry: {student_id} has no profile (`distill-models "
                      f"profile {student_id}` stores one)")  # fmt: skip
    try:
        return Reference.from_json(profile), ""
    except (KeyError, TypeError, ValueError) as exc:
        return None, f"watch.reference registry: {student_id}'s profile is unreadable ({exc})"


def served_student(fleet: Fleet) -> str | None:
    """The registry id the gateways that answer serve as the student (the first named)."""
    ids = [t.student_id for t in fleet.read_reachable().values() if t.student_id]
    return ids[0] if ids else None

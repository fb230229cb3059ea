"""Rollout events: what a transition tells the outside world, written once.

Every line the controller adds to a rollout's history (``Record``) maps to at most one event
type (``EVENT_OF_RECORD``), so a transition emits exactly one event and a decision that changes
nothing (a refused command) emits none. ``RolloutEvent.body()`` is the JSON payload every
receiver format builds on (``controller/notify/``).
"""

from __future__ import annotations

import datetime
import json
import math
import re
import uuid
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from controller.rollout_store import Record, RolloutState


class EventType(StrEnum):
    STARTED = "rollout_started"
    """A controller started a new rollout."""
    STEP_ADVANCED = "step_advanced"
    """On to the next step (by the analysis or an operator)."""
    HOLDING = "holding"
    """The step holds (inconclusive, a failed check, the fleet not confirming); rate-limited:
    repeated only every ``holding_every_intervals`` while the reason stays the same."""
    PAUSED = "paused"
    """An operator (or a drift with ``on_drift: pause``) paused the rollout."""
    RESUMED = "resumed"
    """An operator resumed it."""
    WAITING = "waiting_for_approval"
    """A webhook gate or a manual approval holds the next step; ``reason`` says which."""
    APPROVED = "approved"
    """An operator released a manual gate (``distill-canary approve``)."""
    GATE = "gate"
    """A webhook gate's answer that changed the rollout or is worth keeping (pre-rollout,
    rollback, post-rollout)."""
    PROMOTED = "promoted"
    """Ended: the student serves 100 %."""
    ROLLED_BACK = "rolled_back"
    """Ended: share 0; ``cause`` and the failing gates' numbers say why."""
    ROLLBACK_UNCONFIRMED = "rollback_unconfirmed"
    """Some gateway never confirmed share 0."""
    SHARE_DRIFT = "share_drift"
    """A gateway served a share the controller did not set; set again (or paused)."""
    LEASE_TAKEN = "lease_taken"
    """A controller took over an unfinished rollout."""
    LEASE_LOST = "lease_lost"
    """Another controller took this one's lease: this one stops acting."""
    STOPPED = "controller_stopped"
    """SIGTERM with ``on_sigterm: persist``: saved, to be resumed by the next ``run``."""
    WATCH_ALERT = "watch_alert"
    """After promotion, the watch saw the student degrade (issue 31's post-promotion watch)."""


class Severity(StrEnum):
    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        return list(Severity).index(self)


SEVERITY = {
    EventType.HOLDING: Severity.WARNING, EventType.PAUSED: Severity.WARNING,
    EventType.WAITING: Severity.WARNING, EventType.SHARE_DRIFT: Severity.WARNING,
    EventType.LEASE_LOST: Severity.WARNING, EventType.STOPPED: Severity.WARNING,
    EventType.GATE: Severity.WARNING, EventType.WATCH_ALERT: Severity.CRITICAL,
    EventType.ROLLED_BACK: Severity.CRITICAL, EventType.ROLLBACK_UNCONFIRMED: Severity.CRITICAL,
}  # fmt: skip
"""Every other event is ``info``."""

EVENT_OF_RECORD: dict[Record, EventType | None] = {
    Record.STARTED: EventType.STARTED,
    Record.RESUMED: EventType.LEASE_TAKEN,
    Record.SET: None,  # the share confirmed: step_advanced (or started) already said so
    Record.HOLD: EventType.HOLDING,
    Record.ADVANCE: EventType.STEP_ADVANCED,
    Record.PROMOTE: None,  # the decision; PROMOTED follows it in the same tick
    Record.PROMOTE_FULL: EventType.STEP_ADVANCED,
    Record.ROLLBACK: None,  # the decision; ROLLED_BACK follows it, with the cause
    Record.PAUSE: EventType.PAUSED,
    Record.RESUME: EventType.RESUMED,
    Record.DRIFT: EventType.SHARE_DRIFT,
    Record.REFUSED: None,  # nothing changed; the operator was told
    Record.STOPPED: EventType.STOPPED,
    Record.PROMOTED: EventType.PROMOTED,
    Record.ROLLED_BACK: EventType.ROLLED_BACK,
    Record.ROLLBACK_UNCONFIRMED: EventType.ROLLBACK_UNCONFIRMED,
    Record.WAITING: EventType.WAITING,
    Record.APPROVED: EventType.APPROVED,
    Record.GATE: EventType.GATE,
}


def finite(value: Any) -> Any:
    """``value`` with every NaN and ±inf, at any depth, as None: RFC 8259 JSON has no NaN or
    Infinity, and strict parsers (Go's encoding/json, ``JSON.parse``, jq) refuse the body."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [finite(item) for item in value]
    return value


def strict_json(value: Any) -> bytes:
    """The one encoding of every event body: compact, strict JSON (``finite`` first, and
    ``allow_nan=False`` so a value that slipped past it fails here rather than at a receiver)."""
    return json.dumps(finite(value), separators=(",", ":"), allow_nan=False).encode()


def iso_time(at: float) -> str:
    """RFC 3339 in UTC, as CloudEvents' ``time`` wants it."""
    return datetime.datetime.fromtimestamp(at, datetime.UTC).isoformat().replace("+00:00", "Z")


def rollout_fields(state: RolloutState) -> dict[str, Any]:
    """What identifies a rollout and where it stands (also a webhook gate's ``rollout``)."""
    student = state.student or {}
    return {
        "name": state.name,
        "rollout_id": state.rollout_id,
        "model": state.model,
        "student_id": student.get("id"),
        "student": student.get("name"),
        "phase": state.phase.value,
        "step": state.step_index + 1,
        "steps": list(state.steps),
        "share": state.share,
    }


@dataclass(frozen=True)
class RolloutEvent:
    type: EventType
    at: float
    controller: str
    rollout: dict[str, Any]  # rollout_fields() when the event happened
    share_before: float
    share_after: float
    reason: str
    cause: str | None = None  # rolled_back: abort, sigterm, a gate's name, ...
    numbers: dict[str, Any] = field(default_factory=dict)  # the decision's: gates, observations
    severity: Severity | None = None  # None: SEVERITY's for the type
    id: str = field(default_factory=lambda: uuid.uuid4().hex)

    @property
    def level(self) -> Severity:
        return self.severity or SEVERITY.get(self.type, Severity.INFO)

    def body(self) -> dict[str, Any]:
        """The JSON payload (``format: json``, and CloudEvents' ``data``)."""
        return {
            "id": self.id,
            "type": self.type.value,
            "severity": self.level.value,
            **self.rollout,
            "share_before": self.share_before,
            "share_after": self.share_after,
            "reason": self.reason,
            "cause": self.cause,
            "numbers": self.numbers,
            "time": iso_time(self.at),
            "controller": self.controller,
        }


def watch_alert(
    state: RolloutState, controller: str, at: float, reason: str, numbers: dict[str, Any],
    severity: Severity = Severity.CRITICAL,
) -> RolloutEvent:  # fmt: skip
    """The event the post-promotion watch (issue 31) sends when the promoted student degrades."""
    return RolloutEvent(EventType.WATCH_ALERT, at, controller, rollout_fields(state),
                        state.share, state.share, reason, numbers=numbers,
                        severity=severity)  # fmt: skip


_NUMBERS = re.compile(r"\d+(\.\d+)?")


def reason_key(reason: str) -> str:
    """A holding reason without its numbers ("baking 12 of 60 s" and "baking 13 of 60 s" are
    the same reason), so a rate limit sees when the reason really changes."""
    return _NUMBERS.sub("#", reason)

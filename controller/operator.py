"""What an operator's command does from its own process: reach the live controller through the
state file and wait for its answer, or, with no controller alive, abort directly on the gateways.

A command is only ever reported as done once the controller acknowledged it with what it did; a
command that nobody takes in time is closed as expired, so it can never fire later.
"""

from __future__ import annotations

import os
import pwd
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from controller import machine
from controller.actuator import Fleet, FleetNotConfirmed
from controller.rollout_store import (
    Command,
    CommandOutcome,
    DecisionRecord,
    Lease,
    Phase,
    Record,
    RolloutState,
    RolloutStore,
    StateError,
)
from controller.webhooks import Webhook, longest_tick

ACK_POLL_SECONDS = 0.1
DEFAULT_COMMAND_SECONDS = 5.0


class NoLiveController(StateError):
    """No controller holds the rollout's lease: nobody would act on a command."""


def operator_name() -> str:
    """``user@host``, the user from the process's real uid (not ``USER``/``LOGNAME``, which the
    caller sets at will). Only someone who can write the 0600 state file can send a command at
    all: the uid names who it was among those."""
    uid = os.getuid()
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:  # a uid with no passwd entry (containers)
        user = f"uid {uid}"
    return f"{user}@{socket.gethostname()}"


def live_lease(store: RolloutStore, model: str, now: float) -> Lease | None:
    lease = store.lease(model)
    return lease if lease is not None and lease.alive(now) else None


def describe_no_controller(store: RolloutStore, model: str, now: float) -> str:
    lease = store.lease(model)
    if lease is None:
        return f"no controller is running this rollout of model {model}"
    beat = now - lease.heartbeat_at
    return (f"no controller is running this rollout of model {model} (the last one, "
            f"{lease.holder}, sent its last heartbeat {beat:.0f} s ago)")  # fmt: skip


def command_seconds(rollout: RolloutState) -> float:
    """Two analysis intervals of the rollout's policy, at least 5 s, and longer than the longest
    tick its webhook calls can hold: a controller reads commands between ticks, so an `abort`
    sent while a tick waits on its hooks must outlive that wait."""
    interval = float(rollout.policy.get("interval_seconds", 0.0))
    hooks = [Webhook.model_validate(hook) for hook in rollout.policy.get("webhooks", [])]
    blocked, _ = longest_tick(hooks)
    return max(DEFAULT_COMMAND_SECONDS, 2 * interval, blocked + 2 * interval)


def send_and_wait(
    store: RolloutStore,
    rollout: RolloutState,
    command: Command,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
    argument: str = "",
) -> CommandOutcome:
    """Sends ``command`` (with its ``argument``: approve's gate) to the live controller and waits
    for its acknowledgement."""
    now = clock()
    if live_lease(store, rollout.model, now) is None:
        raise NoLiveController(describe_no_controller(store, rollout.model, now))
    ttl = command_seconds(rollout)
    command_id = store.send(rollout.rollout_id, command, operator_name(), ttl, now, argument)
    deadline = now + ttl
    while clock() < deadline:
        outcome = store.outcome(command_id)
        if outcome.taken:
            return outcome
        sleep(ACK_POLL_SECONDS)
    store.expire(command_id, clock())
    return store.outcome(command_id)


@dataclass(frozen=True)
class AbortOutcome:
    confirmed: bool
    note: str


def abort_now(
    store: RolloutStore, rollout: RolloutState, fleet: Fleet, clock: Callable[[], float]
) -> AbortOutcome:
    """With no live controller: take the lease, set share 0 on every gateway and verify it, and
    record the rollback in the rollout's history, as the controller would have."""
    holder = f"operator:{operator_name()}:{uuid.uuid4().hex[:8]}"
    store.acquire(holder, ttl=30.0, now=clock(), model=rollout.model)
    try:
        sender = f"{operator_name()} with --now, no live controller"
        moved = machine.transition(machine.Position.of(rollout),
                                   machine.OperatorCommand(Command.ABORT, sender))  # fmt: skip
        if moved.position.phase is not Phase.ROLLED_BACK:  # it ended meanwhile
            return AbortOutcome(False, moved.note)
        try:
            fleet.set_share(0.0)
            fleet.verify(0.0)
            outcome, confirmed = "share 0 on every gateway", True
        except FleetNotConfirmed as exc:
            outcome, confirmed = f"share 0 not confirmed everywhere: {exc}", False
        now = clock()
        moved.position.apply_to(rollout)
        rollout.rollback_reason = moved.note
        rollout.share = 0.0
        rollout.ended_at = now
        rollout.history.append(DecisionRecord(now, rollout.step_index, 0.0, Record.ROLLED_BACK,
                                              f"{moved.note}; {outcome}"))  # fmt: skip
        store.save(rollout, holder)
    finally:
        store.release(holder)
    return AbortOutcome(confirmed, f"{moved.note}; {outcome}")

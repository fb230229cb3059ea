"""The rollout's state machine, from a table: every phase against every event, with where it goes,
what it records and the effects it asks for."""

from __future__ import annotations

from dataclasses import dataclass, replace

import pytest

from controller.decisions import Action, Judgement
from controller.machine import (
    Analysed,
    Drifted,
    EnterStep,
    Event,
    FinishPromoted,
    OperatorCommand,
    Position,
    RollBack,
    ShareConfirmed,
    StopRequested,
    transition,
)
from controller.rollout_store import Command, Phase, Record

P, Z, DONE, BACK = Phase.PROGRESSING, Phase.PAUSED, Phase.PROMOTED, Phase.ROLLED_BACK
MID, LAST = 0, 2  # step indexes of a 3-step rollout


def at(phase: Phase, step: int = MID, confirmed: bool = True, **extra: object) -> Position:
    return Position(phase, step, last_step=LAST, confirmed=confirmed, **extra)  # type: ignore[arg-type]


def command(which: Command) -> OperatorCommand:
    return OperatorCommand(which, "sre@host")


def approve(gate: str) -> OperatorCommand:
    return OperatorCommand(Command.APPROVE, "sre@host", gate)


def judged(action: Action) -> Analysed:
    cause = "min_agreement" if action is Action.ROLLBACK else None
    return Analysed(Judgement(action, f"judged {action.value}", 0, cause))


CONFIRMED = ShareConfirmed(3, 0.25)
REASSERT, PAUSE_ON_DRIFT = Drifted("gw-1 reports 0", 0.25, False), Drifted("gw-1", 0.25, True)
STOP_AND_ROLL_BACK, STOP_AND_PERSIST = StopRequested(True), StopRequested(False)


@dataclass(frozen=True)
class Row:
    start: Position
    event: Event
    end: Position
    record: Record | None
    effects: tuple[type, ...] = ()
    acted: bool = True


def unconfirmed(position: Position) -> Position:
    return replace(position, confirmed=False)


ROWS = [
    # an operator's commands
    Row(at(P), command(Command.PAUSE), at(Z, paused_by="sre@host"), Record.PAUSE),
    Row(at(Z, paused_by="x"), command(Command.PAUSE), at(Z, paused_by="x"), Record.REFUSED,
        acted=False),
    Row(at(P), command(Command.RESUME), at(P), Record.REFUSED, acted=False),
    Row(at(Z, paused_by="x"), command(Command.RESUME), at(P), Record.RESUME),
    Row(at(Z, confirmed=False), command(Command.RESUME), at(P, confirmed=False), Record.RESUME),
    Row(at(P), command(Command.PROMOTE), at(P, 1, False), Record.ADVANCE, (EnterStep,)),
    Row(at(Z), command(Command.PROMOTE), at(P, 1, False), Record.ADVANCE, (EnterStep,)),
    Row(at(P, LAST), command(Command.PROMOTE), at(DONE, LAST), Record.PROMOTE, (FinishPromoted,)),
    Row(at(P, confirmed=False), command(Command.PROMOTE), at(P, confirmed=False), Record.REFUSED,
        acted=False),
    Row(at(P, confirmed=False), command(Command.PROMOTE_FULL),
        at(P, LAST, False, promote_when_confirmed=True), Record.PROMOTE_FULL, (EnterStep,)),
    Row(at(Z), command(Command.PROMOTE_FULL), at(P, LAST, False, promote_when_confirmed=True),
        Record.PROMOTE_FULL, (EnterStep,)),
    Row(at(P, LAST), command(Command.PROMOTE_FULL), at(DONE, LAST), Record.PROMOTE_FULL,
        (FinishPromoted,)),
    Row(at(P), command(Command.ABORT), at(BACK), Record.ROLLBACK, (RollBack,)),
    Row(at(Z, confirmed=False, paused_by="x"), command(Command.ABORT), at(BACK, confirmed=False),
        Record.ROLLBACK, (RollBack,)),
    # an analysis' judgement
    Row(at(P), judged(Action.HOLD), at(P), Record.HOLD),
    Row(at(Z), judged(Action.HOLD), at(Z), Record.HOLD),
    Row(at(P), judged(Action.ADVANCE), at(P, 1, False), Record.ADVANCE, (EnterStep,)),
    Row(at(Z), judged(Action.ADVANCE), at(Z), Record.HOLD),  # a pause never advances
    Row(at(P, LAST), judged(Action.PROMOTE), at(DONE, LAST), Record.PROMOTE, (FinishPromoted,)),
    Row(at(Z, LAST), judged(Action.PROMOTE), at(Z, LAST), Record.HOLD),
    Row(at(P), judged(Action.ROLLBACK), at(BACK), Record.ROLLBACK, (RollBack,)),
    Row(at(Z, paused_by="x"), judged(Action.ROLLBACK), at(BACK), Record.ROLLBACK, (RollBack,)),
    # every gateway confirmed the step's share
    Row(at(P, confirmed=False), CONFIRMED, at(P), Record.SET),
    Row(at(Z, confirmed=False), CONFIRMED, at(Z), Record.SET),
    Row(at(P, LAST, False, promote_when_confirmed=True), CONFIRMED, at(DONE, LAST), Record.SET,
        (FinishPromoted,)),
    # a gateway drifted from the share
    Row(at(P), REASSERT, at(P, confirmed=False), Record.DRIFT, (EnterStep,)),
    Row(at(Z), REASSERT, at(Z, confirmed=False), Record.DRIFT, (EnterStep,)),
    Row(at(P), PAUSE_ON_DRIFT, at(Z, confirmed=False, paused_by="share drift"), Record.DRIFT),
    Row(at(Z, paused_by="x"), PAUSE_ON_DRIFT, at(Z, confirmed=False, paused_by="share drift"),
        Record.DRIFT),
    # approve: releases a manual gate the next step waits for; refused otherwise
    Row(at(P), command(Command.APPROVE), at(P), Record.REFUSED, acted=False),
    Row(at(P, awaiting=("confirm-promotion",)), approve("confirm-promotion"),
        at(P, awaiting=("confirm-promotion",), approved=("confirm-promotion",)), Record.APPROVED),
    Row(at(Z, paused_by="x", awaiting=("confirm-promotion",)), approve("confirm-rollout"),
        at(Z, paused_by="x", awaiting=("confirm-promotion",)), Record.REFUSED, acted=False),
    # SIGTERM
    Row(at(P), STOP_AND_ROLL_BACK, at(BACK), None, (RollBack,)),
    Row(at(Z, paused_by="x"), STOP_AND_ROLL_BACK, at(BACK), None, (RollBack,)),
    Row(at(P), STOP_AND_PERSIST, at(P), Record.STOPPED),
    Row(at(Z), STOP_AND_PERSIST, at(Z), Record.STOPPED),
]  # fmt: skip

EVERY_EVENT: list[Event] = [
    *(command(c) for c in Command), *(judged(a) for a in Action), CONFIRMED, REASSERT,
    PAUSE_ON_DRIFT, STOP_AND_ROLL_BACK, STOP_AND_PERSIST,
]  # fmt: skip
ROWS += [
    Row(at(phase), event, at(phase), Record.REFUSED, acted=False)
    for phase in (DONE, BACK)
    for event in EVERY_EVENT
]


def _kind(event: Event) -> object:
    if isinstance(event, OperatorCommand):
        return event.command
    if isinstance(event, Analysed):
        return event.judgement.action
    return event


def test_the_table_covers_every_phase_and_every_event() -> None:
    covered = {(row.start.phase, _kind(row.event)) for row in ROWS}
    assert covered == {(phase, _kind(event)) for phase in Phase for event in EVERY_EVENT}


@pytest.mark.parametrize("row", ROWS, ids=[f"{r.start.phase}-{_kind(r.event)}" for r in ROWS])
def test_transition(row: Row) -> None:
    moved = transition(row.start, row.event)
    assert moved.position == row.end
    assert moved.record is row.record
    assert tuple(type(effect) for effect in moved.effects) == row.effects
    assert moved.acted is row.acted
    assert moved.note  # always says what happened, or why nothing did


def test_refusals_say_why() -> None:
    refused = transition(at(P, confirmed=False), command(Command.PROMOTE))
    assert refused.note == ("promote refused: step 1's share is not yet confirmed on every gateway "
                            "(promote --full or abort still work)")  # fmt: skip
    finished = transition(at(DONE), command(Command.ABORT))
    assert finished.note == "abort ignored: the rollout is Promoted"
    assert transition(at(Z, paused_by="sre@b"), command(Command.PAUSE)).note == (
        "pause ignored: already paused by sre@b"
    )


def test_a_rollback_carries_its_reason_and_cause() -> None:
    (aborted,) = transition(at(P), command(Command.ABORT)).effects
    assert aborted == RollBack("aborted by an operator (sre@host)", "abort")
    (failed,) = transition(at(P), judged(Action.ROLLBACK)).effects
    assert failed == RollBack("judged rollback", "min_agreement")
    (stopped,) = transition(at(P), STOP_AND_ROLL_BACK).effects
    assert stopped == RollBack("stopped by SIGTERM (on_sigterm: rollback)", "sigterm")

"""The rollout's state machine: every change of phase or step, in one pure function.

``transition(position, event)`` says where the rollout goes, what to record, and which effects
(set a step's share, roll back, finish promoted) the caller must carry out. ``rollout.py`` only
executes them and feeds what happened back in as events; ``tests/controller/test_machine.py``
checks every phase against every event from a table.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from controller.decisions import Action, Judgement
from controller.state import Command, Phase, Record, RolloutState


@dataclass(frozen=True)
class Position:
    """What the machine decides on: a view of ``RolloutState``."""

    phase: Phase
    step_index: int
    last_step: int
    confirmed: bool  # every gateway confirmed this step's share
    paused_by: str | None = None
    promote_when_confirmed: bool = False  # promote --full, waiting for 100 % to be confirmed
    awaiting: tuple[str, ...] = ()  # manual gates the next step waits for (approval.py)
    approved: tuple[str, ...] = ()  # those an operator released

    @classmethod
    def of(cls, state: RolloutState) -> Position:
        return cls(
            phase=state.phase,
            step_index=state.step_index,
            last_step=len(state.steps) - 1,
            confirmed=state.step_started_at is not None,
            paused_by=state.paused_by,
            promote_when_confirmed=state.promote_when_confirmed,
            awaiting=tuple((state.waiting or {}).get("manual", ())),
            approved=tuple(state.approved),
        )

    def apply_to(self, state: RolloutState) -> None:
        if state.step_index != self.step_index:
            state.step_entered_at = None  # another step: its deadline starts when it is confirmed
        state.phase, state.step_index = self.phase, self.step_index
        state.paused_by = self.paused_by
        state.promote_when_confirmed = self.promote_when_confirmed
        state.approved = list(self.approved)
        if not self.confirmed:
            state.step_started_at = None


# -- events: what happened ----------------------------------------------------------------------


@dataclass(frozen=True)
class OperatorCommand:
    command: Command
    sender: str
    argument: str = ""  # approve: the gate


@dataclass(frozen=True)
class Analysed:
    judgement: Judgement


@dataclass(frozen=True)
class ShareConfirmed:
    gateways: int
    share: float


@dataclass(frozen=True)
class Drifted:
    what: str  # which gateways report what
    intended: float
    pause: bool  # the policy's on_drift


@dataclass(frozen=True)
class HeldTooLong:
    """The step's share was not confirmed by every gateway (or the fleet could not be read)
    within ``max_step_seconds``; ``what`` names the gateways and why."""

    what: str
    seconds: float


@dataclass(frozen=True)
class StopRequested:
    roll_back: bool  # on_sigterm: rollback; else persist


Event = OperatorCommand | Analysed | ShareConfirmed | Drifted | HeldTooLong | StopRequested


# -- effects: what the caller must do ------------------------------------------------------------


@dataclass(frozen=True)
class EnterStep:
    """Set the share of ``position.step_index`` on every gateway and verify it; on success feed
    ``ShareConfirmed`` back in."""


@dataclass(frozen=True)
class RollBack:
    """Share 0 on every gateway; the rollout has ended rolled back."""

    reason: str
    cause: str  # a short label for metrics: a gate's name, timeout, abort, sigterm


@dataclass(frozen=True)
class FinishPromoted:
    """The student serves 100 % everywhere; the rollout has ended promoted."""


Effect = EnterStep | RollBack | FinishPromoted


@dataclass(frozen=True)
class Transition:
    position: Position
    record: Record | None  # what to add to the history, with ``note``
    note: str
    effects: tuple[Effect, ...] = ()
    acted: bool = True  # False: nothing changed, and ``note`` says why (an operator is told)


def transition(position: Position, event: Event) -> Transition:
    if position.phase.terminal:
        what = event.command.value if isinstance(event, OperatorCommand) else "event"
        note = f"{what} ignored: the rollout is {position.phase.value}"
        return Transition(position, Record.REFUSED, note, acted=False)
    if isinstance(event, OperatorCommand):
        return _command(position, event)
    if isinstance(event, Analysed):
        return _analysed(position, event.judgement)
    if isinstance(event, ShareConfirmed):
        return _confirmed(position, event)
    if isinstance(event, Drifted):
        return _drifted(position, event)
    if isinstance(event, HeldTooLong):
        return _held_too_long(position, event)
    return _stop(position, event)


def _command(position: Position, event: OperatorCommand) -> Transition:
    command, by = event.command, f"({event.sender})"
    progressing = replace(position, phase=Phase.PROGRESSING, paused_by=None)
    if command is Command.PAUSE:
        if position.phase is Phase.PAUSED:
            return _refused(position, f"pause ignored: already paused by {position.paused_by}")
        paused = replace(position, phase=Phase.PAUSED, paused_by=event.sender)
        return Transition(paused, Record.PAUSE, f"paused by an operator {by}")
    if command is Command.RESUME:
        if position.phase is not Phase.PAUSED:
            return _refused(position, "resume ignored: the rollout is not paused")
        return Transition(progressing, Record.RESUME, f"resumed by an operator {by}")
    if command is Command.PROMOTE:
        if not position.confirmed:
            return _refused(position, f"promote refused: step {position.step_index + 1}'s share "
                            "is not yet confirmed on every gateway (promote --full or abort "
                            "still work)")  # fmt: skip
        note = f"promoted by an operator {by}"
        if position.step_index == position.last_step:
            done = replace(progressing, phase=Phase.PROMOTED)
            return Transition(done, Record.PROMOTE, note, (FinishPromoted(),))
        advanced = replace(progressing, step_index=position.step_index + 1, confirmed=False)
        return Transition(advanced, Record.ADVANCE, note, (EnterStep(),))
    if command is Command.PROMOTE_FULL:
        note = f"fully promoted by an operator {by}"
        if position.confirmed and position.step_index == position.last_step:
            done = replace(progressing, phase=Phase.PROMOTED)
            return Transition(done, Record.PROMOTE_FULL, note, (FinishPromoted(),))
        last = replace(progressing, step_index=position.last_step, confirmed=False,
                       promote_when_confirmed=True)  # fmt: skip
        return Transition(last, Record.PROMOTE_FULL, note, (EnterStep(),))
    if command is Command.APPROVE:
        return _approve(position, event.argument, by)
    reason = f"aborted by an operator {by}"
    ended = replace(position, phase=Phase.ROLLED_BACK, paused_by=None)
    return Transition(ended, Record.ROLLBACK, reason, (RollBack(reason, "abort"),))


def _approve(position: Position, gate: str, by: str) -> Transition:
    """Releases one manual gate of the wait in hand; the next analysis that would advance
    finds it open. An approval is never kept for a wait that has not begun."""
    if gate not in position.awaiting or gate in position.approved:
        left = [g for g in position.awaiting if g not in position.approved]
        waits = ", ".join(left) if left else "no manual approval"
        return _refused(position, f"approve {gate} ignored: the rollout waits for {waits}")
    approved = replace(position, approved=(*position.approved, gate))
    return Transition(approved, Record.APPROVED, f"{gate} approved by an operator {by}")


def _refused(position: Position, note: str) -> Transition:
    return Transition(position, Record.REFUSED, note, acted=False)


def _analysed(position: Position, judgement: Judgement) -> Transition:
    action, reason = judgement.action, judgement.reason
    if action is Action.HOLD:
        return Transition(position, Record.HOLD, reason)
    if action is Action.ROLLBACK:
        ended = replace(position, phase=Phase.ROLLED_BACK, paused_by=None)
        cause = judgement.rollback_cause or "unknown"
        return Transition(ended, Record.ROLLBACK, reason, (RollBack(reason, cause),))
    if not position.confirmed or position.phase is Phase.PAUSED:
        # judge() never advances a paused step, and an unconfirmed step has no analysis
        return Transition(position, Record.HOLD, reason)
    if action is Action.PROMOTE and position.step_index == position.last_step:
        done = replace(position, phase=Phase.PROMOTED)
        return Transition(done, Record.PROMOTE, reason, (FinishPromoted(),))
    advanced = replace(position, step_index=position.step_index + 1, confirmed=False)
    return Transition(advanced, Record.ADVANCE, reason, (EnterStep(),))


def _confirmed(position: Position, event: ShareConfirmed) -> Transition:
    confirmed = replace(position, confirmed=True)
    note = f"every gateway ({event.gateways}) confirmed share {event.share:.0%}"
    if position.promote_when_confirmed and position.step_index == position.last_step:
        done = replace(confirmed, phase=Phase.PROMOTED, promote_when_confirmed=False)
        return Transition(done, Record.SET, note, (FinishPromoted(),))
    return Transition(confirmed, Record.SET, note)


def _drifted(position: Position, event: Drifted) -> Transition:
    unconfirmed = replace(position, confirmed=False)
    if event.pause:
        paused = replace(unconfirmed, phase=Phase.PAUSED, paused_by="share drift")
        note = (f"{event.what}; paused (on_drift: pause): resume sets {event.intended:.0%} "
                "again and restarts the step's analysis")  # fmt: skip
        return Transition(paused, Record.DRIFT, note)
    note = f"{event.what}; setting {event.intended:.0%} again and restarting the step's analysis"
    return Transition(unconfirmed, Record.DRIFT, note, (EnterStep(),))


def _held_too_long(position: Position, event: HeldTooLong) -> Transition:
    if position.phase is Phase.PAUSED:  # an operator holds it: no deadline runs
        return Transition(position, Record.HOLD, event.what)
    reason = (f"held {event.seconds:.0f} s (max_step_seconds) without every gateway confirming "
              f"the share: {event.what}")  # fmt: skip
    ended = replace(position, phase=Phase.ROLLED_BACK, paused_by=None)
    return Transition(ended, Record.ROLLBACK, reason, (RollBack(reason, "share_unconfirmed"),))


def _stop(position: Position, event: StopRequested) -> Transition:
    if event.roll_back:
        reason = "stopped by SIGTERM (on_sigterm: rollback)"
        ended = replace(position, phase=Phase.ROLLED_BACK, paused_by=None)
        return Transition(ended, None, reason, (RollBack(reason, "sigterm"),))
    note = ("SIGTERM: state saved and lease released; run again to resume at this step (the "
            "gateways keep their share meanwhile)")  # fmt: skip
    return Transition(position, Record.STOPPED, note)

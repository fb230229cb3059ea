"""The rollout's state machine: every change of phase or step, in one pure function.

``transition(position, event)`` says where the rollout goes, what to record, and which effects
(set a step's share, roll back, finish promoted) the caller must carry out. ``rollout.py`` only
executes them and feeds what happened back in as events; ``tests/controller/test_machine.py``
checks every phase against every event from a table.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from controller.approval import entry_gates
from controller.decisions import Action, Judgement
from controller.rollout_store import Command, Phase, Record, RolloutState

SKIP_GATES = "skip-gates"
"""promote's argument (``--skip-gates``): move past the waiting gates of the move."""


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
    steps: tuple[float, ...] = ()  # the policy's shares in %, to know which gates a move crosses
    guards: tuple[tuple[str, str], ...] = ()  # (waiting gate type, "manual approval"/"webhook x")
    started: bool = True  # the first step's gates were passed (the rollout has its marks)

    @classmethod
    def of(cls, state: RolloutState) -> Position:
        policy = state.policy
        guards = [(str(gate), "manual approval") for gate in policy.get("manual_approval", [])]
        guards += [(str(hook["type"]), f"webhook {hook['name']}")
                   for hook in policy.get("webhooks", [])]  # fmt: skip
        return cls(
            phase=state.phase,
            step_index=state.step_index,
            last_step=len(state.steps) - 1,
            confirmed=state.step_started_at is not None,
            paused_by=state.paused_by,
            promote_when_confirmed=state.promote_when_confirmed,
            awaiting=tuple((state.waiting or {}).get("manual", ())),
            approved=tuple(state.approved),
            steps=tuple(state.steps),
            guards=tuple(guards),
            started=state.rollout_mark is not None,
        )

    def apply_to(self, state: RolloutState) -> None:
        if state.step_index != self.step_index:
            state.step_entered_at = None  # another step: its deadline starts when it is confirmed
        if state.step_index != self.step_index or self.phase.terminal:
            state.waiting = None  # a wait (and its approvals) is for one move, now made or moot
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
    argument: str = ""  # approve: the gate; promote: SKIP_GATES or nothing


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
    if command in (Command.PROMOTE, Command.PROMOTE_FULL):
        return _promote(position, progressing, event)
    if command is Command.APPROVE:
        return _approve(position, event.argument, by)
    reason = f"aborted by an operator {by}"
    ended = replace(position, phase=Phase.ROLLED_BACK, paused_by=None)
    return Transition(ended, Record.ROLLBACK, reason, (RollBack(reason, "abort"),))


def _crossed(position: Position, to_index: int) -> list[str]:
    """The waiting gates (manual or webhook) a move from here to ``to_index`` would pass, but
    for manual ones an operator already released: "confirm-promotion (manual approval)"."""
    if not position.guards:
        return []
    steps, crossed = list(position.steps), []
    first = position.step_index if not position.started else position.step_index + 1
    for index in range(first, to_index + 1):
        before = steps[index - 1] / 100.0 if index > first or position.started else 0.0
        for gate in entry_gates(index, steps, not position.started and index == first, before):
            crossed += [f"{gate} ({what})" for kind, what in position.guards
                        if kind == gate and not (what == "manual approval"
                                                 and gate in position.approved)]  # fmt: skip
    return list(dict.fromkeys(crossed))


def _promote(position: Position, progressing: Position, event: OperatorCommand) -> Transition:
    """promote (the next step) and promote --full (100 %): an operator's move never passes a
    waiting gate silently: refused while one guards it, unless sent with ``--skip-gates``, and
    then the history and the event name the gates it skipped."""
    full, by = event.command is Command.PROMOTE_FULL, f"({event.sender})"
    what = "promote --full" if full else "promote"
    if not full and not position.confirmed:
        return _refused(position, f"promote refused: step {position.step_index + 1}'s share "
                        "is not yet confirmed on every gateway (promote --full or abort "
                        "still work)")  # fmt: skip
    at_end = position.confirmed and position.step_index == position.last_step
    to_index = position.last_step if full else position.step_index + 1
    crossed = [] if at_end else _crossed(position, to_index)
    if crossed and event.argument != SKIP_GATES:
        return _refused(position, f"{what} refused: it would pass {', '.join(crossed)}; approve "
                        f"or wait for them, or send {what} --skip-gates")  # fmt: skip
    note = f"{'fully promoted' if full else 'promoted'} by an operator {by}"
    if crossed:
        note += f", skipping gates: {', '.join(crossed)} (--skip-gates)"
    # the move is made: the wait it replaces and that wait's approvals are gone
    moved = replace(progressing, approved=(), awaiting=())
    record = Record.PROMOTE_FULL if full else Record.PROMOTE
    if at_end:
        return Transition(replace(moved, phase=Phase.PROMOTED), record, note, (FinishPromoted(),))
    if full:
        last = replace(moved, step_index=position.last_step, confirmed=False,
                       promote_when_confirmed=True)  # fmt: skip
        return Transition(last, Record.PROMOTE_FULL, note, (EnterStep(),))
    advanced = replace(moved, step_index=to_index, confirmed=False)
    return Transition(advanced, Record.ADVANCE, note, (EnterStep(),))


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

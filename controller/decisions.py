"""The controller's decisions as pure functions: gate results and time in, an action out.

Kept free of I/O so every transition can be tested from a table.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from controller.analysis import GateResult, Verdict
from controller.policy import Policy
from controller.state import Command, Phase


class Action(StrEnum):
    HOLD = "hold"
    """Stay at this step and analyse again."""
    ADVANCE = "advance"
    """Go to the next step."""
    PROMOTE = "promote"
    """The last step passed: the student keeps 100 %, the rollout is done."""
    PROMOTE_FULL = "promote-full"
    """An operator skipped every remaining step: straight to 100 %, done."""
    ROLLBACK = "rollback"
    """Share back to 0 on every gateway; the rollout is done."""


@dataclass(frozen=True)
class Judgement:
    action: Action
    reason: str
    consecutive_failures: int
    rollback_cause: str | None = None  # a short label for metrics: a gate name, timeout, abort


def judge(
    results: list[GateResult],
    elapsed: float,
    consecutive_failures: int,
    policy: Policy,
    is_last_step: bool,
    paused: bool,
) -> Judgement:
    """What one analysis means for the rollout."""
    failed = [r for r in results if r.verdict is Verdict.FAIL]
    if failed:
        failures = consecutive_failures + 1
        what = ", ".join(r.gate for r in failed)
        if failures >= policy.failure_limit:
            reason = f"{what} failed {failures} analyses in a row"
            return Judgement(Action.ROLLBACK, reason, failures, rollback_cause=failed[0].gate)
        reason = f"{what} failed ({failures} of {policy.failure_limit} before rollback)"
        return Judgement(Action.HOLD, reason, failures)

    pending = [r for r in results if r.verdict is Verdict.INCONCLUSIVE]
    if pending:
        by_reason: dict[str, list[str]] = {}
        for result in pending:
            by_reason.setdefault(result.reason, []).append(result.gate)
        what = "; ".join(f"{', '.join(gates)} ({reason})" for reason, gates in by_reason.items())
        if elapsed > policy.max_step_seconds and not paused:
            reason = (f"still inconclusive after {elapsed:.0f} s "
                      f"(max_step_seconds {policy.max_step_seconds:.0f}): {what}")  # fmt: skip
            return Judgement(Action.ROLLBACK, reason, 0, rollback_cause="inconclusive_timeout")
        return Judgement(Action.HOLD, f"inconclusive: {what}", 0)

    if elapsed < policy.bake_seconds:
        reason = f"gates pass; baking {elapsed:.0f} of {policy.bake_seconds:.0f} s"
        return Judgement(Action.HOLD, reason, 0)
    if paused:
        return Judgement(Action.HOLD, "gates pass; paused by an operator", 0)
    action = Action.PROMOTE if is_last_step else Action.ADVANCE
    return Judgement(action, "every gate passes", 0)


@dataclass(frozen=True)
class CommandEffect:
    phase: Phase
    action: Action | None  # what to do now, if anything
    note: str


def apply_command(phase: Phase, command: Command, is_last_step: bool) -> CommandEffect:
    """An operator's command, in any phase. Finished rollouts ignore every command."""
    if phase.terminal:
        return CommandEffect(phase, None, f"{command.value} ignored: the rollout is {phase.value}")
    if command is Command.PAUSE:
        return CommandEffect(Phase.PAUSED, None, "paused by an operator")
    if command is Command.RESUME:
        if phase is not Phase.PAUSED:
            return CommandEffect(phase, None, "resume ignored: the rollout is not paused")
        return CommandEffect(Phase.PROGRESSING, None, "resumed by an operator")
    if command is Command.PROMOTE:
        action = Action.PROMOTE if is_last_step else Action.ADVANCE
        return CommandEffect(Phase.PROGRESSING, action, "promoted by an operator")
    if command is Command.PROMOTE_FULL:
        return CommandEffect(
            Phase.PROGRESSING, Action.PROMOTE_FULL, "fully promoted by an operator"
        )
    return CommandEffect(phase, Action.ROLLBACK, "aborted by an operator")

"""What one analysis means for a step: gate results and time in, a judgement out.

Pure, so it is tested from a table; ``machine.transition`` turns a judgement into a move.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from controller.analysis import GateResult, Verdict
from controller.policy import Policy


class Action(StrEnum):
    HOLD = "hold"
    """Stay at this step and analyse again."""
    ADVANCE = "advance"
    """Go to the next step."""
    PROMOTE = "promote"
    """The last step passed: the student keeps 100 %, the rollout is done."""
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
    """What one analysis means for the rollout. Dry-run gates are left out: they never decide."""
    results = [r for r in results if not r.dry_run]
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

    if elapsed < policy.pass_after_seconds:
        if elapsed < policy.bake_seconds:
            reason = f"gates pass; baking {elapsed:.0f} of {policy.bake_seconds:.0f} s"
        else:
            reason = (f"gates pass; waiting for the bake's labels ({elapsed:.0f} of "
                      f"{policy.pass_after_seconds:.0f} s, label_delay_seconds "
                      f"{policy.label_delay_seconds:.0f})")  # fmt: skip
        return Judgement(Action.HOLD, reason, 0)
    if paused:
        return Judgement(Action.HOLD, "gates pass; paused by an operator", 0)
    action = Action.PROMOTE if is_last_step else Action.ADVANCE
    return Judgement(action, "every gate passes", 0)

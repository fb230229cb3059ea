"""Which gates a move waits for, and whether their answers and approvals let it go: pure, so
every combination is tested from a table (``tests/controller/test_approval.py``).

A gate that waits (``confirm-*``) is just another reason to hold, with the reason in status;
``pre-rollout`` answering non-2xx rolls back; a gate nobody answered holds and says so.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from controller.webhooks import Answer, GateAnswer, GateType


def entry_gates(
    to_index: int, steps: list[float], starting: bool, share_before: float
) -> list[GateType]:
    """The gates before entering step ``to_index``: at the rollout's start confirm-rollout and
    pre-rollout; confirm-traffic-increase when the share rises; confirm-promotion before the
    last step (the student takes all traffic)."""
    gates = [GateType.CONFIRM_ROLLOUT, GateType.PRE_ROLLOUT] if starting else []
    if steps[to_index] / 100.0 > share_before:
        gates.append(GateType.CONFIRM_TRAFFIC_INCREASE)
    if to_index == len(steps) - 1:
        gates.append(GateType.CONFIRM_PROMOTION)
    return gates


@dataclass(frozen=True)
class GateVerdict:
    abort: str | None = None  # pre-rollout refused: roll back, and why
    waits: tuple[str, ...] = ()  # what still holds the move, one line each
    manual: tuple[str, ...] = ()  # manual gates of this move (approve releases them)
    unreachable: tuple[str, ...] = field(default=())  # gates nobody answered

    @property
    def open(self) -> bool:
        return self.abort is None and not self.waits

    @property
    def reason(self) -> str:
        return "waiting for " + "; ".join(self.waits)


def decide(
    gates: Iterable[GateType],
    manual: Iterable[str],
    approved: Iterable[str],
    answers: list[GateAnswer],
) -> GateVerdict:
    """``answers``: the webhooks of ``gates``, called; ``manual``: the policy's
    ``manual_approval``; ``approved``: the gates an operator released for this move."""
    wanted, released = list(gates), set(approved)
    mine = tuple(gate.value for gate in wanted if gate.value in set(manual))
    waits = [f"{gate}: manual approval (distill-canary approve --gate {gate})"
             for gate in mine if gate not in released]  # fmt: skip
    unreachable = []
    for answer in answers:
        hook = answer.hook
        if answer.open:
            continue
        if hook.type is GateType.PRE_ROLLOUT and answer.answer is Answer.CLOSED:
            return GateVerdict(abort=f"pre-rollout gate {hook.name} {answer.detail}", manual=mine)
        waits.append(f"{hook.type}: webhook {hook.name} {answer.detail}")
        if answer.answer is Answer.UNREACHABLE:
            unreachable.append(hook.name)
    return GateVerdict(None, tuple(waits), mine, tuple(unreachable))

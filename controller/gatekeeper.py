"""The webhook gates' I/O for the controller: which hooks to call at each point of a rollout,
calling them, and what their answers mean (``approval.decide``). The controller calls it at
the points Flagger does: before a step, each interval, after the end."""

from __future__ import annotations

import httpx

from controller import approval
from controller.analysis import GateResult, Verdict
from controller.events import rollout_fields
from controller.rollout_store import RolloutState
from controller.webhooks import Answer, GateAnswer, GateType, Webhook, call_all

WEBHOOK_GATE_PREFIX = "webhook:"
"""A ``rollout`` webhook's check in an analysis is the gate ``webhook:<name>``."""


class Gatekeeper:
    def __init__(
        self,
        hooks: list[Webhook],
        manual: list[str],
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.hooks = hooks
        self.manual = manual
        self.transport = transport

    def _call(self, types: list[GateType], state: RolloutState) -> list[GateAnswer]:
        """The hooks of ``types``, concurrently: the slowest one's timeout bounds the batch
        (``Policy`` keeps a tick's batches together under its lease)."""
        hooks = [hook for hook in self.hooks if hook.type in types]
        return call_all(hooks, rollout_fields(state), self.transport) if hooks else []

    def before_step(
        self, state: RolloutState, to_index: int, starting: bool
    ) -> approval.GateVerdict:
        """May the rollout enter step ``to_index``? Only the gates of this move are called."""
        gates = approval.entry_gates(to_index, state.steps, starting, state.share)
        if not gates:
            return approval.GateVerdict()
        return approval.decide(gates, self.manual, state.approved, self._call(gates, state))

    def rollback_requested(self, state: RolloutState) -> tuple[GateAnswer | None, list[str]]:
        """The rollback hooks, polled: the first that answered 2xx (roll back now), and the
        names of those nobody answered (they hold the rollout, as any unreachable gate)."""
        answers = self._call([GateType.ROLLBACK], state)
        opened = next((a for a in answers if a.open), None)
        return opened, [a.hook.name for a in answers if a.answer is Answer.UNREACHABLE]

    def rollout_checks(self, state: RolloutState) -> list[GateResult]:
        """The rollout hooks as analysis checks: 2xx passes, another status fails, no answer is
        inconclusive (holds, and a step inconclusive past max_step_seconds rolls back)."""
        results = []
        for answer in self._call([GateType.ROLLOUT], state):
            verdict = {Answer.OPEN: Verdict.PASS, Answer.CLOSED: Verdict.FAIL,
                       Answer.UNREACHABLE: Verdict.INCONCLUSIVE}[answer.answer]  # fmt: skip
            value = 1.0 if answer.open else 0.0
            results.append(
                GateResult(
                    WEBHOOK_GATE_PREFIX + answer.hook.name,
                    verdict,
                    value,
                    value,
                    value,
                    1.0,
                    1.0,
                    f"webhook {answer.detail}",
                )
            )
        return results  # fmt: skip

    def after_end(self, state: RolloutState) -> list[GateAnswer]:
        return self._call([GateType.POST_ROLLOUT], state)

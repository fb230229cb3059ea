"""Webhook gates of Flagger's types: the policy's ``webhooks:``, and one call to one of them.

A gate answers with its HTTP status: 2xx opens it, anything else keeps it closed, and no answer
(refused, timed out, not HTTP) leaves it unreachable, which holds the rollout like a closed gate
and says so (never advances on a gate nobody answered). The payload follows Flagger's
``CanaryWebhookPayload`` (name, namespace, phase, metadata) with the rollout's own fields.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import httpx
from pydantic import Field

from controller.events import strict_json
from controller.http_deadline import Post, post_all
from gateway.validation import StrictModel


class GateType(StrEnum):
    CONFIRM_ROLLOUT = "confirm-rollout"
    """Before the first step: the rollout waits (no traffic moves) until it answers 2xx."""
    PRE_ROLLOUT = "pre-rollout"
    """Before the first step: a non-2xx answer rolls the rollout back."""
    CONFIRM_TRAFFIC_INCREASE = "confirm-traffic-increase"
    """Before each step that raises the share: waits until 2xx."""
    CONFIRM_PROMOTION = "confirm-promotion"
    """Before the last step (the student takes all traffic): waits until 2xx; the analysis and
    the rollback checks go on meanwhile."""
    ROLLOUT = "rollout"
    """Each analysis interval: a non-2xx answer counts as a failed check."""
    POST_ROLLOUT = "post-rollout"
    """Once after promotion or rollback; its answer is recorded, nothing waits on it."""
    ROLLBACK = "rollback"
    """Polled each interval: a 2xx answer rolls the rollout back at once."""


WAITING_GATES = (GateType.CONFIRM_ROLLOUT, GateType.CONFIRM_TRAFFIC_INCREASE,
                 GateType.CONFIRM_PROMOTION)  # fmt: skip
"""The gates a rollout waits at: the ones ``manual_approval`` may name."""


class Webhook(StrictModel):
    name: str = Field(min_length=1)
    """Names the gate in status, the history and the payload."""
    type: GateType
    """When it is called and what its answer does (Flagger's types)."""
    url: str = Field(pattern=r"^https?://")
    """Where it is POSTed to."""
    timeout_seconds: float = Field(default=5.0, gt=0, le=60)
    """How long one call may take in all (connecting, sending, the whole answer); no complete
    answer in time leaves the gate unreachable (it holds)."""
    metadata: dict[str, str] = Field(default_factory=dict)
    """Passed as is in the payload's ``metadata``."""


TICKS: dict[str, tuple[tuple[GateType, ...], ...]] = {
    "the first tick": ((GateType.ROLLBACK,), (GateType.CONFIRM_ROLLOUT, GateType.PRE_ROLLOUT)),
    "an advancing tick": ((GateType.ROLLBACK,), (GateType.ROLLOUT,),
                          (GateType.CONFIRM_TRAFFIC_INCREASE, GateType.CONFIRM_PROMOTION)),
    "the end": ((GateType.POST_ROLLOUT,),),
}  # fmt: skip
"""The batches of hooks one tick calls, one after another (the hooks of a batch at once)."""


def longest_tick(hooks: list[Webhook]) -> tuple[float, str]:
    """The most seconds one tick can spend in webhook calls (each batch takes its slowest hook's
    timeout), and which tick that is, with its batches."""
    worst, what = 0.0, ""
    for tick, batches in TICKS.items():
        parts = []
        for batch in batches:
            timeouts = [(hook.timeout_seconds, hook.name) for hook in hooks if hook.type in batch]
            if timeouts:
                parts.append(max(timeouts))
        total = sum(seconds for seconds, _ in parts)
        if total > worst:
            shown = " + ".join(f"{seconds:g} s ({name})" for seconds, name in parts)
            worst, what = total, f"{tick}: {shown}"
    return worst, what


class Answer(StrEnum):
    OPEN = "open"  # 2xx
    CLOSED = "closed"  # any other status
    UNREACHABLE = "unreachable"  # no HTTP answer in time


@dataclass(frozen=True)
class GateAnswer:
    hook: Webhook
    answer: Answer
    detail: str  # "403 from http://...", "unreachable: ConnectError ..."

    @property
    def open(self) -> bool:
        return self.answer is Answer.OPEN


def payload(hook: Webhook, rollout: dict[str, Any]) -> dict[str, Any]:
    """Flagger's fields (``name``, ``namespace``: our model, ``phase``, ``metadata``) and the
    rollout's (``rollout``: id, step, shares, student; see ``events.rollout_fields``)."""
    return {
        "name": rollout.get("name") or f"rollout-{rollout['rollout_id']}",
        "namespace": rollout["model"],
        "phase": rollout["phase"],
        "type": hook.type.value,
        "gate": hook.name,
        "metadata": dict(hook.metadata),
        "rollout": rollout,
    }


def call_all(
    hooks: list[Webhook],
    rollout: dict[str, Any],
    transport: httpx.AsyncBaseTransport | None = None,
) -> list[GateAnswer]:
    """One POST to each hook, all at once, each bounded in total (connect, send, the whole
    answer) by its ``timeout_seconds``: the batch ends within the slowest hook's timeout."""
    posts = [Post(hook.url, strict_json(payload(hook, rollout)), hook.timeout_seconds,
                  {"Content-Type": "application/json"}) for hook in hooks]  # fmt: skip
    return [_answer(hook, got) for hook, got in zip(hooks, post_all(posts, transport), strict=True)]


def _answer(hook: Webhook, got: httpx.Response | httpx.HTTPError) -> GateAnswer:
    if isinstance(got, httpx.HTTPError):
        return GateAnswer(hook, Answer.UNREACHABLE,
                          f"unreachable ({got.__class__.__name__}: {got})")  # fmt: skip
    if got.is_success:
        return GateAnswer(hook, Answer.OPEN, f"{got.status_code}")
    return GateAnswer(hook, Answer.CLOSED, f"answered {got.status_code}")

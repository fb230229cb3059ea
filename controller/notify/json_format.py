"""``format: json``: the event's own body (``RolloutEvent.body``)."""

from __future__ import annotations

from typing import Any

from controller.events import RolloutEvent

CONTENT_TYPE = "application/json"


def encode(event: RolloutEvent) -> dict[str, Any]:
    return event.body()

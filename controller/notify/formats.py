"""The receiver formats by name, as Flagger's notifier factory picks one (one module each)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from controller.events import RolloutEvent
from controller.notify import cloudevents, json_format, slack

Encoder = Callable[[RolloutEvent], dict[str, Any]]
FORMATS: dict[str, tuple[Encoder, str]] = {
    "json": (json_format.encode, json_format.CONTENT_TYPE),
    "slack": (slack.encode, slack.CONTENT_TYPE),
    "cloudevents": (cloudevents.encode, cloudevents.CONTENT_TYPE),
}
"""Format name: (what the body is, its Content-Type)."""

"""``format: cloudevents``: CloudEvents 1.0 in structured mode over HTTP: the whole event is
the body (``application/cloudevents+json``), the rollout event its ``data``."""

from __future__ import annotations

from typing import Any

from controller.events import RolloutEvent, iso_time

CONTENT_TYPE = "application/cloudevents+json; charset=utf-8"
TYPE_PREFIX = "io.distill-gateway.canary."  # reverse-DNS, as the spec recommends


def encode(event: RolloutEvent) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": event.id,
        "source": f"/distill-canary/{event.rollout['model'] or 'model'}",
        "type": TYPE_PREFIX + event.type.value,
        "subject": f"rollout/{event.rollout['rollout_id']}",
        "time": iso_time(event.at),
        "datacontenttype": "application/json",
        "data": event.body(),
    }

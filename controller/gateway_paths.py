"""Where the controller reaches a gateway, per model (issue 27's admin routes): the gateway's own
route templates (``gateway.protocol``), filled in once here for the actuator, ``status`` and the
model choice."""

from __future__ import annotations

from urllib.parse import quote

from gateway.protocol import ADMIN_MODEL_SHADOW, ADMIN_MODEL_STUDENT, ADMIN_MODEL_TRAFFIC, MODELS

MODELS_PATH = MODELS
"""``GET``: {"models": [{"name": ..., "versions": [...], "ready": ..., "student_id": ...}, ...]}
(``gateway.protocol.ModelListEntry`` each)."""


def traffic_path(model: str) -> str:
    """``GET|PUT``: the model's share (``gateway.protocol.TrafficState``)."""
    return ADMIN_MODEL_TRAFFIC.format(model=quote(model, safe=""))


def student_path(model: str) -> str:
    """``PUT``: the model's student, by registry id."""
    return ADMIN_MODEL_STUDENT.format(model=quote(model, safe=""))


def shadow_path(model: str) -> str:
    """``GET|PUT``: the model's shadow sample rate on one replica (``ShadowRate``)."""
    return ADMIN_MODEL_SHADOW.format(model=quote(model, safe=""))

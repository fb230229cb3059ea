"""The student a rollout moves traffic to, as the model registry knows it: what a rollout records
of it (id, name, lineage), and what it writes back (promoted, rolled back)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from controller.rollout_store import Phase, RolloutState
from models import registry

log = logging.getLogger(__name__)


def describe(registry_path: Path, model_id: str) -> dict[str, Any]:
    """What the rollout keeps of the student: its id, name, file, accuracy and lineage."""
    entry = registry.lookup(registry_path, model_id)  # LookupError: unreadable or unknown
    return {
        "id": model_id,
        "name": entry.get("name", Path(str(entry["file"])).stem),
        "file": entry["file"],
        "test_accuracy": entry.get("test_accuracy"),
        "lineage": entry.get("lineage", {}),
        "registry": str(registry_path),
    }


def summary(student: dict[str, Any]) -> str:
    """One line for logs, status and the report: which student, from what recipe."""
    lineage = student.get("lineage") or {}
    recipe = ", ".join(
        f"{key} {lineage[key]}"
        for key in ("architecture", "temperature", "alpha", "quantization")
        if lineage.get(key) is not None
    )
    return f"{student['name']} ({student['id']})" + (f": {recipe}" if recipe else "")


def record_outcome(state: RolloutState) -> None:
    """A promoted or rolled-back student goes into the registry's history, so whoever picks the
    next student sees that this one was tried and how it ended."""
    student = state.student
    if student is None or state.phase not in (Phase.PROMOTED, Phase.ROLLED_BACK):
        return
    event = "promoted" if state.phase is Phase.PROMOTED else "rolled_back"
    try:
        registry.record(Path(student["registry"]), student["id"], event,
                        rollout=state.rollout_id, reason=state.rollback_reason)  # fmt: skip
    except (OSError, ValueError) as exc:  # the rollout's outcome stands; say what was not kept
        log.error("could not record %s of %s in %s: %s", event, student["id"],
                  student["registry"], exc)  # fmt: skip

"""The committed registry tells the truth: every file it lists is there under its content hash,
and its accuracies are what ONNX Runtime gets on the saved test split today. Plus the choosing
logic (frontier, select) and the history a rollout writes, on small registries of their own."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from controller.registry_records import describe, record_outcome
from controller.rollout_store import Phase, RolloutState
from models import REGISTRY_PATH, TEST_SPLIT_PATH
from models import registry as reg
from models.data import load_test_split
from models.evaluate import accuracy_by_class

REGISTRY = reg.load(REGISTRY_PATH)
ENTRIES = list(reg.entries(REGISTRY))


def test_the_registry_lists_a_full_sweep() -> None:
    candidates = reg.candidates(REGISTRY)
    recipes = {(e["lineage"]["temperature"], e["lineage"]["alpha"], e["lineage"]["architecture"])
               for e in candidates}  # fmt: skip
    assert len(recipes) >= 5 * 3 * 4 and len(candidates) == 3 * len(recipes)
    teacher = reg.teacher(REGISTRY)
    assert all(e["parameters"] * 20 <= teacher["parameters"] for e in candidates)


@pytest.mark.parametrize("entry", ENTRIES, ids=[e.get("name", e["file"]) for e in ENTRIES])
def test_every_registered_file_scores_what_the_registry_says(entry: dict[str, Any]) -> None:
    path = REGISTRY_PATH.parent / entry["file"]
    assert reg.content_hash(path) == entry["id"]
    assert path.stat().st_size == entry["file_bytes"]
    accuracy, per_class = accuracy_by_class(path, load_test_split(TEST_SPLIT_PATH))
    assert accuracy == entry["test_accuracy"]
    if "per_class_accuracy" in entry:
        assert per_class == entry["per_class_accuracy"]
    if entry.get("lineage", {}).get("parent_id"):
        parent = reg.find(REGISTRY, entry["lineage"]["parent_id"])
        assert parent is not None and parent["lineage"]["quantization"] == "fp32"
        assert (entry["status"] == reg.REJECTED_CONVERSION) == (
            parent["test_accuracy"] - accuracy > 0.01
        )


@pytest.mark.parametrize(("parent", "quantized", "status"), [
    (0.9694, 0.9694, reg.ACCEPTED),
    (0.9694, 0.9611, reg.ACCEPTED),  # 0.83 points: within the 1-point allowance
    (0.9694, 0.9583, reg.REJECTED_CONVERSION),  # 1.11 points
    (0.9694, 0.9750, reg.ACCEPTED),  # better than its parent happens too
])  # fmt: skip
def test_a_quantized_file_more_than_a_point_below_its_parent_is_rejected(
    parent: float, quantized: float, status: str
) -> None:
    from models.sweep import conversion_status

    assert conversion_status(parent, quantized) == status


def _entry(model_id: str, accuracy: float, batch_1: float, size: int = 1000) -> dict[str, Any]:
    return {"id": model_id, "name": model_id, "file": f"{model_id}.onnx", "status": reg.ACCEPTED,
            "test_accuracy": accuracy, "latency_ms": {"batch_1": batch_1, "batch_64": 1.0},
            "file_bytes": size, "lineage": {"quantization": "fp32"}}  # fmt: skip


def _registry(*entries: dict[str, Any]) -> dict[str, Any]:
    teacher = {"id": "t", "file": "t.onnx", "test_accuracy": 0.98, "latency_ms": {"batch_1": 1.0}}
    return {"models": {"teacher": teacher}, "candidates": {e["id"]: e for e in entries}}


def test_the_frontier_is_what_nothing_beats_on_both_accuracy_and_latency() -> None:
    fast, accurate, beaten = _entry("a", 0.95, 0.010), _entry("b", 0.97, 0.020), _entry(
        "c", 0.95, 0.030)  # fmt: skip
    assert reg.dominated([fast, accurate, beaten]) == {"c"}


def test_select_takes_the_fastest_within_budget_and_calls_close_latencies_a_tie() -> None:
    registry = _registry(
        _entry("slow", 0.975, 0.030),
        _entry("fast", 0.960, 0.0100),  # the fastest, but 2 points below the teacher: in budget
        _entry("tied", 0.965, 0.0104),  # within 5 % of the fastest and more accurate: wins
        _entry("out", 0.900, 0.005),  # fastest of all, far outside the budget
        {**_entry("rejected", 0.99, 0.001), "status": reg.REJECTED_CONVERSION},
    )
    chosen = reg.select(registry, 0.02, "latency")
    assert chosen is not None and chosen.chosen["id"] == "tied" and chosen.eligible == 3
    assert chosen.runner_up is not None and chosen.runner_up["id"] == "fast"
    assert "as fast but less accurate" in chosen.why_runner_up_lost
    assert reg.select(registry, 0.001, "latency") is None
    small_and_big = _registry(_entry("big", 0.97, 0.01, 5000), _entry("small", 0.97, 0.02, 900))
    by_size = reg.select(small_and_big, 0.02, "size")
    assert by_size is not None and by_size.chosen["id"] == "small"
    assert "5,000 bytes against 900" in by_size.why_runner_up_lost


@pytest.mark.parametrize(("phase", "event"), [(Phase.ROLLED_BACK, "rolled_back"),
                                             (Phase.PROMOTED, "promoted")])  # fmt: skip
def test_a_rollouts_outcome_goes_into_the_registrys_history(
    tmp_path: Path, phase: Phase, event: str
) -> None:
    path = tmp_path / "registry.json"
    reg.save(path, _registry(_entry("abc123", 0.97, 0.01)))
    student = describe(path, "abc123")
    state = RolloutState(phase=phase, rollout_id=7, student=student,
                         rollback_reason="gate max_accuracy_drop failed" if event == "rolled_back"
                         else None)  # fmt: skip
    record_outcome(state)
    history = reg.load(path)["history"]
    assert [(h["model_id"], h["event"], h["rollout"]) for h in history] == [("abc123", event, 7)]
    assert history[0]["reason"] == state.rollback_reason

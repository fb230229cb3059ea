"""The shipped teacher/student pair and the build that made it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F

from models import MODELS_DIR, REGISTRY_PATH
from models.data import Split
from models.distill import distillation_loss
from models.export import content_hash


@pytest.fixture(scope="module")
def registry() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(REGISTRY_PATH.read_text())
    return loaded


@pytest.mark.parametrize("name", ["teacher", "student", "student_bad"])
def test_registry_describes_the_committed_files(registry: dict[str, Any], name: str) -> None:
    entry = registry["models"][name]
    path = MODELS_DIR / entry["file"]
    assert entry["id"] == content_hash(path)
    assert entry["file_bytes"] == path.stat().st_size
    assert entry["onnx_max_abs_difference"] <= 1e-4
    for batch in ("batch_1", "batch_64"):
        assert entry["latency_ms"][batch] > 0


@pytest.mark.parametrize("name", ["teacher", "student", "student_bad"])
def test_onnx_signature_and_accuracy(
    registry: dict[str, Any], test_split: Split, name: str
) -> None:
    entry = registry["models"][name]
    session = ort.InferenceSession(
        str(MODELS_DIR / entry["file"]), providers=["CPUExecutionProvider"]
    )
    (pixels,) = session.get_inputs()
    (logits,) = session.get_outputs()
    assert (pixels.name, pixels.type, pixels.shape[1]) == ("pixels", "tensor(float)", 64)
    assert (logits.name, logits.type, logits.shape[1]) == ("logits", "tensor(float)", 10)
    assert isinstance(pixels.shape[0], str)  # a dynamic batch dimension
    predictions = session.run(["logits"], {"pixels": test_split.x})[0].argmax(1)
    assert float((predictions == test_split.y).mean()) == pytest.approx(entry["test_accuracy"])


def test_the_pair_meets_its_targets(registry: dict[str, Any]) -> None:
    teacher, student = registry["models"]["teacher"], registry["models"]["student"]
    assert teacher["parameters"] >= 1_000_000
    assert teacher["test_accuracy"] >= 0.97
    assert student["parameters"] * 20 <= teacher["parameters"]
    assert teacher["test_accuracy"] - student["test_accuracy"] <= 0.02
    assert student["test_accuracy"] > student["lineage"]["baseline_accuracy"]
    for batch in ("batch_1", "batch_64"):
        assert teacher["latency_ms"][batch] >= 4 * student["latency_ms"][batch]


def test_lineage_points_at_the_teacher(registry: dict[str, Any]) -> None:
    lineage = registry["models"]["student"]["lineage"]
    assert lineage["teacher_id"] == registry["models"]["teacher"]["id"]
    assert lineage["temperature"] == 4.0 and lineage["alpha"] == 0.8
    assert len(lineage["soft_label_cache_key"]) == 16
    assert registry["models"]["student_bad"]["purpose"].startswith("deliberately bad")


def test_saved_test_split_matches_the_registry(registry: dict[str, Any], test_split: Split) -> None:
    assert len(test_split.y) == registry["dataset"]["test_examples"]
    assert test_split.x.dtype == np.float32 and test_split.x.shape[1] == 64
    assert test_split.x.min() >= 0 and test_split.x.max() <= 16  # raw load_digits values


def test_distillation_loss_matches_its_formula() -> None:
    torch.manual_seed(0)
    student, teacher = torch.randn(8, 10), torch.randn(8, 10)
    labels = torch.randint(0, 10, (8,))
    t, alpha = 4.0, 0.8
    soft = F.softmax(teacher / t, dim=1)
    kl = (soft * (soft.log() - F.log_softmax(student / t, dim=1))).sum(1).mean()
    expected = alpha * t * t * kl + (1 - alpha) * F.cross_entropy(student, labels)
    actual = distillation_loss(student, soft, labels, t, alpha)
    assert actual.item() == pytest.approx(expected.item(), rel=1e-5)
    hard_only = distillation_loss(student, soft, labels, t, 0.0)
    assert hard_only.item() == pytest.approx(F.cross_entropy(student, labels).item(), rel=1e-6)


def _quick_build(out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "models.build", "--out-dir", str(out), "--cache-dir",
         str(out.parent / "cache"), "--max-epochs", "3", "--patience", "2",
         "--no-enforce-targets"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def test_rebuild_is_reproducible_and_reuses_the_soft_labels(tmp_path: Path) -> None:
    first = _quick_build(tmp_path / "first")
    assert first.returncode == 0, first.stderr
    assert "computed and cached" in first.stdout
    second = _quick_build(tmp_path / "second")
    assert second.returncode == 0, second.stderr
    assert "reused from cache" in second.stdout
    ids = [
        {
            k: v["id"]
            for k, v in json.loads((tmp_path / d / "registry.json").read_text())["models"].items()
        }
        for d in ("first", "second")
    ]
    assert ids[0] == ids[1]

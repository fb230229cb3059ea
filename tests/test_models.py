"""The shipped teacher/student pair and the build that made it."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F

from models import MODELS_DIR, REGISTRY_PATH
from models.data import Split
from models.distill import distillation_loss, soft_labels
from models.export import content_hash, export_onnx, latency_ms
from models.nets import student_net, teacher_net


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


def _build(out: Path, *options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "models.build", "--out-dir", str(out), "--cache-dir",
         str(out.parent / "cache"), *options],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip


QUICK = ("--max-epochs", "3", "--patience", "2")


@pytest.mark.e2e  # trains with torch in a subprocess
def test_a_quick_build_misses_its_targets_and_says_so_then_reproduces(tmp_path: Path) -> None:
    enforced = _build(tmp_path / "first", *QUICK)
    assert enforced.returncode == 1, enforced.stdout  # 3 epochs cannot reach the targets
    assert "NO" in enforced.stdout and "computed and cached" in enforced.stdout
    trial = _build(tmp_path / "second", *QUICK, "--no-enforce-targets")
    assert trial.returncode == 0, trial.stderr
    assert "reused from cache" in trial.stdout
    ids = [
        {
            k: v["id"]
            for k, v in json.loads((tmp_path / d / "registry.json").read_text())["models"].items()
        }
        for d in ("first", "second")
    ]
    assert ids[0] == ids[1]


@pytest.mark.e2e  # trains with torch in a subprocess
def test_a_full_rebuild_reproduces_the_committed_files_bit_for_bit(tmp_path: Path) -> None:
    """What the README promises: the same seeds, the same files (about 35 s here)."""
    result = _build(tmp_path / "models")
    assert result.returncode == 0, result.stdout + result.stderr
    for name in ("teacher.onnx", "student.onnx", "student_bad.onnx", "digits/test.npz"):
        rebuilt, committed = tmp_path / "models" / name, MODELS_DIR / name
        assert rebuilt.read_bytes() == committed.read_bytes(), name


def test_the_student_is_faster_than_the_teacher_measured_here() -> None:
    """Measured now, not read from the registry; the margin is wide (about 25x and 60x here)."""
    for batch in (1, 64):
        teacher = latency_ms(MODELS_DIR / "teacher.onnx", batch, runs=100)
        student = latency_ms(MODELS_DIR / "student.onnx", batch, runs=100)
        assert teacher >= 4 * student, f"batch {batch}: {teacher:.3f} vs {student:.3f} ms"


@pytest.mark.parametrize("make_net", [teacher_net, student_net], ids=["teacher", "student"])
def test_the_exported_onnx_computes_what_pytorch_computes(
    make_net: Callable[[], torch.nn.Module], test_split: Split, tmp_path: Path
) -> None:
    torch.manual_seed(7)
    net = make_net().eval()
    path = tmp_path / "net.onnx"
    export_onnx(net, path)
    with torch.no_grad():
        expected = net(torch.from_numpy(test_split.x)).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    actual = session.run(["logits"], {"pixels": test_split.x})[0]
    assert np.abs(expected - actual).max() <= 1e-4


def test_soft_labels_are_the_teachers_softened_probabilities_and_are_cached(
    test_split: Split, tmp_path: Path
) -> None:
    torch.manual_seed(3)
    teacher = teacher_net().eval()
    x, temperature = test_split.x[:50], 4.0
    cache = tmp_path / "cache" / "labels.npz"
    computed, from_cache = soft_labels(teacher, x, temperature, cache)
    with torch.no_grad():
        expected = F.softmax(teacher(torch.from_numpy(x)) / temperature, dim=1).numpy()
    assert not from_cache and cache.exists()
    np.testing.assert_allclose(computed, expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(computed.sum(1), 1.0, atol=1e-5)
    # Softer than T = 1: the teacher's top class keeps less of the mass.
    with torch.no_grad():
        sharp = F.softmax(teacher(torch.from_numpy(x)), dim=1).numpy()
    assert computed.max(1).mean() < sharp.max(1).mean()
    again, from_cache = soft_labels(teacher_net(), x, temperature, cache)  # another net: cached
    assert from_cache and np.array_equal(again, computed)

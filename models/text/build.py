"""``distill-models build-text``: train the transformer teacher on the marker-order task, distil
the small student from its soft labels, train the hard-label baseline and a deliberately bad
student, export all to ONNX (every axis dynamic), check each against PyTorch at several batch
sizes and sequence lengths, quantize the student to INT8, and write ``pairs.text`` of the
registry. Seeded and single-threaded: two builds on one machine write identical files.

It reuses the digits pair's machinery (``models.distill``: training, the distillation loss, soft
labels and their cache; ``models.quantize``): the two inputs travel packed as one [N, 2, L]
tensor through that code and are unpacked by ``Packed`` in front of the net.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import typer
from rich.console import Console
from rich.table import Table
from sklearn.linear_model import LogisticRegression

from models import MODELS_DIR, REGISTRY_PATH
from models import registry as reg
from models.data import Split
from models.distill import (
    TrainConfig,
    accuracy,
    distilled_loss,
    hard_label_loss,
    soft_label_cache_key,
    soft_labels,
    train,
)
from models.nets import parameter_count
from models.quantize import quantize
from models.text import PAIR, STUDENT_EPOCHS, TEACHER_EPOCHS
from models.text.data import NUM_CLASSES, VOCAB_SIZE, TextSplit, load_splits, save_test_split
from models.text.nets import SelfAttention, SequenceClassifier, student_net, teacher_net
from models.text.onnx_io import (
    accuracy_by_class,
    export_text_onnx,
    latency_ms,
    onnx_logits,
    torch_logits,
)

ONNX_TOLERANCE = 1e-4
CHECK_SHAPES = ((1, 3), (2, 8), (7, 40), (16, 77), (64, 128))  # (batch, seq) beyond training's
TEACHER_CONFIG = TrainConfig(epochs=TEACHER_EPOCHS, patience=3, learning_rate=1e-3)
STUDENT_CONFIG = TrainConfig(epochs=STUDENT_EPOCHS, patience=15, learning_rate=3e-3)
BAD_STUDENT_EPOCHS = 1
TEACHER_MIN_ACCURACY = 0.97
TARGET_ACCURACY_GAP = 0.05
TARGET_COMPUTE_RATIO = 10.0
TEMPERATURE, ALPHA = 4.0, 0.8
COMPUTE_LENGTH = 40  # the multiply-adds are counted for a sequence of the task's longest

console = Console()


class Packed(torch.nn.Module):
    """``models.distill`` feeds one tensor: [N, 2, L], ids then mask."""

    def __init__(self, net: SequenceClassifier) -> None:
        super().__init__()
        self.net = net

    def forward(self, packed: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.net(packed[:, 0], packed[:, 1])
        return logits


def packed(split: TextSplit) -> Split:
    return Split(np.stack([split.input_ids, split.attention_mask], axis=1), split.y)


def multiply_adds(net: torch.nn.Module, length: int) -> int:
    """Multiply-adds of one sequence of ``length`` tokens: every Linear on every token, plus
    each attention's scores and mixing (2 x length^2 x width). Embeddings and norms are
    lookups and elementwise, left out."""
    total = 0
    for module in net.modules():
        if isinstance(module, torch.nn.Linear):
            total += module.in_features * module.out_features * length
        elif isinstance(module, SelfAttention):
            total += 2 * length * length * module.heads * module.head_width
    return total


def build(out_dir: Path = MODELS_DIR, cache_dir: Path = MODELS_DIR / ".cache",
          enforce_targets: bool = True, teacher_epochs: int = TEACHER_CONFIG.epochs,
          student_epochs: int = STUDENT_CONFIG.epochs) -> None:  # fmt: skip
    torch.set_num_threads(1)  # bitwise-reproducible training on CPU
    splits = load_splits()
    train_split, validation = packed(splits.train), packed(splits.validation)
    console.print(f"marker-order dataset {splits.dataset_hash}: {len(splits.train.y)} train, "
                  f"{len(splits.validation.y)} validation, {len(splits.test.y)} test")  # fmt: skip
    pair_dir = out_dir / PAIR
    teacher_config = TrainConfig(epochs=teacher_epochs, patience=TEACHER_CONFIG.patience,
                                 learning_rate=TEACHER_CONFIG.learning_rate)  # fmt: skip
    student_config = TrainConfig(epochs=student_epochs, patience=STUDENT_CONFIG.patience,
                                 learning_rate=STUDENT_CONFIG.learning_rate)  # fmt: skip

    teacher = train(lambda: Packed(teacher_net()), train_split, validation, teacher_config,
                    hard_label_loss(splits.train.y)).net  # fmt: skip
    teacher_entry = _export(teacher, pair_dir / "teacher.onnx", splits.test)
    console.print(f"teacher {teacher_entry['id']}: {teacher_entry['parameters']:,} parameters, "
                  f"test accuracy {teacher_entry['test_accuracy']:.4f}")  # fmt: skip

    key = soft_label_cache_key(teacher_entry["id"], splits.dataset_hash, TEMPERATURE)
    targets, cached = soft_labels(teacher, train_split.x, TEMPERATURE,
                                  cache_dir / f"{key}.npz")  # fmt: skip
    console.print(f"soft labels {key}: " + ("reused from cache" if cached else "computed"))
    distil = distilled_loss(splits.train.y, targets, TEMPERATURE, ALPHA)
    student = train(lambda: Packed(student_net()), train_split, validation, student_config,
                    distil).net  # fmt: skip
    baseline = train(lambda: Packed(student_net()), train_split, validation, student_config,
                     hard_label_loss(splits.train.y)).net  # fmt: skip
    lineage = {
        "teacher_id": teacher_entry["id"],
        "temperature": TEMPERATURE,
        "alpha": ALPHA,
        "soft_label_cache_key": key,
        "baseline_accuracy": accuracy(baseline, packed(splits.test)),
        "architecture": "transformer 1 x 32",
        "quantization": "fp32",
    }
    student_entry = _export(student, pair_dir / "student.onnx", splits.test)
    student_entry["lineage"] = lineage

    bad_config = TrainConfig(epochs=BAD_STUDENT_EPOCHS, learning_rate=1e-3)
    bad = train(lambda: Packed(student_net()), train_split, validation, bad_config, distil).net
    bad_entry = _export(bad, pair_dir / "student_bad.onnx", splits.test)
    bad_entry["lineage"] = lineage
    bad_entry["purpose"] = f"deliberately bad: distilled for {BAD_STUDENT_EPOCHS} epoch only"

    int8_path = pair_dir / "student.int8.onnx"
    quantize("int8-dynamic", pair_dir / "student.onnx", int8_path, train_split.x)
    int8_entry = _describe(int8_path, splits.test, parameters=student_entry["parameters"])
    int8_entry["lineage"] = {**lineage, "parent_id": student_entry["id"],
                             "quantization": "int8-dynamic"}  # fmt: skip

    save_test_split(splits.test, pair_dir / "test.npz")
    teacher_cost, student_cost = (multiply_adds(net, COMPUTE_LENGTH) for net in (teacher, student))
    compute = {
        "sequence_length": COMPUTE_LENGTH,
        "teacher_multiply_adds": teacher_cost,
        "student_multiply_adds": student_cost,
        "ratio": teacher_cost / student_cost,
    }
    section = {
        "dataset": {
            "name": "marker order (synthetic, models/text/data.py)",
            "hash": splits.dataset_hash,
            "test_split": f"{PAIR}/test.npz",
            "test_examples": len(splits.test.y),
            "vocab_size": VOCAB_SIZE,
            "classes": NUM_CLASSES,
            "bag_of_words_accuracy": _bag_of_words_accuracy(splits.train, splits.test),
        },
        "compute": compute,
        "models": {"teacher": teacher_entry, "student": student_entry,
                   "student_bad": bad_entry, "student_int8": int8_entry},
    }  # fmt: skip
    registry_path = out_dir / REGISTRY_PATH.name
    registry = reg.load(registry_path) if registry_path.exists() else {}
    registry.setdefault("pairs", {})[PAIR] = section
    reg.save(registry_path, registry)
    if not _report(section) and enforce_targets:
        raise typer.Exit(code=1)


def _export(net: torch.nn.Module, path: Path, test: TextSplit) -> dict[str, Any]:
    inner = net.net if isinstance(net, Packed) else net
    export_text_onnx(inner, path)
    difference = max(_difference(inner, path, batch, length) for batch, length in CHECK_SHAPES)
    difference = max(difference, float(np.abs(torch_logits(inner, test)
                                              - onnx_logits(path, test)).max()))  # fmt: skip
    if difference > ONNX_TOLERANCE:
        console.print(f"[red]{path.name}: ONNX Runtime differs from PyTorch by {difference:.2e}")
        raise typer.Exit(code=1)
    entry = _describe(path, test, parameters=parameter_count(inner))
    entry["onnx_max_abs_difference"] = difference
    return entry


def _difference(net: torch.nn.Module, path: Path, batch: int, length: int) -> float:
    """|PyTorch - ONNX Runtime| on random sequences of one shape, each row a random length."""
    rng = np.random.default_rng(batch * 1000 + length)
    ids = rng.integers(1, VOCAB_SIZE, (batch, length)).astype(np.int64)
    lengths = rng.integers(1, length + 1, batch)
    mask = (np.arange(length) < lengths[:, None]).astype(np.int64)
    split = TextSplit(ids * mask, mask, np.zeros(batch, dtype=np.int64))
    return float(np.abs(torch_logits(net, split) - onnx_logits(path, split)).max())


def _describe(path: Path, test: TextSplit, parameters: int) -> dict[str, Any]:
    test_accuracy, per_class = accuracy_by_class(path, test)
    return {
        "id": reg.content_hash(path),
        "file": f"{PAIR}/{path.name}",
        "parameters": parameters,
        "file_bytes": path.stat().st_size,
        "test_accuracy": test_accuracy,
        "per_class_accuracy": per_class,
        "latency_ms": {"batch_1": latency_ms(path, 1), "batch_64": latency_ms(path, 64)},
    }


def _bag_of_words_accuracy(train_split: TextSplit, test: TextSplit) -> float:
    """What token counts alone can learn of the rule: a logistic regression on them."""

    def counts(split: TextSplit) -> np.ndarray:
        ids = np.where(split.attention_mask == 1, split.input_ids, 0)
        return np.stack([np.bincount(row, minlength=VOCAB_SIZE)[1:] for row in ids])

    model = LogisticRegression(max_iter=2000).fit(counts(train_split), train_split.y)
    return float(model.score(counts(test), test.y))


def _report(section: dict[str, Any]) -> bool:
    models, compute = section["models"], section["compute"]
    teacher, student, int8 = models["teacher"], models["student"], models["student_int8"]
    table = Table(title="text pair")
    for column in ("model", "test accuracy", "per class", "ms batch 1", "ms batch 64"):
        table.add_column(column)
    for name, entry in models.items():
        per_class = " ".join(f"{v:.3f}" for v in entry["per_class_accuracy"].values())
        table.add_row(name, f"{entry['test_accuracy']:.4f}", per_class,
                      f"{entry['latency_ms']['batch_1']:.3f}",
                      f"{entry['latency_ms']['batch_64']:.3f}")  # fmt: skip
    console.print(table)
    console.print(f"bag of words: {section['dataset']['bag_of_words_accuracy']:.4f}; baseline "
                  f"(hard labels): {student['lineage']['baseline_accuracy']:.4f}")  # fmt: skip
    checks = [
        (f"teacher test accuracy >= {TEACHER_MIN_ACCURACY}", f"{teacher['test_accuracy']:.4f}",
         teacher["test_accuracy"] >= TEACHER_MIN_ACCURACY),
        (f"student within {TARGET_ACCURACY_GAP:.0%} of the teacher",
         f"{student['test_accuracy']:.4f}",
         teacher["test_accuracy"] - student["test_accuracy"] <= TARGET_ACCURACY_GAP),
        (f"teacher >= {TARGET_COMPUTE_RATIO:.0f}x the student's multiply-adds",
         f"{compute['ratio']:.1f}x", compute["ratio"] >= TARGET_COMPUTE_RATIO),
        ("INT8 student within 1 point of FP32", f"{int8['test_accuracy']:.4f}",
         student["test_accuracy"] - int8["test_accuracy"] <= 0.01),
    ]  # fmt: skip
    targets = Table(title="build targets")
    for column in ("target", "measured", "met"):
        targets.add_column(column)
    for name, measured, met in checks:
        targets.add_row(name, measured, "[green]yes" if met else "[red]NO")
    console.print(targets)
    return all(met for _, _, met in checks)

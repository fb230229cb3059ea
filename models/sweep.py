"""``distill-models sweep``: one teacher, a grid of students, each distilled, exported, quantized,
measured and registered.

The grid is temperature x loss weight (alpha) x architecture. The teacher's soft labels are
computed once per (teacher, dataset, T) and reused by every architecture and alpha. Candidates
train in parallel, one process per core; each finished one leaves a record in the cache, so an
interrupted sweep resumes where it stopped. Latencies are measured at the end, one file after
another in one process (the teacher's too), so they compare with each other.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from models import registry as reg
from models.data import load_splits
from models.distill import soft_label_cache_key, soft_labels
from models.evaluate import accuracy_by_class, latency_ms, onnx_logits
from models.quantize import QUANTIZATIONS, quantize

ONNX_TOLERANCE = 1e-4
MAX_CONVERSION_DROP = 0.01
"""A quantized file more than 1 point below its FP32 parent is ``rejected: conversion``."""


@dataclass(frozen=True)
class Grid:
    temperatures: tuple[float, ...]
    alphas: tuple[float, ...]
    architectures: tuple[str, ...]
    max_epochs: int
    patience: int


FULL_GRID = Grid(
    temperatures=(1.0, 2.0, 4.0, 8.0, 16.0),
    alphas=(0.5, 0.8, 1.0),
    architectures=("mlp16", "mlp32", "mlp64x32", "mlp128x64"),
    max_epochs=400,
    patience=40,
)
QUICK_GRID = Grid(
    temperatures=(2.0, 8.0), alphas=(0.8,), architectures=("mlp16", "mlp32"),
    max_epochs=100, patience=20,
)  # fmt: skip
"""For CI: two temperatures so the cache is shared, two architectures so it is reused."""


@dataclass(frozen=True)
class Candidate:
    architecture: str
    temperature: float
    alpha: float
    seed: int
    max_epochs: int
    patience: int
    teacher_id: str
    dataset_hash: str

    @property
    def name(self) -> str:
        return f"{self.architecture}-t{self.temperature:g}-a{self.alpha:g}"

    @property
    def soft_label_key(self) -> str:
        return soft_label_cache_key(self.teacher_id, self.dataset_hash, self.temperature)

    @property
    def record_key(self) -> str:
        """Everything that decides the result: a record under another key is not this one's."""
        material = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha256(material.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class SweepResult:
    candidates: int
    trained: int
    skipped: int
    soft_labels_computed: int
    soft_labels_reused: int
    wall_seconds: float


def run_sweep(
    grid: Grid,
    teacher_path: Path,
    out_dir: Path,
    cache_dir: Path,
    jobs: int,
    seed: int = 0,
    console: Console | None = None,
) -> SweepResult:
    console = console or Console()
    started = time.perf_counter()
    splits = load_splits()
    teacher_id = reg.content_hash(teacher_path)
    specs = [
        Candidate(
            arch, t, alpha, seed, grid.max_epochs, grid.patience, teacher_id, splits.dataset_hash
        )
        for t in grid.temperatures
        for alpha in grid.alphas
        for arch in grid.architectures
    ]
    records_dir = cache_dir / "sweep"
    done = {spec.name: record for spec in specs if (record := _done(spec, records_dir, out_dir))}
    pending = [spec for spec in specs if spec.name not in done]
    console.print(
        f"sweep: {len(specs)} candidates ({len(grid.temperatures)} T x {len(grid.alphas)} alpha "
        f"x {len(grid.architectures)} architectures), teacher {teacher_id}; "
        f"{len(done)} finished earlier (kept), {len(pending)} to train on {jobs} processes"
    )

    computed = 0
    for temperature in sorted({spec.temperature for spec in pending}):
        key = soft_label_cache_key(teacher_id, splits.dataset_hash, temperature)
        _, cached = soft_labels(lambda x: onnx_logits(teacher_path, x), splits.train.x,
                                temperature, cache_dir / f"{key}.npz")  # fmt: skip
        computed += not cached
    reused = len(pending) - computed
    console.print(
        f"soft labels: {computed} computed, {reused} reused "
        "(one per (teacher, dataset, T), shared by every architecture and alpha)"
    )

    if pending:
        done.update(_train_all(pending, out_dir, cache_dir, records_dir, jobs, console))

    console.print("measuring ONNX Runtime CPU latency, one file after another ...")
    teacher_latency = {f"batch_{b}": latency_ms(teacher_path, b) for b in (1, 64)}
    registry_path = out_dir / "registry.json"
    registry = reg.load(registry_path)
    registry["candidates"] = {}
    for spec in specs:
        for entry in done[spec.name]["files"]:
            path = out_dir / entry["file"]
            entry["latency_ms"] = {f"batch_{b}": latency_ms(path, b) for b in (1, 64)}
            registry["candidates"][entry["id"]] = entry
    wall = time.perf_counter() - started
    registry["sweep"] = {
        "grid": asdict(grid),
        "seed": seed,
        "teacher_id": teacher_id,
        "teacher_latency_ms": teacher_latency,
        "jobs": jobs,
        "trained": len(pending),
        "kept_from_earlier_run": len(specs) - len(pending),
        "soft_labels": {"computed": computed, "reused": reused},
        "wall_seconds": round(wall, 1),
    }
    reg.save(registry_path, registry)
    console.print(
        f"registered {len(registry['candidates'])} files ({len(specs)} candidates x FP32, "
        f"{', '.join(QUANTIZATIONS)}) in {registry_path} ({wall:.0f} s)"
    )
    return SweepResult(len(specs), len(pending), len(specs) - len(pending), computed, reused,
                       wall)  # fmt: skip


def _done(spec: Candidate, records_dir: Path, out_dir: Path) -> dict[str, Any] | None:
    """A finished candidate's record, if its files are still there and unchanged."""
    path = records_dir / f"{spec.name}-{spec.record_key}.json"
    if not path.exists():
        return None
    record: dict[str, Any] = json.loads(path.read_text())
    for entry in record["files"]:
        file = out_dir / entry["file"]
        if not file.exists() or reg.content_hash(file) != entry["id"]:
            return None
    return record


def _train_all(
    pending: list[Candidate], out_dir: Path, cache_dir: Path, records_dir: Path, jobs: int,
    console: Console,
) -> dict[str, dict[str, Any]]:  # fmt: skip
    finished: dict[str, dict[str, Any]] = {}
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())  # fmt: skip
    # fork: the parent has not imported torch (whose thread pools would not survive a fork), and
    # a spawned child would re-run the console script, which a console script cannot bear
    context = multiprocessing.get_context("fork")
    with (
        Progress(*columns, console=console) as progress,
        ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool,
    ):
        task = progress.add_task("training candidates", total=len(pending))
        futures = {
            pool.submit(train_candidate, spec, out_dir, cache_dir, records_dir): spec
            for spec in pending
        }
        for future in as_completed(futures):
            record = future.result()
            finished[futures[future].name] = record
            fp32 = record["files"][0]
            progress.console.print(
                f"  {fp32['name']}: test accuracy {fp32['test_accuracy']:.4f} "
                f"(best epoch {fp32['best_epoch']})"
            )
            progress.advance(task)
    return finished


def train_candidate(
    spec: Candidate, out_dir: Path, cache_dir: Path, records_dir: Path
) -> dict[str, Any]:
    """In a worker process: distil, export, check, quantize and score one candidate; its record
    is written last, so a candidate killed half way is trained again on resume."""
    import torch

    from models.distill import TrainConfig, distilled_loss, train
    from models.export import export_onnx, max_abs_difference
    from models.nets import STUDENT_ARCHITECTURES, mlp, parameter_count

    torch.set_num_threads(1)  # one core per candidate, and bitwise-reproducible
    splits = load_splits()
    with np.load(cache_dir / f"{spec.soft_label_key}.npz") as cached:
        targets = cached["soft_labels"]
    loss = distilled_loss(splits.train.y, targets, spec.temperature, spec.alpha)
    config = TrainConfig(epochs=spec.max_epochs, patience=spec.patience, seed=spec.seed)
    hidden = STUDENT_ARCHITECTURES[spec.architecture]
    result = train(lambda: mlp(hidden), splits.train, splits.validation, config, loss)

    fp32_path = out_dir / "candidates" / f"{spec.name}.onnx"
    export_onnx(result.net, fp32_path)
    difference = max_abs_difference(result.net, fp32_path, splits.test.x)
    if difference > ONNX_TOLERANCE:
        raise RuntimeError(f"{spec.name}: ONNX Runtime differs from PyTorch by {difference:.2e}")
    lineage = {
        "teacher_id": spec.teacher_id,
        "temperature": spec.temperature,
        "alpha": spec.alpha,
        "architecture": spec.architecture,
        "quantization": "fp32",
        "parent_id": None,
        "soft_label_cache_key": spec.soft_label_key,
        "dataset_hash": spec.dataset_hash,
        "seed": spec.seed,
    }
    parameters = parameter_count(result.net)
    fp32 = _describe(fp32_path, out_dir, spec.name, parameters, lineage, splits.test)
    fp32.update(best_epoch=result.best_epoch, validation_accuracy=result.validation_accuracy,
                onnx_max_abs_difference=difference)  # fmt: skip
    files = [fp32]
    for kind in QUANTIZATIONS:
        path = fp32_path.with_name(f"{spec.name}.{kind}.onnx")
        quantize(kind, fp32_path, path, splits.train.x)
        entry = _describe(path, out_dir, f"{spec.name}.{kind}", parameters,
                          {**lineage, "quantization": kind, "parent_id": fp32["id"]},
                          splits.test)  # fmt: skip
        entry["status"] = conversion_status(fp32["test_accuracy"], entry["test_accuracy"])
        files.append(entry)
    record = {"candidate": asdict(spec), "files": files}
    records_dir.mkdir(parents=True, exist_ok=True)
    target = records_dir / f"{spec.name}-{spec.record_key}.json"
    tmp = target.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record, indent=2))
    tmp.replace(target)
    return record


def conversion_status(parent_accuracy: float, accuracy: float) -> str:
    """A quantized file may lose up to ``MAX_CONVERSION_DROP`` of its parent's accuracy."""
    if accuracy < parent_accuracy - MAX_CONVERSION_DROP - 1e-12:
        return reg.REJECTED_CONVERSION
    return reg.ACCEPTED


def _describe(
    path: Path, out_dir: Path, name: str, parameters: int, lineage: dict[str, Any], test: Any
) -> dict[str, Any]:
    accuracy, per_class = accuracy_by_class(path, test)
    return {
        "id": reg.content_hash(path),
        "name": name,
        "file": str(path.relative_to(out_dir)),
        "status": reg.ACCEPTED,
        "test_accuracy": accuracy,
        "per_class_accuracy": per_class,
        "parameters": parameters,
        "file_bytes": path.stat().st_size,
        "lineage": lineage,
    }

"""Does distillation beat hard labels? A mean over seeds with its 95 % interval, not one seed's
margin.

For each seed the build's recipe trains the student twice, from the same initial weights and with
the same shuffling: on the teacher's soft labels (the distilled student) and on hard labels only
(the baseline). A seed's difference in test accuracy pairs the two; the result is the mean of the
differences, its 95 % t-interval over the seeds, and a verdict that says plainly whether the
interval lies above 0, below 0, or includes it.

It is a report, not a target: the build records it (``distillation_vs_baseline`` in the registry)
and prints the verdict, and never fails on it. On 360 test examples one example is 0.28 points,
and another seed (or another CPU, whose float rounding sends training down another path) moves
the distilled student by several examples (0.950 to 0.978 over ten seeds on the committed
teacher), so one seed's margin over the baseline is luck either way.

The t quantile comes from ``scipy.stats.t.ppf`` where scipy is installed (the ``report`` and
``dev`` environments); the ``train`` environment alone has no scipy, and there a table of the same
quantiles (to 6 decimals, checked against scipy by the tests) stands in.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from models import registry as reg
from models.data import DigitsSplits, load_splits
from models.distill import (
    TrainConfig,
    accuracy,
    distilled_loss,
    hard_label_loss,
    soft_label_cache_key,
    soft_labels,
    train,
)
from models.evaluate import onnx_logits
from models.nets import student_net

CONFIDENCE = 0.95
SECTION = "distillation_vs_baseline"
"""The registry's top-level key for the result."""

_T_975 = (12.706205, 4.302653, 3.182446, 2.776445, 2.570582, 2.446912, 2.364624, 2.306004,
          2.262157, 2.228139, 2.200985, 2.178813, 2.160369, 2.144787, 2.131450, 2.119905,
          2.109816, 2.100922, 2.093024, 2.085963, 2.079614, 2.073873, 2.068658, 2.063899,
          2.059539, 2.055529, 2.051831, 2.048407, 2.045230, 2.042272)  # fmt: skip
"""Student's t 97.5 % quantiles for 1..30 degrees of freedom (scipy.stats.t.ppf, rounded)."""
_Z_975 = 1.959964


def t_quantile(degrees_of_freedom: int) -> tuple[float, str]:
    """The two-sided 95 % quantile of Student's t, and where it came from."""
    try:
        from scipy.stats import t
    except ImportError:
        return table_t_quantile(degrees_of_freedom), "table (scipy not installed)"
    return float(t.ppf(0.5 + CONFIDENCE / 2, degrees_of_freedom)), "scipy.stats.t.ppf"


def table_t_quantile(degrees_of_freedom: int) -> float:
    """Without scipy: the table, and past 30 degrees of freedom the Cornish-Fisher expansion
    (within 1e-5 of the exact quantile there)."""
    if degrees_of_freedom < 1:
        raise ValueError("a t quantile needs at least 1 degree of freedom")
    if degrees_of_freedom <= len(_T_975):
        return _T_975[degrees_of_freedom - 1]
    z, v = _Z_975, float(degrees_of_freedom)
    return (
        z
        + (z**3 + z) / (4 * v)
        + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * v**2)
        + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * v**3)
    )


@dataclass(frozen=True)
class SeedResult:
    """One seed: both students' test accuracy and the epoch early stopping kept."""

    seed: int
    distilled_accuracy: float
    baseline_accuracy: float
    distilled_epoch: int
    baseline_epoch: int

    @property
    def difference(self) -> float:
        return self.distilled_accuracy - self.baseline_accuracy


@dataclass(frozen=True)
class PairedInterval:
    """The mean of paired differences and its t-interval."""

    n: int
    mean: float
    stdev: float
    low: float
    high: float
    t_quantile: float
    t_quantile_from: str

    @property
    def verdict(self) -> str:
        if self.low > 0:
            return (
                "distillation beats hard labels: the 95 % interval of the mean difference "
                "lies above 0"
            )
        if self.high < 0:
            return (
                "hard labels beat distillation: the 95 % interval of the mean difference "
                "lies below 0"
            )
        return (
            "not shown: the 95 % interval of the mean difference includes 0, so on this dataset "
            "distillation does not measurably beat hard labels for this student"
        )


def paired_interval(differences: Sequence[float]) -> PairedInterval:
    """Mean +- t(0.975, n - 1) * s / sqrt(n): the 95 % interval of the mean difference."""
    n = len(differences)
    if n < 2:
        raise ValueError("an interval needs at least 2 seeds")
    mean = statistics.fmean(differences)
    stdev = statistics.stdev(differences)
    quantile, source = t_quantile(n - 1)
    half = quantile * stdev / math.sqrt(n)
    return PairedInterval(n, mean, stdev, mean - half, mean + half, quantile, source)


def train_pair(
    splits: DigitsSplits, soft_targets: np.ndarray, temperature: float, alpha: float,
    config: TrainConfig, seed: int,
) -> SeedResult:  # fmt: skip
    """The distilled student and the hard-label baseline of one seed, as the build trains them."""
    seeded = replace(config, seed=seed)
    distil = distilled_loss(splits.train.y, soft_targets, temperature, alpha)
    distilled = train(student_net, splits.train, splits.validation, seeded, distil)
    hard = hard_label_loss(splits.train.y)
    baseline = train(student_net, splits.train, splits.validation, seeded, hard)
    return SeedResult(
        seed=seed,
        distilled_accuracy=accuracy(distilled.net, splits.test),
        baseline_accuracy=accuracy(baseline.net, splits.test),
        distilled_epoch=distilled.best_epoch,
        baseline_epoch=baseline.best_epoch,
    )


def compare(
    splits: DigitsSplits, soft_targets: np.ndarray, temperature: float, alpha: float,
    config: TrainConfig, seeds: Sequence[int], done: Sequence[SeedResult] = (),
    on_seed: Callable[[SeedResult], None] | None = None,
) -> list[SeedResult]:  # fmt: skip
    """Every seed's pair, in order; ``done`` holds seeds already trained (the build's own)."""
    known = {result.seed: result for result in done}
    results = []
    for seed in seeds:
        result = known.get(seed) or train_pair(
            splits, soft_targets, temperature, alpha, config, seed
        )
        if on_seed is not None:
            on_seed(result)
        results.append(result)
    return results


def section(
    results: Sequence[SeedResult], *, teacher_id: str, soft_label_cache_key: str,
    temperature: float, alpha: float, config: TrainConfig,
) -> dict[str, Any]:  # fmt: skip
    """The registry's ``distillation_vs_baseline``: the recipe, every seed, the interval."""
    interval = paired_interval([r.difference for r in results])
    distilled = [r.distilled_accuracy for r in results]
    baseline = [r.baseline_accuracy for r in results]
    return {
        "question": "does distillation beat training the same student on hard labels alone?",
        "teacher_id": teacher_id,
        "soft_label_cache_key": soft_label_cache_key,
        "student": "mlp32",
        "temperature": temperature,
        "alpha": alpha,
        "max_epochs": config.epochs,
        "patience": config.patience,
        "seeds": [r.seed for r in results],
        "per_seed": [
            {
                "seed": r.seed,
                "distilled_accuracy": r.distilled_accuracy,
                "baseline_accuracy": r.baseline_accuracy,
                "difference": r.difference,
                "distilled_best_epoch": r.distilled_epoch,
                "baseline_best_epoch": r.baseline_epoch,
            }
            for r in results
        ],
        "distilled_accuracy": _spread(distilled),
        "baseline_accuracy": _spread(baseline),
        "distilled_wins": sum(r.difference > 0 for r in results),
        "ties": sum(r.difference == 0 for r in results),
        "baseline_wins": sum(r.difference < 0 for r in results),
        "mean_difference": interval.mean,
        "stdev_difference": interval.stdev,
        "confidence": CONFIDENCE,
        "interval": [interval.low, interval.high],
        "t_quantile": interval.t_quantile,
        "t_quantile_from": interval.t_quantile_from,
        "verdict": interval.verdict,
    }


def _spread(values: Sequence[float]) -> dict[str, float]:
    return {
        "mean": statistics.fmean(values),
        "stdev": statistics.stdev(values),
        "min": min(values),
        "max": max(values),
    }


def print_report(recorded: dict[str, Any], console: Console) -> None:
    """The per-seed table, the mean difference with its interval, and the verdict."""
    table = Table(
        title=f"distilled student vs hard-label baseline, {len(recorded['seeds'])} seeds "
        f"(T = {recorded['temperature']}, alpha = {recorded['alpha']})"
    )
    for column in ("seed", "distilled", "baseline", "difference (points)"):
        table.add_column(column, justify="right")
    for row in recorded["per_seed"]:
        table.add_row(
            str(row["seed"]),
            f"{row['distilled_accuracy']:.4f}",
            f"{row['baseline_accuracy']:.4f}",
            f"{row['difference'] * 100:+.2f}",
        )
    distilled, baseline = recorded["distilled_accuracy"], recorded["baseline_accuracy"]
    table.add_row(
        "mean",
        f"{distilled['mean']:.4f}",
        f"{baseline['mean']:.4f}",
        f"{recorded['mean_difference'] * 100:+.2f}",
    )
    console.print(table)
    low, high = recorded["interval"]
    console.print(
        f"mean difference {recorded['mean_difference'] * 100:+.2f} points, 95 % interval "
        f"[{low * 100:+.2f}, {high * 100:+.2f}] (t = {recorded['t_quantile']:.3f} from "
        f"{recorded['t_quantile_from']}); distilled better in {recorded['distilled_wins']}, "
        f"tied in {recorded['ties']}, worse in {recorded['baseline_wins']} of "
        f"{len(recorded['seeds'])} seeds"
    )
    console.print(f"verdict: {recorded['verdict']} (reported, never a build failure)")


def run_seeds(
    count: int, teacher_path: Path, registry_path: Path, cache_dir: Path, temperature: float,
    alpha: float, max_epochs: int, patience: int, record: bool, console: Console,
) -> dict[str, Any]:  # fmt: skip
    """``distill-models seeds``: the comparison on the committed teacher, without a build. Its
    soft labels are the cached ones where the build (or the sweep) left them, else computed from
    the teacher's ONNX file, as the sweep does."""
    torch.set_num_threads(1)  # the build's setting: the same seed, the same numbers
    splits = load_splits()
    teacher_id = reg.content_hash(teacher_path)
    key = soft_label_cache_key(teacher_id, splits.dataset_hash, temperature)
    targets, cached = soft_labels(lambda x: onnx_logits(teacher_path, x), splits.train.x,
                                  temperature, cache_dir / f"{key}.npz")  # fmt: skip
    console.print(
        f"teacher {teacher_id}; soft labels {key}: "
        + ("reused from cache" if cached else "computed from the ONNX file and cached")
    )
    config = TrainConfig(epochs=max_epochs, patience=patience)

    def progress(result: SeedResult) -> None:
        console.print(
            f"seed {result.seed}: distilled {result.distilled_accuracy:.4f}, "
            f"baseline {result.baseline_accuracy:.4f}"
        )

    results = compare(splits, targets, temperature, alpha, config, range(count), on_seed=progress)
    recorded = section(results, teacher_id=teacher_id, soft_label_cache_key=key,
                       temperature=temperature, alpha=alpha, config=config)  # fmt: skip
    print_report(recorded, console)
    if record:
        registry = reg.load(registry_path)
        registry[SECTION] = recorded
        reg.save(registry_path, registry)
        console.print(f"recorded under {SECTION} in {registry_path}")
    return recorded

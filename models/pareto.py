"""What the sweep teaches: the accuracy-latency frontier (a table and a PNG), and which
temperature and loss weight worked best."""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from rich.table import Table

from models import registry as reg


def frontier_table(registry: dict[str, Any]) -> tuple[Table, set[str]]:
    """Every candidate, fastest first, with the frontier marked; and the dominated ids."""
    entries = reg.candidates(registry)
    accepted = [entry for entry in entries if entry["status"] == reg.ACCEPTED]
    beaten = reg.dominated(accepted)
    teacher = reg.teacher(registry)
    table = Table(title=f"accuracy-latency frontier (teacher {teacher['test_accuracy']:.4f}, "
                  f"{teacher['latency_ms']['batch_1'] * 1000:.1f} us at batch 1)")  # fmt: skip
    for column in ("id", "candidate"):
        table.add_column(column, no_wrap=True)
    for column in ("test acc", "us @1", "us @64", "bytes", "frontier"):
        table.add_column(column)
    for entry in sorted(entries, key=lambda e: (e["latency_ms"]["batch_1"], e["id"])):
        if entry["status"] != reg.ACCEPTED:
            mark = f"[red]{entry['status']}"
        else:
            mark = "[green]frontier" if entry["id"] not in beaten else "dominated"
        table.add_row(
            entry["id"], entry["name"], f"{entry['test_accuracy']:.4f}",
            f"{entry['latency_ms']['batch_1'] * 1000:.1f}",
            f"{entry['latency_ms']['batch_64'] * 1000:.1f}", f"{entry['file_bytes']:,}", mark,
        )  # fmt: skip
    return table, beaten


def lessons_table(registry: dict[str, Any]) -> Table:
    """FP32 candidates only (quantization is a separate question): per architecture, the
    temperature with the best mean test accuracy over the alphas; and each alpha's mean."""
    fp32 = [e for e in reg.candidates(registry) if e["lineage"]["quantization"] == "fp32"]
    by_arch_t: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    by_alpha: dict[float, list[float]] = defaultdict(list)
    for entry in fp32:
        lineage = entry["lineage"]
        by_arch_t[lineage["architecture"]][lineage["temperature"]].append(entry["test_accuracy"])
        by_alpha[lineage["alpha"]].append(entry["test_accuracy"])
    table = Table(title="what the sweep teaches (FP32, mean test accuracy)")
    for column in ("architecture", "best T", "its accuracy", "worst T", "its accuracy"):
        table.add_column(column)
    for arch, by_t in sorted(by_arch_t.items(), key=lambda item: _width(fp32, item[0])):
        means = {t: statistics.mean(accs) for t, accs in by_t.items()}
        best, worst = max(means, key=means.__getitem__), min(means, key=means.__getitem__)
        table.add_row(arch, f"{best:g}", f"{means[best]:.4f}", f"{worst:g}", f"{means[worst]:.4f}")
    alphas = {alpha: statistics.mean(accs) for alpha, accs in by_alpha.items()}
    best_alpha = max(alphas, key=alphas.__getitem__)
    table.caption = "alpha (all architectures and T): " + ", ".join(
        f"{alpha:g} -> {mean:.4f}" + (" (best)" if alpha == best_alpha else "")
        for alpha, mean in sorted(alphas.items())
    )
    return table


def quantization_table(registry: dict[str, Any]) -> Table:
    """Each INT8 file against its FP32 parent: accuracy change, latency ratios, size ratio."""
    by_id = {entry["id"]: entry for entry in reg.candidates(registry)}
    table = Table(title="INT8 against its FP32 parent (medians over the candidates)")
    for column in ("quantization", "files", "rejected", "accuracy change", "latency @1",
                   "latency @64", "file size"):  # fmt: skip
        table.add_column(column)
    for kind in ("int8-dynamic", "int8-static"):
        pairs = [(entry, by_id[entry["lineage"]["parent_id"]]) for entry in by_id.values()
                 if entry["lineage"]["quantization"] == kind]  # fmt: skip
        if not pairs:
            continue

        rejected = sum(q["status"] != reg.ACCEPTED for q, _ in pairs)
        table.add_row(
            kind, str(len(pairs)), str(rejected),
            f"{_median(pairs, lambda q, p: _acc(q) - _acc(p)) * 100:+.2f} points",
            f"{_median(pairs, lambda q, p: _ms(q, 1) / _ms(p, 1)):.2f}x",
            f"{_median(pairs, lambda q, p: _ms(q, 64) / _ms(p, 64)):.2f}x",
            f"{_median(pairs, lambda q, p: q['file_bytes'] / p['file_bytes']):.2f}x",
        )  # fmt: skip
    return table


def _median(pairs: list[tuple[Any, Any]], ratio: Any) -> float:
    return float(statistics.median(ratio(q, p) for q, p in pairs))


def _acc(entry: dict[str, Any]) -> float:
    return float(entry["test_accuracy"])


def _ms(entry: dict[str, Any], batch: int) -> float:
    return float(entry["latency_ms"][f"batch_{batch}"])


def _width(fp32: list[dict[str, Any]], arch: str) -> int:
    return int(next(e["parameters"] for e in fp32 if e["lineage"]["architecture"] == arch))


def plot(registry: dict[str, Any], beaten: set[str], path: Path) -> None:
    """Accuracy against batch-1 latency: FP32 circles, INT8 triangles, the frontier joined and
    ringed, rejected conversions crossed, the teacher a star."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 6), dpi=110)
    markers = {"fp32": "o", "int8-dynamic": "^", "int8-static": "v"}
    for kind, marker in markers.items():
        group = [e for e in reg.candidates(registry) if e["lineage"]["quantization"] == kind]
        ok = [e for e in group if e["status"] == reg.ACCEPTED]
        ax.scatter([_us(e) for e in ok], [e["test_accuracy"] for e in ok], marker=marker,
                   alpha=0.55, label=kind.upper())  # fmt: skip
        rejected = [e for e in group if e["status"] != reg.ACCEPTED]
        if rejected:
            ax.scatter([_us(e) for e in rejected], [e["test_accuracy"] for e in rejected],
                       marker="x", color="red", label=f"{kind.upper()} rejected")  # fmt: skip
    front = sorted(
        (e for e in reg.candidates(registry)
         if e["status"] == reg.ACCEPTED and e["id"] not in beaten),
        key=_us,
    )  # fmt: skip
    ax.plot([_us(e) for e in front], [e["test_accuracy"] for e in front], color="black",
            drawstyle="steps-post", linewidth=1, label="Pareto frontier")  # fmt: skip
    ax.scatter([_us(e) for e in front], [e["test_accuracy"] for e in front], s=120,
               facecolors="none", edgecolors="black")  # fmt: skip
    teacher = reg.teacher(registry)
    ax.scatter([_us(teacher)], [teacher["test_accuracy"]], marker="*", s=250, color="gold",
               edgecolors="black", label="teacher", zorder=5)  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("ONNX Runtime CPU latency at batch 1 (us, log scale)")
    ax.set_ylabel("test accuracy")
    ax.set_title("distilled students: accuracy against latency")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _us(entry: dict[str, Any]) -> float:
    return float(entry["latency_ms"]["batch_1"]) * 1000.0

"""How a gate's result reads to a person: its numbers with their unit, as a table row (``status``,
the report) or as a few words (the decision line a running controller prints)."""

from __future__ import annotations

import math
import time
from typing import Any

UNITS = {
    "max_latency_ms": " ms",
    "max_latency_ratio": "x",
    "max_kl": " nats",
    "max_cost_per_1k": " $ per 1k",
}  # the others are fractions
HEADER = ("gate", "verdict", "value", "interval", "threshold", "samples", "why")


def amount(gate: dict[str, Any], value: float) -> str:
    if math.isnan(value):
        return "-"
    if math.isinf(value):
        return "inf"
    return f"{value:.4g}{UNITS.get(str(gate['gate']), '')}"


def verdict(gate: dict[str, Any]) -> str:
    """The verdict, marked for a dry-run gate (it never decides)."""
    return f"{gate['verdict']} (dry run)" if gate.get("dry_run") else str(gate["verdict"])


def row(gate: dict[str, Any]) -> tuple[str, ...]:
    return (
        str(gate["gate"]),
        verdict(gate),
        amount(gate, gate["value"]),
        f"[{amount(gate, gate['low'])}, {amount(gate, gate['high'])}]",
        amount(gate, gate["threshold"]),
        f"{gate['samples']:.0f}",
        str(gate["reason"]),
    )


def text_table(gates: list[dict[str, Any]]) -> list[str]:
    """Aligned columns; the last (why) is left ragged."""
    rows = [HEADER, *(row(gate) for gate in gates)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADER) - 1)]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(r, widths, strict=False)) + "  " + r[-1]
        for r in rows
    ]


MARKS = {"pass": "+", "fail": "x", "inconclusive": "?"}


def interval_history(analyses: list[tuple[float, list[dict[str, Any]]]], last: int) -> list[str]:
    """Each gate's interval over the step's latest ``last`` analyses (when, gate results), oldest
    first, against its threshold: ``max_error_rate <= 0.001: 12:00:10 [0, 0.0031]? ...``, the mark
    after each interval its verdict (+ pass, x fail, ? inconclusive)."""
    shown = analyses[-last:]
    gates = list(dict.fromkeys(g["gate"] for _, results in shown for g in results
                               if g["verdict"] != "skipped"))  # fmt: skip
    lines = []
    for name in gates:
        cells, threshold = [], None
        for at, results in shown:
            for g in results:
                if g["gate"] == name and g["verdict"] != "skipped":
                    threshold = g
                    when = time.strftime("%H:%M:%S", time.localtime(at))
                    cells.append(f"{when} [{amount(g, g['low'])}, {amount(g, g['high'])}]"
                                 f"{MARKS.get(str(g['verdict']), '')}")  # fmt: skip
        if threshold is None:
            continue
        sign = ">=" if name.startswith("min") else "<="
        dry = " (dry run)" if threshold.get("dry_run") else ""
        lines.append(f"{name}{dry} {sign} {amount(threshold, threshold['threshold'])}: "
                     + "  ".join(cells))  # fmt: skip
    return lines


def deciding(gates: list[dict[str, Any]]) -> str:
    """The gates behind a decision in a few words: the failing ones with their value, else the
    inconclusive ones, else how many passed; with the samples they rest on. Dry-run gates never
    decide, so they are left out."""
    gates = [g for g in gates if not g.get("dry_run")]
    failed = [g for g in gates if g["verdict"] == "fail"]
    pending = [g for g in gates if g["verdict"] == "inconclusive"]
    judged = [g for g in gates if g["verdict"] != "skipped"]
    if not judged:
        return ""
    samples = f"{min(g['samples'] for g in judged):.0f} samples"
    if failed:
        sign = {True: ">", False: "<"}
        return (
            "; ".join(
                f"{g['gate']} {amount(g, g['value'])} {sign[g['gate'].startswith('max')]} "
                f"{amount(g, g['threshold'])}"
                for g in failed
            )
            + f" ({samples})"
        )
    if pending:
        return f"undecided: {', '.join(g['gate'] for g in pending)} ({samples})"
    return f"{len(judged)} gates pass ({samples})"

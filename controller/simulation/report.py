"""The simulation's results: a terminal table and the JSON file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from controller.simulation.runner import Summary
from controller.simulation.scenarios import dark_launch_scenarios


def _percent(value: float | None) -> str:
    return "" if value is None else f"{value:.1%}"


def print_table(summaries: list[Summary], console: Console) -> None:
    table = Table(title="Decision quality: one step per rollout, the same simulated data per judge")
    for column in ("scenario", "share", "judge", "promoted", "rolled back", "timed out",
                   "right", "false rollback", "miss", "median s", "p95 s"):  # fmt: skip
        table.add_column(column, justify="left" if column in ("scenario", "judge") else "right")
    previous = None
    for s in summaries:
        first = (s.scenario, s.share) != previous
        previous = (s.scenario, s.share)
        table.add_row(
            s.scenario if first else "", f"{s.share:.0%}" if first else "", s.judge,
            _percent(s.promoted_rate), _percent(s.rolled_back_rate),
            _percent(s.inconclusive_rate), _percent(s.right_decision_rate),
            _percent(s.false_rollback_rate), _percent(s.miss_rate),
            f"{s.median_time_to_decision_s:.0f}", f"{s.p95_time_to_decision_s:.0f}",
            end_section=s.judge == "mann_whitney",
        )  # fmt: skip
    console.print(table)


def write_json(summaries: list[Summary], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([s.as_dict() for s in summaries], indent=1) + "\n")


README_SCENARIOS = ("good", "good, 1 point worse", "3 points worse", "10 points worse",
                    "agreement 0.90", "p99 1.5x", "p99 2x", "p99 7x", "good, noisy teacher",
                    "p99 2x, noisy teacher", "p99 7x, noisy teacher", "1 % errors",
                    "good, 10 % labelled", "3 points worse, 10 % labelled", "good, traffic gap",
                    "good, slow traffic (6 req/s)", "good, last step (100 %)",
                    "p99 2x, last step (100 %)",
                    *(s.name for s in dark_launch_scenarios()))  # fmt: skip
"""The rows docs/simulation.md shows, at each share; the JSON has every scenario."""


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """README's table, from the JSON rows: per scenario and share, each judge's right decisions
    and the median seconds to a decision."""
    judges = ("controller", "threshold", "mann_whitney")
    lines = ["| student | share | " + " | ".join(f"{j}: right (median s)" for j in judges) + " |",
             "|---|---|" + "---|" * len(judges)]  # fmt: skip
    cells = {(row["scenario"], row["share"], row["judge"]): row for row in rows}
    for share in sorted({row["share"] for row in rows}):
        for scenario in README_SCENARIOS:
            if (scenario, share, judges[0]) not in cells:
                continue
            shown = []
            for judge in judges:
                cell = cells[(scenario, share, judge)]
                rate, seconds = cell["right_decision_rate"], cell["median_time_to_decision_s"]
                shown.append(f"{rate:.1%} ({seconds:.0f})")
            lines.append(f"| {scenario} | {share:.0%} | " + " | ".join(shown) + " |")
    return "\n".join(lines)


def before_after_table(before: list[dict[str, Any]], after: list[dict[str, Any]]) -> str:
    """README's before/after table for this controller: every scenario both runs share."""
    old = {(r["scenario"], r["share"]): r for r in before if r["judge"] == "controller"}
    lines = ["| student | share | before: right (median s) | after: right (median s) |",
             "|---|---|---|---|"]  # fmt: skip
    for row in after:
        if row["judge"] != "controller":
            continue
        key = (row["scenario"], row["share"])
        was = old.get(key)
        if was is None:
            continue
        cells = [f"{r['right_decision_rate']:.1%} ({r['median_time_to_decision_s']:.0f})"
                 if r else "-" for r in (was, row)]  # fmt: skip
        lines.append(f"| {key[0]} | {key[1]:.0%} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def at_threshold_table(after: list[dict[str, Any]]) -> str:
    """Promoted at each gate's threshold: the error the policy's confidence bounds."""
    lines = ["| gate at its threshold | share | promoted | runs |", "|---|---|---|---|"]
    for row in after:
        if row["judge"] == "controller" and row["scenario"].startswith("at threshold: "):
            gate = row["scenario"].removeprefix("at threshold: ")
            lines.append(f"| `{gate}` | {row['share']:.0%} | {row['promoted_rate']:.1%} | "
                         f"{row['runs']} |")  # fmt: skip
    return "\n".join(lines)

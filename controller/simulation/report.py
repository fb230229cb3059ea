"""The simulation's results: a terminal table and the JSON file."""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from controller.simulation.runner import Summary


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

"""`distill-canary`: run a rollout, and drive it (status, pause, resume, promote, abort).

Commands reach a running controller through its state file (SQLite): access to that file is
what authorises them, so it is created readable by its owner only.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Annotated

import httpx
import typer
from prometheus_client import CollectorRegistry, start_http_server
from rich.console import Console
from rich.table import Table

from controller.actuator import GatewayFleet
from controller.exporter import ControllerMetrics
from controller.policy import PolicyError, load_policy
from controller.reporter import decision_line, make_reporter
from controller.rollout import CanaryController
from controller.sources import create_source
from controller.state import Command, Phase, StateStore

app = typer.Typer(help=__doc__, no_args_is_help=True, add_completion=False)
DEFAULT_STATE = Path("distill-canary.db")
StateOption = Annotated[Path, typer.Option("--state", help="The rollout's state file.")]
EXIT_USAGE = 2


@app.command()
def run(
    gateway: Annotated[
        list[str], typer.Option("--gateway", help="A gateway's base URL; repeat for replicas.")
    ],
    policy: Annotated[Path, typer.Option("--policy", help="The rollout policy (YAML).")],
    prometheus: Annotated[
        str | None, typer.Option(help="Prometheus base URL; default: scrape the gateways.")
    ] = None,
    state: StateOption = DEFAULT_STATE,
    metrics_port: Annotated[
        int, typer.Option(help="Serve the controller's metrics on this port (0: off).")
    ] = 0,
    metrics_linger: Annotated[
        float,
        typer.Option(
            help="Keep serving metrics this long after the end, so Prometheus scrapes "
            "the final phase, promotion or rollback."
        ),
    ] = 15.0,
) -> None:
    """Run one rollout to its end: exit 0 when promoted, 3 when rolled back (4 when some gateway
    never confirmed the rollback)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request is noise here
    try:
        rollout_policy = load_policy(policy)
    except PolicyError as exc:
        typer.echo(f"distill-canary: {exc}", err=True)
        raise typer.Exit(EXIT_USAGE) from None
    registry = CollectorRegistry()
    metrics = ControllerMetrics(registry, gates=list(rollout_policy.gates.configured()))
    if metrics_port:
        start_http_server(metrics_port, addr="127.0.0.1", registry=registry)
    urls = [url.rstrip("/") for url in gateway]
    token = os.environ.get("DISTILL_GATEWAY_ADMIN_TOKEN")
    with httpx.Client(timeout=5.0) as client:
        controller = CanaryController(
            policy=rollout_policy,
            fleet=GatewayFleet(urls, token, client),
            source=create_source(urls, prometheus, rollout_policy.model, client),
            store=_open_store(state),
            reporter=make_reporter(rollout_policy),
            metrics=metrics,
        )
        code = controller.run()
    if metrics_port and metrics_linger > 0:
        time.sleep(metrics_linger)
    final = controller.state
    typer.echo(f"rollout {final.phase.value}" + (
        f": {final.rollback_reason}" if final.rollback_reason else ""))  # fmt: skip
    raise typer.Exit(code)


@app.command()
def status(
    state: StateOption = DEFAULT_STATE,
    history: Annotated[int, typer.Option(help="How many past decisions to show.")] = 20,
) -> None:
    """The rollout's phase, step, share, last analysis and decisions."""
    rollout = _existing_store(state).load()
    if rollout is None:
        typer.echo(f"no rollout recorded in {state}", err=True)
        raise typer.Exit(1)
    console = Console(width=None if sys.stdout.isatty() else 160)
    at_step = (f"{time.time() - rollout.step_started_at:.0f} s" if rollout.step_started_at
               else "not started (share not yet confirmed)")  # fmt: skip
    console.print(f"phase: {rollout.phase.value}")
    steps = ", ".join(f"{step:g}%" for step in rollout.steps)
    console.print(f"step: {rollout.step_index + 1} of [{steps}], student share {rollout.share:.0%}")
    console.print(f"time at this step: {at_step}")
    if rollout.rollback_reason:
        console.print(f"rolled back because: {rollout.rollback_reason}")
    table = Table(title="last analysis")
    for column in ("gate", "verdict", "value", "interval", "threshold", "samples", "why"):
        table.add_column(column)
    for gate in rollout.last_analysis:
        table.add_row(
            str(gate["gate"]), str(gate["verdict"]), f"{gate['value']:.4g}",
            f"[{gate['low']:.4g}, {gate['high']:.4g}]", f"{gate['threshold']:.4g}",
            f"{gate['samples']:.0f}", str(gate["reason"]),
        )  # fmt: skip
    console.print(table)
    console.print("decisions:")
    for record in rollout.history[-history:]:
        line = decision_line(record, len(rollout.steps))
        console.print("  " + line, highlight=False, soft_wrap=True)


@app.command()
def report(
    state: StateOption = DEFAULT_STATE,
    out: Annotated[Path, typer.Option(help="The HTML file to write.")] = Path("rollout.html"),
) -> None:
    """Write a self-contained HTML report of the rollout (PNG charts inlined)."""
    rollout = _existing_store(state).load()
    if rollout is None:
        typer.echo(f"no rollout recorded in {state}", err=True)
        raise typer.Exit(1)
    from controller.report import write_report

    write_report(rollout, out)
    typer.echo(f"wrote {out}")


def _operator_command(state: Path, command: Command) -> None:
    store = _existing_store(state)
    rollout = store.load()
    if rollout is None or rollout.phase.terminal:
        what = "no rollout" if rollout is None else f"the rollout is {rollout.phase.value}"
        typer.echo(f"distill-canary: nothing to {command.value}: {what}", err=True)
        raise typer.Exit(1)
    store.send(command)
    typer.echo(f"sent {command.value}; the controller acts on it within one interval")


@app.command()
def pause(state: StateOption = DEFAULT_STATE) -> None:
    """Hold the rollout at its step (it still rolls back on a failing gate)."""
    _operator_command(state, Command.PAUSE)


@app.command()
def resume(state: StateOption = DEFAULT_STATE) -> None:
    """Let a paused rollout progress again."""
    _operator_command(state, Command.RESUME)


@app.command()
def promote(
    state: StateOption = DEFAULT_STATE,
    full: Annotated[bool, typer.Option("--full", help="Go straight to 100 %.")] = False,
) -> None:
    """Skip the rest of this step's analysis and go to the next step (--full: to 100 %)."""
    _operator_command(state, Command.PROMOTE_FULL if full else Command.PROMOTE)


@app.command()
def abort(state: StateOption = DEFAULT_STATE) -> None:
    """Roll back now: share 0 on every gateway."""
    _operator_command(state, Command.ABORT)


def _open_store(path: Path) -> StateStore:
    created = not path.exists()
    store = StateStore(path)
    if created:
        path.chmod(0o600)
    return store


def _existing_store(path: Path) -> StateStore:
    if not path.exists():
        typer.echo(f"distill-canary: no state file at {path}", err=True)
        raise typer.Exit(1)
    return StateStore(path)


def main() -> None:
    app()


__all__ = ["Phase", "main"]

"""How a running rollout talks to the person who started it: one line per decision, and on a
terminal a live progress bar for the current step."""

from __future__ import annotations

import sys
import time
from typing import Protocol

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from controller.gate_table import deciding
from controller.policy import Policy
from controller.rollout_store import DecisionRecord, RolloutState

REASON_CHARACTERS = 110  # the whole reason is in `status` and the report


def decision_line(record: DecisionRecord, step_count: int) -> str:
    """One short line: when, where, the outcome and why, and the gates that decided it."""
    when = time.strftime("%H:%M:%S", time.localtime(record.at))
    reason = record.reason
    if len(reason) > REASON_CHARACTERS:
        reason = reason[: REASON_CHARACTERS - 3] + "..."
    line = (f"{when} step {record.step_index + 1}/{step_count} at {record.share:.0%} "
            f"{record.action}: {reason}")  # fmt: skip
    gates = deciding(record.gates)
    return f"{line} [{gates}]" if gates else line


class Reporter(Protocol):
    def decision(self, record: DecisionRecord, state: RolloutState) -> None: ...
    def progress(self, state: RolloutState, now: float) -> None: ...
    def close(self) -> None: ...


class PlainReporter:
    """Plain lines, for logs and pipes."""

    def __init__(self, policy: Policy) -> None:
        self._policy = policy

    def decision(self, record: DecisionRecord, state: RolloutState) -> None:
        print(decision_line(record, len(self._policy.steps)), flush=True)

    def progress(self, state: RolloutState, now: float) -> None:
        pass

    def close(self) -> None:
        pass


class RichReporter:
    """The same lines, plus a progress bar of the step's bake time, on a terminal."""

    def __init__(self, policy: Policy) -> None:
        self._policy = policy
        self._console = Console()
        self._progress = Progress(
            TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
            console=self._console, transient=True,
        )  # fmt: skip
        self._task = self._progress.add_task("starting", total=policy.pass_after_seconds or 1)
        self._progress.start()

    def decision(self, record: DecisionRecord, state: RolloutState) -> None:
        self._console.print(decision_line(record, len(self._policy.steps)), highlight=False)

    def progress(self, state: RolloutState, now: float) -> None:
        elapsed = now - state.step_started_at if state.step_started_at else 0.0
        description = (f"{state.phase.value}: step {state.step_index + 1}/"
                       f"{len(self._policy.steps)} at {state.share:.0%}")  # fmt: skip
        passes_after = self._policy.pass_after_seconds or 1
        self._progress.update(self._task, description=description,
                              completed=min(elapsed, passes_after))  # fmt: skip

    def close(self) -> None:
        self._progress.stop()


def make_reporter(policy: Policy) -> Reporter:
    return RichReporter(policy) if sys.stdout.isatty() else PlainReporter(policy)

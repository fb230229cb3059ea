"""The rollout's persisted state and the operators' command inbox, in one SQLite file.

SQLite gives atomic writes and lets ``pause``/``resume``/``promote``/``abort`` from another
process reach a running controller safely (a row in ``commands``, taken at the next tick).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any


class Phase(StrEnum):
    PROGRESSING = "Progressing"
    """Moving through the steps: analysing, and advancing when every gate passes."""
    PAUSED = "Paused"
    """Held at its step by an operator; still analysing, and still rolls back on failure."""
    PROMOTED = "Promoted"
    """Done: the student serves 100 %."""
    ROLLED_BACK = "RolledBack"
    """Done: the teacher serves 100 %; ``rollback_reason`` says why."""

    @property
    def terminal(self) -> bool:
        return self in (Phase.PROMOTED, Phase.ROLLED_BACK)


class Command(StrEnum):
    PAUSE = "pause"
    RESUME = "resume"
    PROMOTE = "promote"
    PROMOTE_FULL = "promote-full"
    ABORT = "abort"


@dataclass
class DecisionRecord:
    at: float
    step_index: int
    share: float
    action: str
    reason: str
    gates: list[dict[str, Any]] = field(default_factory=list)
    observations: dict[str, Any] = field(default_factory=dict)  # see analysis.observe


@dataclass
class RolloutState:
    phase: Phase = Phase.PROGRESSING
    steps: list[float] = field(default_factory=list)  # the policy's, for display
    step_index: int = 0
    share: float = 0.0
    started_at: float = field(default_factory=time.time)
    step_started_at: float | None = None  # None until every gateway confirmed the step's share
    consecutive_failures: int = 0
    rollback_reason: str | None = None
    step_mark: dict[str, Any] | None = None  # metrics at the step's start (see sources.Mark)
    rollout_mark: dict[str, Any] | None = None
    last_analysis: list[dict[str, Any]] = field(default_factory=list)
    history: list[DecisionRecord] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> RolloutState:
        data = json.loads(text)
        data["phase"] = Phase(data["phase"])
        data["history"] = [DecisionRecord(**record) for record in data["history"]]
        return cls(**data)


class StateStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute("create table if not exists rollout (id integer primary key check (id = 1),"
                       " state text not null, updated_at real not null)")  # fmt: skip
            db.execute("create table if not exists commands (id integer primary key autoincrement,"
                       " command text not null, created_at real not null)")  # fmt: skip

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """One transaction: committed on success, rolled back on error, always closed."""
        connection = sqlite3.connect(self.path, timeout=10.0)
        try:
            with connection:
                yield connection
        finally:
            connection.close()

    def load(self) -> RolloutState | None:
        with self._connect() as db:
            row = db.execute("select state from rollout where id = 1").fetchone()
        return RolloutState.from_json(row[0]) if row else None

    def save(self, state: RolloutState) -> None:
        with self._connect() as db:
            db.execute(
                "insert into rollout (id, state, updated_at) values (1, ?, ?) "
                "on conflict (id) do update set state = excluded.state, "
                "updated_at = excluded.updated_at",
                (state.to_json(), time.time()),
            )

    def reset(self) -> None:
        """Forget the finished rollout (and any stale commands) before a new one starts."""
        with self._connect() as db:
            db.execute("delete from rollout")
            db.execute("delete from commands")

    def send(self, command: Command) -> None:
        with self._connect() as db:
            db.execute(
                "insert into commands (command, created_at) values (?, ?)",
                (command.value, time.time()),
            )

    def has_commands(self) -> bool:
        with self._connect() as db:
            return db.execute("select 1 from commands limit 1").fetchone() is not None

    def take_commands(self) -> list[Command]:
        """The commands sent since the last call, oldest first, each taken once."""
        with self._connect() as db:
            rows = db.execute("select id, command from commands order by id").fetchall()
            if rows:
                db.execute("delete from commands where id <= ?", (rows[-1][0],))
        return [Command(command) for _, command in rows]

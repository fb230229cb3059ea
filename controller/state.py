"""Every rollout's persisted state, the controller's lease and the operators' commands, in one
SQLite file.

SQLite gives atomic writes, so two processes can share the file safely: the controller that holds
the lease is the only one that acts on the rollout, and ``pause``/``resume``/``promote``/``abort``
from another process reach it as rows in ``commands``, which it acknowledges with what it did.
Every rollout is kept (``rollouts``, one row each), so a new rollout never erases an old one.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sqlite3
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from enum import StrEnum
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

STATE_FILE_MODE = 0o600  # access to the state file is what authorises operators' commands
HISTORY_IN_MEMORY = 500
"""Decisions a running controller keeps in ``RolloutState.history`` after a save; the file keeps
them all (``decisions``: appended, never rewritten), and ``load`` reads them all back."""


class Phase(StrEnum):
    PROGRESSING = "Progressing"
    """Moving through the steps: analysing, and advancing when every gate passes."""
    PAUSED = "Paused"
    """Held at its step by an operator (or a drift): still analysing and still rolled back by a
    failing gate, but never advanced. A pause before the step's share was confirmed leaves the
    share alone until ``resume``."""
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
    APPROVE = "approve"  # with the gate it releases: ``approve:confirm-promotion``


class Record(StrEnum):
    """What a line of a rollout's history records."""

    STARTED = "started"  # a controller started the rollout
    RESUMED = "resumed"  # a controller took over an unfinished rollout
    SET = "set"  # every gateway confirmed the step's share
    HOLD = "hold"  # an analysis (or a wait for the fleet) kept the step
    ADVANCE = "advance"  # on to the next step
    PROMOTE = "promote"  # the last step passed (or an operator promoted it)
    PROMOTE_FULL = "promote-full"  # an operator skipped the remaining steps
    ROLLBACK = "rollback"  # the decision to roll back, and why
    PAUSE = "pause"
    RESUME = "resume"
    DRIFT = "drift"  # a gateway served a share the controller did not set
    REFUSED = "refused"  # an operator's command that could not act; the reason says why
    STOPPED = "stopped"  # SIGTERM: saved, to be resumed
    PROMOTED = "promoted"  # ended: the student serves 100 %
    ROLLED_BACK = "rolled back"  # ended: share 0 sent to every gateway
    ROLLBACK_UNCONFIRMED = "rollback unconfirmed"  # some gateway never confirmed share 0
    WAITING = "waiting"  # a webhook gate or a manual approval holds the next step
    APPROVED = "approved"  # an operator released a manual gate (``distill-canary approve``)
    GATE = "gate"  # a webhook gate's answer worth keeping (pre-rollout, rollback, post-rollout)
    WATCH = "watch"  # a look of the post-promotion watch (controller/watch.py), and its verdict


class StateError(Exception):
    """The state file cannot be used; the message says which file and why, in one line."""


class LeaseHeld(StateError):
    """Another live controller holds the rollout."""


class LeaseLost(StateError):
    """This controller's lease was taken over: it must stop acting at once."""


@dataclass
class DecisionRecord:
    at: float
    step_index: int
    share: float
    action: Record
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
    # when this step's share was first confirmed; a drift's re-set restarts the analysis window
    # (step_started_at), never this: the step's max_step_seconds counts from here
    step_entered_at: float | None = None
    held_since: float | None = None  # when the fleet last stopped confirming or answering
    consecutive_failures: int = 0
    rollback_reason: str | None = None
    step_mark: dict[str, Any] | None = None  # metrics at the step's start (see sources.Mark)
    rollout_mark: dict[str, Any] | None = None
    last_analysis: list[dict[str, Any]] = field(default_factory=list)
    history: list[DecisionRecord] = field(default_factory=list)  # the latest; see history_offset
    history_offset: int = 0  # decisions older than ``history[0]``, on disk only (HISTORY_IN_MEMORY)
    rollout_id: int = 0  # the row in ``rollouts``; assigned by the store
    policy: dict[str, Any] = field(default_factory=dict)  # as run, for `status`, report, retry
    gateways: list[str] = field(default_factory=list)
    prometheus: str | None = None
    prometheus_selector: str = ""
    state_url: str | None = None  # the fleet's store: replicas found there at every tick
    generations: dict[str, int] = field(default_factory=dict)  # per gateway, as we last set it
    paused_by: str | None = None
    ended_at: float | None = None
    name: str | None = None  # run --name: one rollout per name
    student: dict[str, Any] | None = None  # run --student: the registry's id, name and lineage
    promote_when_confirmed: bool = False  # promote --full: ends promoted once 100 % is confirmed
    # what holds the next step (webhook gates, manual approvals): see controller/approval.py
    waiting: dict[str, Any] | None = None
    approved: list[str] = field(default_factory=list)  # manual gates released for that wait

    def to_json(self) -> str:
        """Everything but the decisions, which the file keeps a row each (``decisions``): a tick
        rewrites this small record, never the history it has added to."""
        return json.dumps({f.name: getattr(self, f.name) for f in fields(self)
                           if f.name not in ("history", "history_offset")})  # fmt: skip

    @classmethod
    def from_json(cls, text: str) -> RolloutState:
        """State files of earlier versions kept the decisions in this record: they are read
        from it, and go to ``decisions`` at the next save."""
        data = json.loads(text)
        data["phase"] = Phase(data["phase"])
        data["history"] = [_decision(record) for record in data.get("history", [])]
        data.pop("history_offset", None)
        return cls(**data)


def _sent(command_id: int, text: str, sender: str) -> SentCommand | None:
    """None for a command this controller does not know (a newer CLI's, during an upgrade)."""
    command, _, argument = text.partition(":")
    if command not in set(Command):
        return None
    return SentCommand(command_id, Command(command), sender, argument)


def _decision(record: dict[str, Any]) -> DecisionRecord:
    return DecisionRecord(**{**record, "action": Record(record["action"])})


@dataclass(frozen=True)
class Lease:
    holder: str
    expires_at: float
    heartbeat_at: float

    def alive(self, now: float) -> bool:
        """Unexpired, and (when its holder ran on this host) its process still exists."""
        return self.expires_at > now and not _gone_from_this_host(self.holder)


@dataclass(frozen=True)
class SentCommand:
    id: int
    command: Command
    sender: str
    argument: str = ""  # approve: the gate it releases


@dataclass(frozen=True)
class CommandOutcome:
    taken: bool  # False while waiting, and when it expired unacknowledged
    acted: bool
    note: str


def new_holder_id() -> str:
    """``host:pid:nonce``: the host and pid let a successor on the same host see that the holder's
    process is gone; the nonce tells a restarted process (same pid in a new container) apart."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _gone_from_this_host(holder: str) -> bool:
    host, _, rest = holder.partition(":")
    pid_text, _, _ = rest.partition(":")
    if host != socket.gethostname() or not pid_text.isdigit():
        return False  # another host: only the expiry tells
    pid = int(pid_text)
    if pid == os.getpid():
        return True  # our own pid but another holder id: an earlier life of this container
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


_SCHEMA = (
    "create table if not exists rollouts (id integer primary key autoincrement,"
    " state text not null, updated_at real not null)",
    "create table if not exists lease (id integer primary key check (id = 1),"
    " holder text not null, expires_at real not null, heartbeat_at real not null)",
    "create table if not exists commands (id integer primary key autoincrement,"
    " rollout_id integer not null, command text not null, sender text not null,"
    " created_at real not null, expires_at real not null,"
    " taken_at real, acted integer, outcome text)",
    "create table if not exists decisions (rollout_id integer not null, seq integer not null,"
    " record text not null, primary key (rollout_id, seq))",
)


def _migrate_single_rollout_table(db: sqlite3.Connection) -> None:
    """State files of earlier versions kept one rollout in ``rollout``: keep it as the first."""
    tables = {row[0] for row in db.execute("select name from sqlite_master")}
    if "rollout" in tables:
        db.execute("insert into rollouts (state, updated_at) select state, updated_at from rollout")
        db.execute("drop table rollout")


def _has_table(db: sqlite3.Connection, name: str) -> bool:
    found = db.execute("select 1 from sqlite_master where type = 'table' and name = ?", (name,))
    return found.fetchone() is not None


def _append_decisions(db: sqlite3.Connection, state: RolloutState) -> None:
    """The decisions of ``state`` the file does not hold yet (numbered from the rollout's first)."""
    (held,) = db.execute("select count(*) from decisions where rollout_id = ?",
                         (state.rollout_id,)).fetchone()  # fmt: skip
    new = state.history[max(0, held - state.history_offset) :]
    first = state.history_offset + len(state.history) - len(new)
    db.executemany("insert into decisions (rollout_id, seq, record) values (?, ?, ?)",
                   [(state.rollout_id, first + i, json.dumps(asdict(record)))
                    for i, record in enumerate(new)])  # fmt: skip


class StateStore:
    """Open with ``create`` (the controller) or ``open_existing`` (every other command)."""

    def __init__(self, path: Path, read_only: bool) -> None:
        self.path = path
        self._read_only = read_only

    @classmethod
    def create(cls, path: Path) -> StateStore:
        """Opens the state file for a controller, creating it (mode 0600) when missing."""
        if path.is_dir():
            raise StateError(f"state file {path} is a directory")
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, STATE_FILE_MODE))
        store = cls(path, read_only=False)
        store._check_sqlite()
        with store._connect(immediate=True) as db:
            for statement in _SCHEMA:
                db.execute(statement)
            _migrate_single_rollout_table(db)
        return store

    @classmethod
    def open_existing(cls, path: Path, read_only: bool = True) -> StateStore:
        """Opens a state file a controller made; never creates or changes its tables."""
        if not path.exists():
            raise StateError(f"no state file at {path}")
        if path.is_dir():
            raise StateError(f"state file {path} is a directory")
        store = cls(path, read_only)
        store._check_sqlite()
        with store._connect() as db:
            tables = {row[0] for row in db.execute("select name from sqlite_master")}
        if "rollouts" not in tables:
            raise StateError(f"{path} holds no rollout state (no controller has run with it)")
        return store

    def _check_sqlite(self) -> None:
        try:
            with self._connect() as db:
                db.execute("select name from sqlite_master").fetchall()
        except sqlite3.DatabaseError as exc:
            raise StateError(f"{self.path} is not a distill-canary state file ({exc})") from None

    @contextmanager
    def _connect(self, immediate: bool = False) -> Iterator[sqlite3.Connection]:
        """One transaction: committed on success, rolled back on error, always closed.
        ``immediate`` takes the write lock at once, so a read-then-write cannot race."""
        mode = "ro" if self._read_only else "rw"
        try:
            connection = sqlite3.connect(
                f"file:{self.path}?mode={mode}", uri=True, timeout=10.0, isolation_level=None
            )
        except sqlite3.OperationalError as exc:
            raise StateError(f"cannot open state file {self.path}: {exc}") from None
        try:
            connection.execute("begin immediate" if immediate else "begin")
            try:
                yield connection
            except BaseException:
                connection.execute("rollback")
                raise
            connection.execute("commit")
        finally:
            connection.close()

    # -- rollouts ------------------------------------------------------------------------------

    def load(self, rollout_id: int | None = None) -> RolloutState | None:
        """A rollout by id; the latest when ``rollout_id`` is None."""
        with self._connect() as db:
            if rollout_id is None:
                row = db.execute("select id, state from rollouts order by id desc").fetchone()
            else:
                row = db.execute(
                    "select id, state from rollouts where id = ?", (rollout_id,)
                ).fetchone()
            if row is None:
                return None
            state = RolloutState.from_json(row[1])
            state.rollout_id = row[0]
            if _has_table(db, "decisions"):
                rows = db.execute("select record from decisions where rollout_id = ? order by seq",
                                  (state.rollout_id,)).fetchall()  # fmt: skip
                if rows:  # else a file of an earlier version: its record held them
                    state.history = [_decision(json.loads(r[0])) for r in rows]
        return state

    def rollout_ids(self) -> list[int]:
        with self._connect() as db:
            return [row[0] for row in db.execute("select id from rollouts order by id")]

    def add(self, state: RolloutState, holder: str) -> RolloutState:
        """Records a new rollout (the lease holder only); its id is set on ``state``."""
        with self._connect(immediate=True) as db:
            self._check_holder(db, holder)
            cursor = db.execute(
                "insert into rollouts (state, updated_at) values (?, ?)",
                (state.to_json(), time.time()),
            )
            assert cursor.lastrowid is not None
            state.rollout_id = cursor.lastrowid
            db.execute(
                "update rollouts set state = ? where id = ?", (state.to_json(), state.rollout_id)
            )
            _append_decisions(db, state)
        return state

    def save(self, state: RolloutState, holder: str) -> None:
        """Saves the rollout, only while ``holder`` holds the lease (else ``LeaseLost``): its
        small record, and the decisions added since the last save (appended). Then ``state``
        keeps only the latest ``HISTORY_IN_MEMORY`` decisions in memory."""
        with self._connect(immediate=True) as db:
            self._check_holder(db, holder)
            db.execute(
                "update rollouts set state = ?, updated_at = ? where id = ?",
                (state.to_json(), time.time(), state.rollout_id),
            )
            _append_decisions(db, state)
        dropped = len(state.history) - HISTORY_IN_MEMORY
        if dropped > 0:
            del state.history[:dropped]
            state.history_offset += dropped

    # -- the lease -----------------------------------------------------------------------------

    def lease(self) -> Lease | None:
        with self._connect() as db:
            row = db.execute("select holder, expires_at, heartbeat_at from lease").fetchone()
        return Lease(*row) if row else None

    def acquire(self, holder: str, ttl: float, now: float) -> Lease | None:
        """Takes the lease; returns the previous holder's lease when it had lapsed (a takeover),
        None when there was none; raises ``LeaseHeld`` while another live holder has it."""
        with self._connect(immediate=True) as db:
            row = db.execute("select holder, expires_at, heartbeat_at from lease").fetchone()
            previous = Lease(*row) if row else None
            if previous is not None and previous.holder != holder and previous.alive(now):
                raise LeaseHeld(
                    f"controller {previous.holder} holds this rollout (last heartbeat "
                    f"{now - previous.heartbeat_at:.0f} s ago; its lease expires in "
                    f"{previous.expires_at - now:.0f} s)"
                )
            db.execute(
                "insert into lease (id, holder, expires_at, heartbeat_at) values (1, ?, ?, ?) "
                "on conflict (id) do update set holder = excluded.holder, "
                "expires_at = excluded.expires_at, heartbeat_at = excluded.heartbeat_at",
                (holder, now + ttl, now),
            )
        return previous

    def renew(self, holder: str, ttl: float, now: float) -> None:
        """The heartbeat; raises ``LeaseLost`` when another controller took the lease."""
        with self._connect(immediate=True) as db:
            self._check_holder(db, holder)
            db.execute(
                "update lease set expires_at = ?, heartbeat_at = ? where holder = ?",
                (now + ttl, now, holder),
            )

    def release(self, holder: str) -> None:
        with self._connect(immediate=True) as db:
            db.execute("delete from lease where holder = ?", (holder,))

    @staticmethod
    def _check_holder(db: sqlite3.Connection, holder: str) -> None:
        row = db.execute("select holder from lease").fetchone()
        if row is None or row[0] != holder:
            taker = row[0] if row else "nobody"
            raise LeaseLost(f"the lease is held by {taker}, not by this controller ({holder})")

    # -- operators' commands -------------------------------------------------------------------

    def send(
        self, rollout_id: int, command: Command, sender: str, ttl: float, now: float,
        argument: str = "",
    ) -> int:  # fmt: skip
        text = f"{command.value}:{argument}" if argument else command.value
        with self._connect() as db:
            cursor = db.execute(
                "insert into commands (rollout_id, command, sender, created_at, expires_at) "
                "values (?, ?, ?, ?, ?)",
                (rollout_id, text, sender, now, now + ttl),
            )
            assert cursor.lastrowid is not None
            return cursor.lastrowid

    def has_commands(self, rollout_id: int) -> bool:
        with self._connect() as db:
            row = db.execute(
                "select 1 from commands where rollout_id = ? and taken_at is null limit 1",
                (rollout_id,),
            ).fetchone()
        return row is not None

    def take_commands(self, rollout_id: int, now: float) -> list[SentCommand]:
        """Commands waiting for this rollout, oldest first. Those past their expiry are closed
        as expired instead: a command nobody acted on in time must not fire later."""
        with self._connect(immediate=True) as db:
            db.execute(
                "update commands set taken_at = ?, acted = 0, outcome = 'expired: no controller "
                "acknowledged it in time' where taken_at is null and expires_at <= ?",
                (now, now),
            )
            rows = db.execute(
                "select id, command, sender from commands "
                "where rollout_id = ? and taken_at is null order by id",
                (rollout_id,),
            ).fetchall()
            known = []
            for row in rows:
                sent = _sent(row[0], row[1], row[2])
                if sent is None:  # closed, so its sender hears at once rather than at expiry
                    log.warning("ignored command %r from %s: unknown to this controller",
                                row[1], row[2])  # fmt: skip
                    db.execute(
                        "update commands set taken_at = ?, acted = 0, outcome = ? where id = ?",
                        (now, f"ignored: this controller does not know {row[1]!r}", row[0]),
                    )
                else:
                    known.append(sent)
        return known

    def acknowledge(self, command_id: int, acted: bool, outcome: str, now: float) -> None:
        with self._connect() as db:
            db.execute(
                "update commands set taken_at = ?, acted = ?, outcome = ? where id = ?",
                (now, int(acted), outcome, command_id),
            )

    def expire(self, command_id: int, now: float) -> None:
        """Closes a command still waiting (its sender gave up), so that it can never fire late."""
        with self._connect() as db:
            db.execute(
                "update commands set taken_at = ?, acted = 0, outcome = 'expired: no controller "
                "acknowledged it in time' where id = ? and taken_at is null",
                (now, command_id),
            )

    def outcome(self, command_id: int) -> CommandOutcome:
        with self._connect() as db:
            row = db.execute(
                "select taken_at, acted, outcome from commands where id = ?", (command_id,)
            ).fetchone()
        if row is None or row[0] is None:
            return CommandOutcome(False, False, "waiting for the controller")
        return CommandOutcome(True, bool(row[1]), row[2])

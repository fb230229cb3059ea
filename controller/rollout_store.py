"""Every rollout's persisted state, the controller's lease and the operators' commands, in one
SQLite file.

SQLite gives atomic writes, so two processes can share the file safely: each model has a lease of
its own (``leases``), so controllers of two models' rollouts run at once on one file while a second
controller of the same model is refused; the one that holds a model's lease is the only one that
acts on that model's rollout, and ``pause``/``resume``/``promote``/``abort``
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
DEFAULT_MODEL = "digits"
"""The model of a rollout whose policy names none (``Policy.model``'s default)."""
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

    @property
    def model(self) -> str:
        """The logical model this rollout moves the share of (its policy's ``model``)."""
        return str(self.policy.get("model", DEFAULT_MODEL))

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
    " state text not null, updated_at real not null, model text)",
    "create table if not exists leases (model text primary key,"
    " holder text not null, expires_at real not null, heartbeat_at real not null)",
    "create table if not exists commands (id integer primary key autoincrement,"
    " rollout_id integer not null, command text not null, sender text not null,"
    " created_at real not null, expires_at real not null,"
    " taken_at real, acted integer, outcome text)",
    "create table if not exists decisions (rollout_id integer not null, seq integer not null,"
    " record text not null, primary key (rollout_id, seq))",
    # the post-promotion watch's window, per model: a restarted watch keeps it
    "create table if not exists watch_windows (model text primary key, rollout_id integer,"
    " state text not null, saved_at real not null)",
)


def _migrate_single_rollout_table(db: sqlite3.Connection) -> None:
    """State files of earlier versions kept one rollout in ``rollout``: keep it as the first."""
    tables = {row[0] for row in db.execute("select name from sqlite_master")}
    if "rollout" in tables:
        db.execute("insert into rollouts (state, updated_at) select state, updated_at from rollout")
        db.execute("drop table rollout")


_LEGACY_LEASE = "lease"
"""Earlier versions' table: one lease (id = 1) for the whole file, whatever the model."""


def _model_of(record: str) -> str:
    """A rollout record's model (json.loads, not SQLite's JSON: a record may hold a NaN)."""
    return str(json.loads(record).get("policy", {}).get("model", DEFAULT_MODEL))


def _has_model_column(db: sqlite3.Connection) -> bool:
    return any(row[1] == "model" for row in db.execute("pragma table_info(rollouts)"))


def _migrate_rollout_models(db: sqlite3.Connection) -> None:
    """Earlier versions' rollouts have no ``model`` column: it is filled from each record."""
    if not _has_model_column(db):
        db.execute("alter table rollouts add column model text")
    rows = db.execute("select id, state from rollouts where model is null").fetchall()
    db.executemany("update rollouts set model = ? where id = ?",
                   [(_model_of(state), rollout_id) for rollout_id, state in rows])  # fmt: skip


def _rollout_models(db: sqlite3.Connection) -> list[tuple[int, str]]:
    """Every rollout's id and model, oldest first; in a file an earlier version made (read
    only, not migrated) each model is read from its record."""
    if _has_model_column(db):  # a row an earlier version added since has none: its record's
        rows = db.execute("select id, model from rollouts order by id").fetchall()
        unnamed = dict(db.execute("select id, state from rollouts where model is null")
                       if any(m is None for _, m in rows) else [])  # fmt: skip
        return [(i, str(m) if m is not None else _model_of(unnamed[i])) for i, m in rows]
    rows = db.execute("select id, state from rollouts order by id").fetchall()
    return [(rollout_id, _model_of(state)) for rollout_id, state in rows]


def _latest_model(db: sqlite3.Connection) -> str:
    models = _rollout_models(db)
    return models[-1][1] if models else DEFAULT_MODEL


LEGACY_HOLDER = "a controller of a newer version (leases per model): upgrade this one"
"""Who the earlier versions' one lease names once the file migrated: a holder that never lets it
go, so a controller of an earlier version refuses to start (LeaseHeld) or, already running,
finds its lease lost at its next heartbeat, and never acts beside one of this version."""


def _migrate_single_lease(db: sqlite3.Connection) -> None:
    """An earlier version's one lease becomes the lease of its latest rollout's model (the only
    model it could have been running), so a live controller of that version keeps its rollout
    until the lease lapses; the old table then holds ``LEGACY_HOLDER`` for good (in a new file
    too)."""
    # a file this version made has the old table too, held: an earlier version opening it
    # would otherwise make its own and take it beside this version's leases
    db.execute(f"create table if not exists {_LEGACY_LEASE} (id integer primary key check "
               "(id = 1), holder text not null, expires_at real not null, heartbeat_at real "
               "not null)")  # fmt: skip
    row = db.execute(f"select holder, expires_at, heartbeat_at from {_LEGACY_LEASE}").fetchone()
    if row is not None and row[0] == LEGACY_HOLDER:
        return  # migrated already
    if row is not None:
        db.execute("insert or ignore into leases (model, holder, expires_at, heartbeat_at) "
                   "values (?, ?, ?, ?)", (_latest_model(db), *row))  # fmt: skip
    db.execute(f"delete from {_LEGACY_LEASE}")
    db.execute(f"insert into {_LEGACY_LEASE} (id, holder, expires_at, heartbeat_at) "
               "values (1, ?, 1e18, 0)", (LEGACY_HOLDER,))  # fmt: skip


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


def _lease_row(db: sqlite3.Connection, model: str) -> Lease | None:
    """``model``'s lease; in a file an earlier version made (read only, not yet migrated), its one
    lease stands for its latest rollout's model."""
    if _has_table(db, "leases"):
        row = db.execute("select holder, expires_at, heartbeat_at from leases where model = ?",
                         (model,)).fetchone()  # fmt: skip
    elif _has_table(db, _LEGACY_LEASE) and _latest_model(db) == model:
        row = db.execute(f"select holder, expires_at, heartbeat_at from {_LEGACY_LEASE}").fetchone()
    else:
        row = None
    return Lease(*row) if row else None


class RolloutStore:
    """Open with ``create`` (the controller) or ``open_existing`` (every other command)."""

    def __init__(self, path: Path, read_only: bool) -> None:
        self.path = path
        self._read_only = read_only

    @classmethod
    def create(cls, path: Path) -> RolloutStore:
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
            _migrate_rollout_models(db)
            _migrate_single_lease(db)
        return store

    @classmethod
    def open_existing(cls, path: Path, read_only: bool = True) -> RolloutStore:
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

    def load(self, rollout_id: int | None = None, model: str | None = None) -> RolloutState | None:
        """A rollout by id; else the latest of ``model``; else the latest of any model."""
        with self._connect() as db:
            if rollout_id is None and model is not None:
                ids = [i for i, each in _rollout_models(db) if each == model]
                row = db.execute("select id, state from rollouts where id = ?",
                                 (ids[-1] if ids else None,)).fetchone()  # fmt: skip
            elif rollout_id is None:
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

    def models(self) -> list[str]:
        """The models with a rollout in this file, by name."""
        with self._connect() as db:
            return sorted({model for _, model in _rollout_models(db)})

    def add(self, state: RolloutState, holder: str) -> RolloutState:
        """Records a new rollout (the lease holder only); its id is set on ``state``."""
        with self._connect(immediate=True) as db:
            self._check_holder(db, holder, state.model)
            cursor = db.execute(
                "insert into rollouts (state, updated_at, model) values (?, ?, ?)",
                (state.to_json(), time.time(), state.model),
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
            self._check_holder(db, holder, state.model)
            db.execute(
                "update rollouts set state = ?, updated_at = ? where id = ?",
                (state.to_json(), time.time(), state.rollout_id),
            )
            _append_decisions(db, state)
        dropped = len(state.history) - HISTORY_IN_MEMORY
        if dropped > 0:
            del state.history[:dropped]
            state.history_offset += dropped

    # -- the post-promotion watch's window (controller.watch) -----------------------------

    def save_watch_window(self, model: str, rollout_id: int, window: dict[str, Any],
                          holder: str) -> None:  # fmt: skip
        """The watch's window of ``model`` (its JSON: ``controller.watch.WatchWindow``), only
        while ``holder`` holds the model's lease (else ``LeaseLost``)."""
        with self._connect(immediate=True) as db:
            self._check_holder(db, holder, model)
            db.execute(
                "insert into watch_windows (model, rollout_id, state, saved_at) "
                "values (?, ?, ?, ?) on conflict (model) do update set "
                "rollout_id = excluded.rollout_id, state = excluded.state, "
                "saved_at = excluded.saved_at",
                (model, rollout_id, json.dumps(window), time.time()),
            )

    def watch_window(self, model: str, rollout_id: int) -> dict[str, Any] | None:
        """The window a watch of ``model`` last saved for rollout ``rollout_id``; None when
        there is none (or it was another rollout's)."""
        with self._connect() as db:
            if not _has_table(db, "watch_windows"):
                return None
            row = db.execute("select rollout_id, state from watch_windows where model = ?",
                             (model,)).fetchone()  # fmt: skip
        if row is None or row[0] != rollout_id:
            return None
        window: dict[str, Any] = json.loads(row[1])
        return window

    # -- the leases, one per model ----------------------------------------------------------

    def lease(self, model: str) -> Lease | None:
        with self._connect() as db:
            return _lease_row(db, model)

    def acquire(self, holder: str, ttl: float, now: float, model: str) -> Lease | None:
        """Takes ``model``'s lease; returns the previous holder's lease when it had lapsed (a
        takeover), None when there was none; raises ``LeaseHeld`` while another live holder has
        it. Other models' leases are not touched: their controllers run beside this one."""
        with self._connect(immediate=True) as db:
            db.execute(_SCHEMA[1])  # a file an earlier version made: its lease table moves here
            _migrate_single_lease(db)
            previous = _lease_row(db, model)
            if previous is not None and previous.holder != holder and previous.alive(now):
                raise LeaseHeld(
                    f"controller {previous.holder} holds this rollout of model {model} (last "
                    f"heartbeat {now - previous.heartbeat_at:.0f} s ago; its lease expires in "
                    f"{previous.expires_at - now:.0f} s)"
                )
            db.execute(
                "insert into leases (model, holder, expires_at, heartbeat_at) values (?, ?, ?, ?) "
                "on conflict (model) do update set holder = excluded.holder, "
                "expires_at = excluded.expires_at, heartbeat_at = excluded.heartbeat_at",
                (model, holder, now + ttl, now),
            )
        return previous

    def renew(self, holder: str, ttl: float, now: float, model: str) -> None:
        """The heartbeat; raises ``LeaseLost`` when another controller took ``model``'s lease."""
        with self._connect(immediate=True) as db:
            self._check_holder(db, holder, model)
            db.execute(
                "update leases set expires_at = ?, heartbeat_at = ? where model = ? and holder = ?",
                (now + ttl, now, model, holder),
            )

    def release(self, holder: str) -> None:
        """Gives back every lease ``holder`` has (a controller holds one model's)."""
        with self._connect(immediate=True) as db:
            if _has_table(db, "leases"):
                db.execute("delete from leases where holder = ?", (holder,))

    @staticmethod
    def _check_holder(db: sqlite3.Connection, holder: str, model: str) -> None:
        lease = _lease_row(db, model)
        if lease is None or lease.holder != holder:
            taker = lease.holder if lease else "nobody"
            raise LeaseLost(f"model {model}'s lease is held by {taker}, not by this controller "
                            f"({holder})")  # fmt: skip

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

"""The state file: rollouts survive a restart and are all kept, one controller holds the lease,
commands are taken once and expire, and bad files are refused in one line without being changed."""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
from pathlib import Path

import pytest

from controller.rollout_store import (
    Command,
    DecisionRecord,
    LeaseHeld,
    LeaseLost,
    Phase,
    Record,
    RolloutState,
    RolloutStore,
    StateError,
)
from controller.sources import Mark
from tests.controller.fakes import bad_state_files

ME = "me-host:1:aaaa"  # another host's holder ids: only the lease's expiry tells if they live
OTHER = "other-host:2:bbbb"


@pytest.fixture
def store(tmp_path: Path) -> RolloutStore:
    store = RolloutStore.create(tmp_path / "rollout.db")
    store.acquire(ME, ttl=15, now=100.0, model="digits")
    return store


def test_state_round_trips(store: RolloutStore) -> None:
    assert store.load() is None
    mark = Mark(at=12.5, counters={"http://g": {("gateway_x_total", (("model", "m"),)): 3.0}})
    state = RolloutState(
        phase=Phase.PAUSED, steps=[5, 100], step_index=1, share=1.0, step_started_at=99.0,
        step_mark=mark.to_json(), generations={"http://g": 4}, paused_by="sre@host",
        history=[DecisionRecord(1.0, 0, 0.05, Record.ADVANCE, "every gate passes",
                                [{"gate": "g"}])],
    )  # fmt: skip
    store.add(state, ME)
    loaded = RolloutStore.open_existing(store.path).load()
    assert loaded == state and loaded is not None and loaded.rollout_id == 1
    assert loaded.step_mark is not None and Mark.from_json(loaded.step_mark) == mark


def test_every_rollout_is_kept(store: RolloutStore) -> None:
    first = store.add(RolloutState(phase=Phase.ROLLED_BACK, rollback_reason="min_agreement"), ME)
    second = store.add(RolloutState(), ME)
    assert (first.rollout_id, second.rollout_id) == (1, 2)
    assert store.rollout_ids() == [1, 2]
    latest = store.load()
    assert latest is not None and latest.rollout_id == 2
    kept = store.load(1)
    assert kept is not None and kept.rollback_reason == "min_agreement"


def test_the_file_is_created_readable_by_its_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    RolloutStore.create(path)
    assert path.stat().st_mode & 0o777 == 0o600


# (who holds the lease, its expiry, who asks, when) -> taken, or refused naming the holder
LEASE_CASES = [
    ("nobody", None, ME, 100.0, "taken"),
    ("the same controller", (ME, 115.0), ME, 110.0, "taken"),
    ("another, alive", (OTHER, 115.0), ME, 110.0, "refused"),
    ("another, expired", (OTHER, 115.0), ME, 115.5, "taken"),
]


@pytest.mark.parametrize(("case", "held", "asker", "now", "expected"), LEASE_CASES,
                         ids=[case[0] for case in LEASE_CASES])  # fmt: skip
def test_one_controller_holds_the_lease(
    tmp_path: Path,
    case: str,
    held: tuple[str, float] | None,
    asker: str,
    now: float,
    expected: str,
) -> None:
    store = RolloutStore.create(tmp_path / "rollout.db")
    if held is not None:
        holder, expires = held
        store.acquire(holder, ttl=expires - 100.0, now=100.0, model="digits")
    if expected == "refused":
        with pytest.raises(LeaseHeld, match=rf"{held[0]} holds this rollout .* expires in 5 s"):  # type: ignore[index]
            store.acquire(asker, ttl=15, now=now, model="digits")
        return
    store.acquire(asker, ttl=15, now=now, model="digits")
    lease = store.lease("digits")
    assert lease is not None and lease.holder == asker and lease.expires_at == now + 15


def test_a_dead_holder_on_this_host_is_taken_over_at_once(tmp_path: Path) -> None:
    dead_pid = _a_pid_that_is_gone()
    store = RolloutStore.create(tmp_path / "rollout.db")
    store.acquire(f"{socket.gethostname()}:{dead_pid}:cccc", ttl=1000, now=100.0, model="digits")
    previous = store.acquire(ME, ttl=15, now=101.0, model="digits")  # long before its expiry
    assert previous is not None and previous.holder.endswith(f":{dead_pid}:cccc")


def _a_pid_that_is_gone() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_a_controller_that_lost_its_lease_cannot_save_or_renew(store: RolloutStore) -> None:
    state = store.add(RolloutState(), ME)
    store.acquire(OTHER, ttl=15, now=200.0, model="digits")  # ME's lease expired at 115
    with pytest.raises(LeaseLost, match=OTHER):
        store.save(state, ME)
    with pytest.raises(LeaseLost):
        store.renew(ME, ttl=15, now=201.0, model="digits")


def test_commands_are_taken_once_in_order_and_acknowledged(store: RolloutStore) -> None:
    operator = RolloutStore.open_existing(store.path, read_only=False)
    pause = operator.send(1, Command.PAUSE, "sre@a", ttl=10, now=100.0)
    operator.send(1, Command.ABORT, "sre@b", ttl=10, now=100.5)
    assert store.has_commands(1)
    taken = store.take_commands(1, now=101.0)
    assert [(c.command, c.sender) for c in taken] == [(Command.PAUSE, "sre@a"),
                                                        (Command.ABORT, "sre@b")]  # fmt: skip
    assert not operator.outcome(pause).taken
    store.acknowledge(pause, True, "paused by an operator", now=101.0)
    assert operator.outcome(pause).taken and operator.outcome(pause).acted
    store.acknowledge(taken[1].id, True, "rolled back", now=101.0)
    assert store.take_commands(1, now=102.0) == []
    assert not store.has_commands(1)


def test_a_command_nobody_took_in_time_expires_and_never_fires(store: RolloutStore) -> None:
    late = store.send(1, Command.ABORT, "sre@a", ttl=10, now=100.0)
    assert store.take_commands(1, now=111.0) == []  # a controller that comes back later
    outcome = store.outcome(late)
    assert outcome.taken and not outcome.acted and "expired" in outcome.note


def test_state_from_an_earlier_version_is_kept_as_the_first_rollout(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:
        db.execute("create table rollout (id integer primary key, state text, updated_at real)")
        db.execute("insert into rollout values (1, ?, 5.0)",
                   (RolloutState(phase=Phase.PROMOTED).to_json(),))  # fmt: skip
    loaded = RolloutStore.create(path).load()
    assert loaded is not None and loaded.phase is Phase.PROMOTED and loaded.rollout_id == 1


def test_bad_state_files_are_refused_in_one_line_and_left_unchanged(tmp_path: Path) -> None:
    files = bad_state_files(tmp_path)
    not_sqlite, directory, empty = files["not sqlite"], files["a directory"], files["empty"]
    with pytest.raises(StateError, match="is not a distill-canary state file"):
        RolloutStore.open_existing(not_sqlite)
    with pytest.raises(StateError, match="is not a distill-canary state file"):
        RolloutStore.create(not_sqlite)
    with pytest.raises(StateError, match="is a directory"):
        RolloutStore.open_existing(directory)
    with pytest.raises(StateError, match="is a directory"):
        RolloutStore.create(directory)
    with pytest.raises(StateError, match="holds no rollout state"):
        RolloutStore.open_existing(empty, read_only=False)
    with pytest.raises(StateError, match="no state file at"):
        RolloutStore.open_existing(tmp_path / "missing.db")
    assert empty.stat().st_size == 0 and empty.stat().st_mode & 0o777 == 0o644
    assert not (tmp_path / "missing.db").exists()


def test_read_only_opening_never_writes(store: RolloutStore) -> None:
    store.add(RolloutState(), ME)
    before = os.stat(store.path).st_mtime_ns, store.path.read_bytes()
    reader = RolloutStore.open_existing(store.path)
    assert reader.load() is not None and reader.lease("digits") is not None
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        reader.send(1, Command.PAUSE, "x", ttl=1, now=1.0)
    assert (os.stat(store.path).st_mtime_ns, store.path.read_bytes()) == before

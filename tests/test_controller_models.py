"""The controller with several models per gateway (issue 27), against fakes: one lease per model in
one state file, a state file of the previous version still opening (its lease kept), which model
``run`` and the operator commands act on, and ``status`` listing each model's rollout."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from controller.cli import app
from controller.events import rollout_fields
from controller.gateway_paths import MODELS_PATH
from controller.model_choice import (
    ModelChoiceError,
    choose_rollout_model,
    choose_run_model,
    gateway_models,
)
from controller.rollout import Launch
from controller.rollout_store import (
    LEGACY_HOLDER,
    LeaseHeld,
    LeaseLost,
    Phase,
    RolloutState,
    RolloutStore,
)
from tests.controller.fakes import Clock, FakeFleet, make_controller, passing_window

GATEWAYS = ["http://gw-1"]
A, B = "host-a:1:aaaa", "host-b:2:bbbb"  # other hosts: only the expiry decides
runner = CliRunner()


def rollout_of(model: str, phase: Phase = Phase.PROGRESSING) -> RolloutState:
    return RolloutState(phase=phase, steps=[5, 100], policy={"model": model})


# -- one lease per model ---------------------------------------------------------------------


def test_two_models_leases_are_held_at_once_and_a_second_holder_of_one_is_refused(
    tmp_path: Path,
) -> None:
    store = RolloutStore.create(tmp_path / "r.db")
    store.acquire(A, ttl=15, now=100.0, model="a")
    store.acquire(B, ttl=15, now=100.0, model="b")  # another model: beside it, not refused
    with pytest.raises(LeaseHeld, match=f"{A} holds this rollout of model a"):
        store.acquire(B, ttl=15, now=101.0, model="a")
    first, second = store.add(rollout_of("a"), A), store.add(rollout_of("b"), B)
    first.last_analysis = [{"gate": "min_agreement", "value": float("nan")}]  # no data yet
    store.save(first, A)  # a NaN in the record: still found by its model
    store.renew(A, ttl=15, now=102.0, model="a")
    with pytest.raises(LeaseLost, match="model b's lease is held by " + B):
        store.save(second, A)  # A's lease is model a's: it cannot write b's rollout
    store.release(A)
    assert store.lease("a") is None and store.lease("b") is not None  # b's holder unaffected
    latest_of_a, latest = store.load(model="a"), store.load()
    assert latest_of_a is not None and latest_of_a.rollout_id == first.rollout_id
    assert latest is not None and latest.rollout_id == second.rollout_id
    assert store.models() == ["a", "b"]


def test_two_controllers_on_two_models_run_on_one_state_file_and_each_moves_only_its_fleet(
    tmp_path: Path,
) -> None:
    store, clock = RolloutStore.create(tmp_path / "r.db"), Clock()
    fleet_a, fleet_b = FakeFleet(GATEWAYS, "a"), FakeFleet(GATEWAYS, "b")
    first, _, metrics_a = make_controller(store, fleet_a, clock, A, model="a", steps=[50, 100])
    second, source_b, metrics_b = make_controller(store, fleet_b, clock, B, model="b",
                                                  steps=[50, 100])  # fmt: skip
    first.start(Launch(GATEWAYS))
    second.start(Launch(GATEWAYS))
    # b's student agrees with its teacher on 10 % of shadow calls: b rolls back
    source_b.window = replace(passing_window(), agreements=100.0)
    while not (first.state.phase.terminal and second.state.phase.terminal):
        for controller in (first, second):
            if not controller.state.phase.terminal:
                controller.tick()
        clock.sleep(1.0)
    assert (first.state.phase, second.state.phase) == (Phase.PROMOTED, Phase.ROLLED_BACK)
    assert {s for _, s in fleet_a.puts} == {0.5, 1.0}  # each fleet saw only its own model's
    assert {s for _, s in fleet_b.puts} == {0.5, 0.0}
    assert store.load(model="a").phase is Phase.PROMOTED  # type: ignore[union-attr]
    assert store.load(model="b").phase is Phase.ROLLED_BACK  # type: ignore[union-attr]
    # the exporter and the events name each rollout's model
    phase = "canary_phase"
    assert metrics_a.get_sample_value(phase, {"model": "a", "phase": "Promoted"}) == 1.0
    assert metrics_b.get_sample_value(phase, {"model": "b", "phase": "RolledBack"}) == 1.0
    assert rollout_fields(first.state)["model"] == "a"
    assert rollout_fields(second.state)["model"] == "b"
    third, _, _ = make_controller(store, FakeFleet(GATEWAYS, "a"), clock, "host-c:3:cccc",
                                  model="a")  # fmt: skip
    with pytest.raises(LeaseHeld):  # a's controller still holds its lease until it releases
        third.start(Launch(GATEWAYS, new=True))


# -- a state file of the previous version ----------------------------------------------------


def previous_version_file(path: Path, holder: str, expires_at: float) -> None:
    """The schema before leases per model: one lease row (id = 1) for the whole file."""
    db = sqlite3.connect(path)
    db.executescript(
        "create table rollouts (id integer primary key autoincrement, state text not null,"
        " updated_at real not null);"
        "create table lease (id integer primary key check (id = 1), holder text not null,"
        " expires_at real not null, heartbeat_at real not null);"
        "create table commands (id integer primary key autoincrement, rollout_id integer not null,"
        " command text not null, sender text not null, created_at real not null,"
        " expires_at real not null, taken_at real, acted integer, outcome text);"
        "create table decisions (rollout_id integer not null, seq integer not null,"
        " record text not null, primary key (rollout_id, seq));"
    )
    for model in ("digits", "text"):
        db.execute("insert into rollouts (state, updated_at) values (?, 1.0)",
                   (rollout_of(model).to_json(),))  # fmt: skip
    db.execute("insert into lease values (1, ?, ?, 90.0)", (holder, expires_at))
    db.commit()
    db.close()


def test_a_previous_versions_state_file_opens_and_its_lease_stays_its_latest_models(
    tmp_path: Path,
) -> None:
    path = tmp_path / "old.db"
    previous_version_file(path, A, expires_at=1000.0)
    reader = RolloutStore.open_existing(path)  # read only: nothing migrated, the lease still read
    assert reader.lease("text") is not None and reader.lease("text").holder == A  # type: ignore[union-attr]
    assert reader.lease("digits") is None
    assert reader.models() == ["digits", "text"] and reader.load(model="digits") is not None
    store = RolloutStore.create(path)  # a controller of this version: migrates
    with pytest.raises(LeaseHeld, match=A):  # the old controller's live lease still counts
        store.acquire(B, ttl=15, now=100.0, model="text")
    store.acquire(B, ttl=15, now=100.0, model="digits")
    with sqlite3.connect(path) as db:
        rows = sorted(db.execute("select model, holder from leases").fetchall())
        # the old table's one lease is held for good: a controller of the previous version
        # (which reads only it) is refused at start, and loses its lease at its next heartbeat
        (legacy,) = db.execute("select holder, expires_at from lease").fetchall()
    assert rows == [("digits", B), ("text", A)]
    assert legacy == (LEGACY_HOLDER, 1e18)
    RolloutStore.create(path)  # opened again: migrated already, nothing moves
    with sqlite3.connect(path) as db:
        assert sorted(db.execute("select model, holder from leases").fetchall()) == rows
    with sqlite3.connect(path) as db:  # a row the previous version added after: no model column
        db.execute("insert into rollouts (state, updated_at) values (?, 2.0)",
                   (rollout_of("text").to_json(),))  # fmt: skip
    assert RolloutStore.open_existing(path).models() == ["digits", "text"]


# -- which model -----------------------------------------------------------------------------


def test_run_takes_the_flag_then_the_policy_then_the_one_model_served() -> None:
    assert choose_run_model("b", "a", lambda: ["a", "b"]) == "b"
    assert choose_run_model(None, "a", lambda: ["a", "b"]) == "a"
    assert choose_run_model(None, None, lambda: ["digits"]) == "digits"
    with pytest.raises(ModelChoiceError, match="the gateways serve digits, text: pass --model"):
        choose_run_model(None, None, lambda: ["digits", "text"])
    with pytest.raises(ModelChoiceError, match="--model c is not served: the gateways serve a, b"):
        choose_run_model("c", None, lambda: ["a", "b"])

    def unreachable() -> list[str]:
        raise ModelChoiceError("no gateway said")

    assert choose_run_model("c", None, unreachable) == "c"  # the rollout itself will judge
    with pytest.raises(ModelChoiceError, match="no gateway said"):
        choose_run_model(None, None, unreachable)


def test_the_models_served_are_every_gateways_list_together() -> None:
    served = {"http://gw-1": ["a", "b"], "http://gw-2": ["b", "c"]}

    def answer(request: httpx.Request) -> httpx.Response:
        base = f"{request.url.scheme}://{request.url.host}"
        if request.url.path != MODELS_PATH or base not in served:
            return httpx.Response(404)
        return httpx.Response(200, json={"models": [{"name": n} for n in served[base]]})

    with httpx.Client(transport=httpx.MockTransport(answer)) as client:
        assert gateway_models([*served, "http://gw-3"], client) == ["a", "b", "c"]
        with pytest.raises(ModelChoiceError, match="http://gw-3: HTTPStatusError"):
            gateway_models(["http://gw-3"], client)


def test_operator_commands_take_the_one_model_with_rollouts_else_ask(tmp_path: Path) -> None:
    store = RolloutStore.create(tmp_path / "r.db")
    with pytest.raises(ModelChoiceError, match="no rollout recorded"):
        choose_rollout_model(store, None)
    store.acquire(A, ttl=15, now=time.time(), model="a")
    store.add(rollout_of("a"), A)
    assert choose_rollout_model(store, None) == "a"
    store.acquire(B, ttl=15, now=time.time(), model="b")
    store.add(rollout_of("b"), B)
    with pytest.raises(ModelChoiceError, match="holds rollouts of a, b: pass --model"):
        choose_rollout_model(store, None)
    assert choose_rollout_model(store, "b") == "b"
    with pytest.raises(ModelChoiceError, match=r"no rollout of model c .*holds rollouts of a, b"):
        choose_rollout_model(store, "c")


# -- the CLI ---------------------------------------------------------------------------------


@pytest.fixture
def two_model_gateway() -> Iterator[str]:
    """A real HTTP server answering ``GET /v2/models`` as a gateway serving a and b."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps({"models": [{"name": "a"}, {"name": "b"}]}).encode()
            self.send_response(200 if self.path == MODELS_PATH else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def test_run_without_a_model_against_gateways_serving_two_exits_2_naming_them(
    tmp_path: Path, two_model_gateway: str
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("gates: {max_kl: 1}\n")
    result = runner.invoke(app, ["run", "--gateway", two_model_gateway, "--policy", str(policy),
                                 "--state", str(tmp_path / "r.db")])  # fmt: skip
    assert result.exit_code == 2
    assert "the gateways serve a, b: pass --model" in result.stderr
    assert not (tmp_path / "r.db").exists()  # refused before anything was written
    policy.write_text("model: c\ngates: {max_kl: 1}\n")
    result = runner.invoke(app, ["run", "--gateway", two_model_gateway, "--policy", str(policy),
                                 "--state", str(tmp_path / "r.db")])  # fmt: skip
    assert result.exit_code == 2 and "the policy's model c is not served" in result.stderr


def two_models_state(path: Path) -> None:
    store = RolloutStore.create(path)
    for holder, model in ((A, "a"), (B, "b")):
        store.acquire(holder, ttl=1, now=0.0, model=model)
        store.add(rollout_of(model, Phase.PROMOTED if model == "a" else Phase.PROGRESSING),
                  holder)  # fmt: skip
        store.release(holder)


VERBS = [["pause"], ["resume"], ["promote"], ["abort"], ["retry"],
         ["approve", "--gate", "confirm-promotion"]]  # fmt: skip


@pytest.mark.parametrize("verb", VERBS)
def test_an_operator_command_on_a_file_of_two_models_asks_which(
    tmp_path: Path, verb: list[str]
) -> None:
    two_models_state(tmp_path / "r.db")
    result = runner.invoke(app, [*verb, "--state", str(tmp_path / "r.db")])
    assert result.exit_code == 2
    assert "holds rollouts of a, b: pass --model" in result.stderr


def test_an_operator_command_reaches_the_named_models_rollout(tmp_path: Path) -> None:
    two_models_state(tmp_path / "r.db")
    state = ["--state", str(tmp_path / "r.db")]
    ended = runner.invoke(app, ["pause", "--model", "a", *state])
    assert ended.exit_code == 1 and "nothing to pause: rollout 1 is Promoted" in ended.stderr
    alone = runner.invoke(app, ["pause", "--model", "b", *state])
    assert alone.exit_code == 1
    assert "no controller is running this rollout of model b" in alone.stderr


def test_status_lists_each_models_latest_rollout(tmp_path: Path) -> None:
    two_models_state(tmp_path / "r.db")
    state = ["--state", str(tmp_path / "r.db"), "--history", "0"]
    every = runner.invoke(app, ["status", *state])
    assert every.exit_code == 0, every.output
    rows = [line for line in every.stdout.splitlines() if "│" in line]
    assert any(" a " in row and "Promoted" in row for row in rows), every.stdout
    assert any(" b " in row and "Progressing" in row for row in rows), every.stdout
    assert "rollout 1 of 2" in every.stdout and "rollout 2 of 2" in every.stdout
    one = runner.invoke(app, ["status", "--model", "b", *state])
    assert "rollout 2 of 2" in one.stdout and "rollout 1 of 2" not in one.stdout
    unknown = runner.invoke(app, ["status", "--model", "c", *state])
    assert unknown.exit_code == 2 and "no rollout of model c" in unknown.stderr


def test_a_new_file_holds_the_previous_versions_lease_for_good(tmp_path: Path) -> None:
    """A controller of the previous version reads only the one-row lease table: in a file this
    version made, it finds it held, so it never acts beside this version's leases."""
    path = tmp_path / "new.db"
    RolloutStore.create(path).acquire(A, ttl=15, now=100.0, model="digits")
    with sqlite3.connect(path) as db:
        assert db.execute("select holder, expires_at from lease").fetchall() == [
            (LEGACY_HOLDER, 1e18)]  # fmt: skip

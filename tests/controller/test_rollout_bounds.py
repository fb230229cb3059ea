"""What keeps a rollout bounded in time and in its state file, and what retry carries over:
a gateway that keeps drifting cannot hold a step past max_step_seconds, the decisions are
appended to the file (never rewritten) and trimmed in memory, and a retried rollout keeps its
student. The controller through its seams (a fake fleet, source and clock, a real state file)."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from controller import registry_records
from controller.rollout import CanaryController, Launch
from controller.rollout_store import (
    HISTORY_IN_MEMORY,
    DecisionRecord,
    Phase,
    Record,
    RolloutState,
    RolloutStore,
)
from models import REGISTRY_PATH
from tests.controller.fakes import Clock, FakeFleet, make_controller

GATEWAYS = ["http://gw-1", "http://gw-2"]
HOLDER = "test-host-a:1:aaaa"


def phase(controller: CanaryController) -> Phase:
    return controller.state.phase  # read afresh: a tick changes it


@pytest.fixture
def store(tmp_path: Path) -> RolloutStore:
    return RolloutStore.create(tmp_path / "rollout.db")


def test_a_gateway_that_keeps_drifting_rolls_the_step_back_at_max_step_seconds(
    store: RolloutStore,
) -> None:
    """A crash-looping gateway comes back at its config's share every few seconds: each re-set
    restarts the step's analysis (never baked), but not its deadline."""
    fleet, clock = FakeFleet(GATEWAYS), Clock()
    controller, _, registry = make_controller(store, fleet, clock, HOLDER, bake_seconds=10,
                                              max_step_seconds=60)  # fmt: skip
    controller.start(Launch(GATEWAYS))
    controller.tick()
    entered = controller.state.step_entered_at
    assert entered is not None
    while clock.now < entered + 60:  # restarted every 5 s, back at share 0
        for _ in range(5):
            clock.sleep(1)
            controller.tick()
        fleet.operator_put("http://gw-2", 0.0)
    assert phase(controller) is Phase.PROGRESSING and controller.state.step_index == 0
    assert controller.state.step_entered_at == entered  # re-sets did not move it
    clock.sleep(5)
    fleet.operator_put("http://gw-2", 0.0)
    controller.tick()
    assert phase(controller) is Phase.ROLLED_BACK
    reason = controller.state.rollback_reason or ""
    assert "kept drifting" in reason and "http://gw-2" in reason, reason
    assert [t.student_share for t in fleet.traffic.values()] == [0.0, 0.0]
    cause = {"model": "digits", "reason": "share_unconfirmed"}
    assert registry.get_sample_value("canary_rollbacks_total", cause) == 1


def test_a_drift_well_inside_the_deadline_is_set_again_and_the_next_step_starts_afresh(
    store: RolloutStore,
) -> None:
    fleet, clock = FakeFleet(GATEWAYS), Clock()
    controller, _, _ = make_controller(store, fleet, clock, HOLDER, bake_seconds=10,
                                       max_step_seconds=60)  # fmt: skip
    controller.start(Launch(GATEWAYS))
    controller.tick()
    first = controller.state.step_entered_at
    clock.sleep(5)
    fleet.operator_put("http://gw-1", 0.0)
    controller.tick()  # drift: set again, analysed from now
    assert controller.state.phase is Phase.PROGRESSING
    assert fleet.traffic["http://gw-1"].student_share == 0.05
    while controller.state.step_index == 0:
        clock.sleep(1)
        controller.tick()
    assert controller.state.step_entered_at is not None and first is not None
    assert controller.state.step_entered_at > first  # the next step's own deadline


def test_decisions_are_appended_never_rewritten_and_kept_in_memory_only_lately(
    store: RolloutStore,
) -> None:
    fleet, clock = FakeFleet(GATEWAYS), Clock()
    controller, _, _ = make_controller(store, fleet, clock, HOLDER)
    controller.start(Launch(GATEWAYS))
    sizes = []
    ticks = HISTORY_IN_MEMORY + 20  # past what memory keeps; each a durable save, 2 ms apiece
    for _ in range(ticks):  # held at step 1 by a gateway that never confirms
        fleet.down.add("http://gw-2")
        controller._hold("waiting")
        store.save(controller.state, HOLDER)
        with sqlite3.connect(store.path) as db:
            sizes.append(len(db.execute("select state from rollouts").fetchone()[0]))
    assert max(sizes) == min(sizes)  # the record a tick rewrites does not grow with the history
    assert len(controller.state.history) == HISTORY_IN_MEMORY
    loaded = store.load()
    assert loaded is not None and len(loaded.history) == ticks + 1
    assert loaded.history[0].action == "started"
    assert [r.at for r in loaded.history] == sorted(r.at for r in loaded.history)
    assert loaded.history[-HISTORY_IN_MEMORY:] == controller.state.history


def test_a_state_file_of_an_earlier_version_keeps_its_decisions(store: RolloutStore) -> None:
    """Its rollout's record held the decisions: read from it, then appended at the next save."""
    old = RolloutState(history=[DecisionRecord(1.0 + i, 0, 0.05, Record.HOLD, f"decision {i}")
                                for i in range(3)])  # fmt: skip
    with sqlite3.connect(store.path) as db:
        data = json.loads(old.to_json())
        data["history"] = [
            {**r.__dict__, "action": r.action.value} for r in old.history
        ]  # as earlier versions wrote it
        db.execute("insert into rollouts (state, updated_at) values (?, 0)", (json.dumps(data),))
    store.acquire(HOLDER, ttl=15, now=100.0, model="digits")
    loaded = store.load()
    assert loaded is not None and [r.reason for r in loaded.history] == [
        "decision 0", "decision 1", "decision 2"]  # fmt: skip
    loaded.history.append(DecisionRecord(9.0, 0, 0.05, Record.HOLD, "decision 3"))
    store.save(loaded, HOLDER)
    again = store.load()
    assert again is not None and [r.reason for r in again.history][-2:] == [
        "decision 2", "decision 3"]  # fmt: skip
    assert len(again.history) == 4


def test_retry_moves_the_same_student_and_records_its_outcome(
    store: RolloutStore, tmp_path: Path
) -> None:
    registry_path = tmp_path / "registry.json"
    shutil.copy(REGISTRY_PATH, registry_path)
    model_id = next(iter(json.loads(registry_path.read_text())["candidates"]))
    student = {"id": model_id, "name": "candidate", "registry": str(registry_path)}
    fleet, clock = FakeFleet(GATEWAYS), Clock()
    rolled_back = RolloutState(phase=Phase.ROLLED_BACK, gateways=GATEWAYS, student=student,
                               rollback_reason="aborted by an operator")  # fmt: skip
    store.acquire(HOLDER, ttl=15, now=clock.now, model="digits")
    store.add(rolled_back, HOLDER)
    store.release(HOLDER)
    controller, _, _ = make_controller(store, fleet, clock, HOLDER, steps=[100], bake_seconds=0)
    assert controller.run(Launch.again(rolled_back)) == 0
    assert controller.state.student == student and controller.state.rollout_id == 2
    assert {t.student_id for t in fleet.traffic.values()} == {model_id}  # loaded again
    registry_records.record_outcome(controller.state)
    history = json.loads(registry_path.read_text())["history"]
    assert [(h["model_id"], h["event"], h["rollout"]) for h in history][-1:] == [
        (model_id, "promoted", 2)]  # fmt: skip

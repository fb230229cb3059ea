"""The controller's safety rules, driven through its seams (a fake fleet, source and clock, a real
state file): one controller acts, a share changed behind its back is caught, commands are carried
out or refused, new rollouts never silently move a fleet that serves the student."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from controller.operator import NoLiveController, abort_now, send_and_wait
from controller.rollout import (
    EXIT_REFUSED,
    EXIT_STOPPED,
    CanaryController,
    Launch,
    OnSigterm,
    Start,
    StartRefused,
)
from controller.rollout_store import Command, LeaseHeld, LeaseLost, Phase, RolloutStore
from gateway.protocol import TrafficState
from tests.controller.fakes import Clock, FakeFleet, make_controller

GATEWAYS = ["http://gw-1", "http://gw-2"]
FIRST, SECOND = "test-host-a:1:aaaa", "test-host-b:2:bbbb"  # other hosts: expiry alone decides


@pytest.fixture
def store(tmp_path: Path) -> RolloutStore:
    return RolloutStore.create(tmp_path / "rollout.db")


@pytest.fixture
def fleet() -> FakeFleet:
    return FakeFleet(GATEWAYS)


@pytest.fixture
def clock() -> Clock:
    return Clock()


def started(
    store: RolloutStore, fleet: FakeFleet, clock: Clock, holder: str = FIRST, **policy: object
) -> CanaryController:
    controller, _, _ = make_controller(store, fleet, clock, holder, **policy)
    controller.start(Launch(GATEWAYS))
    controller.tick()  # enters step 1: 5 % on every gateway, confirmed
    assert [t.student_share for t in fleet.traffic.values()] == [0.05, 0.05]
    return controller


def metric(registry: CollectorRegistry, name: str) -> float:
    return registry.get_sample_value(name, {"model": "digits"}) or 0.0


# -- one controller per rollout --------------------------------------------------------------


def test_a_second_controller_is_refused_naming_the_holder(
    store: RolloutStore, fleet: FakeFleet, clock: Clock
) -> None:
    started(store, fleet, clock)
    second, _, _ = make_controller(store, fleet, clock, SECOND)
    puts_before = len(fleet.puts)
    with pytest.raises(LeaseHeld, match=f"controller {FIRST} holds this rollout"):
        second.start(Launch(GATEWAYS))
    assert len(fleet.puts) == puts_before  # it never touched the gateways


def test_an_expired_lease_hands_over_and_the_old_controller_stops_at_once(
    store: RolloutStore, fleet: FakeFleet, clock: Clock
) -> None:
    first = started(store, fleet, clock)
    clock.now += 60  # the first controller hung past its lease (15 s)
    second, _, _ = make_controller(store, fleet, clock, SECOND)
    resumed = second.start(Launch(GATEWAYS))
    assert resumed.rollout_id == first.state.rollout_id and resumed.step_index == 0
    assert resumed.history[-1].action == "resumed" and FIRST in resumed.history[-1].reason
    fleet.puts.clear()
    with pytest.raises(LeaseLost):
        first.tick()
    assert fleet.puts == []  # the old controller stopped before touching any gateway
    with pytest.raises(LeaseHeld, match=SECOND):  # nor can it start over while SECOND lives
        first.start(Launch(GATEWAYS))


def test_a_controller_that_loses_its_lease_mid_run_exits_without_acting(
    store: RolloutStore, fleet: FakeFleet, clock: Clock
) -> None:
    controller, _, _ = make_controller(store, fleet, clock, FIRST, bake_seconds=1000,
                                       max_step_seconds=1000)  # fmt: skip
    taken_over = False

    def sleep(seconds: float) -> None:
        nonlocal taken_over
        clock.sleep(seconds)
        if not taken_over and clock.now > 1005:
            store.acquire(
                SECOND, ttl=1000, now=clock.now + 100, model="digits"
            )  # as if FIRST had lapsed
            taken_over = True

    controller.sleep = sleep
    assert controller.run(Launch(GATEWAYS)) == EXIT_REFUSED
    assert taken_over and [t.student_share for t in fleet.traffic.values()] == [0.05, 0.05]


# -- a share changed behind the controller's back ---------------------------------------------


@pytest.mark.parametrize(("on_drift", "changed_share"),
                         [("reassert", 0.6), ("reassert", 0.05), ("pause", 0.0)])  # fmt: skip
def test_a_share_changed_behind_the_controllers_back_is_caught(
    store: RolloutStore, fleet: FakeFleet, clock: Clock, on_drift: str, changed_share: float
) -> None:
    controller, _, registry = make_controller(store, fleet, clock, FIRST, on_drift=on_drift)
    controller.start(Launch(GATEWAYS))
    controller.tick()
    clock.now += 5
    analyses_before = sum(1 for r in controller.state.history if r.gates)
    fleet.operator_put("http://gw-2", changed_share)  # same share counts too: a new generation
    controller.tick()
    drift = controller.state.history[-2 if on_drift == "reassert" else -1]
    assert drift.action == "drift"
    assert f"http://gw-2 reports share {changed_share:.4g}" in drift.reason
    assert "intended 0.05" in drift.reason
    assert metric(registry, "canary_share_drift_total") == 1
    # The changed traffic was not analysed as if it were at 5 %.
    assert sum(1 for r in controller.state.history if r.gates) == analyses_before
    if on_drift == "reassert":
        assert fleet.traffic["http://gw-2"].student_share == 0.05
        assert controller.state.step_started_at == clock.now  # the step's window starts again
        assert controller.state.phase is Phase.PROGRESSING
    else:
        assert fleet.traffic["http://gw-2"].student_share == changed_share  # left alone
        assert controller.state.phase is Phase.PAUSED
        assert controller.state.paused_by == "share drift"
        controller.tick()  # paused: the share is still not touched
        assert fleet.traffic["http://gw-2"].student_share == changed_share


def test_a_restarted_gateway_is_set_again_on_resume(
    store: RolloutStore, fleet: FakeFleet, clock: Clock
) -> None:
    started(store, fleet, clock)
    clock.now += 60
    fleet.traffic["http://gw-1"] = TrafficState(
        student_share=0.0, generation=0
    )  # restarted: back at its config's share
    second, _, _ = make_controller(store, fleet, clock, SECOND)
    second.start(Launch(GATEWAYS))
    second.tick()
    assert fleet.traffic["http://gw-1"].student_share == 0.05
    assert [r.action for r in second.state.history[-3:]] == ["resumed", "drift", "set"]


# -- commands are carried out or refused ------------------------------------------------------


def test_a_command_without_a_live_controller_is_refused(
    store: RolloutStore, fleet: FakeFleet, clock: Clock
) -> None:
    controller = started(store, fleet, clock)
    clock.now += 60  # the controller died: no heartbeat for longer than its lease
    with pytest.raises(NoLiveController, match=f"the last one, {FIRST}, sent its last heartbeat"):
        send_and_wait(store, controller.state, Command.ABORT, clock, clock.sleep)
    assert not store.has_commands(controller.state.rollout_id)


def test_a_command_the_controller_never_takes_expires_and_never_fires(
    store: RolloutStore, fleet: FakeFleet, clock: Clock
) -> None:
    controller = started(store, fleet, clock)  # alive (lease fresh) but stuck: never ticks
    outcome = send_and_wait(store, controller.state, Command.ABORT, clock, clock.sleep)
    assert outcome.taken and not outcome.acted and "expired" in outcome.note
    controller.tick()  # it wakes up later: the stale abort must not fire
    assert controller.state.phase is Phase.PROGRESSING
    assert fleet.traffic["http://gw-1"].student_share == 0.05


def test_a_taken_command_is_answered_with_what_was_done(
    store: RolloutStore, fleet: FakeFleet, clock: Clock
) -> None:
    controller = started(store, fleet, clock)

    def controller_ticks(seconds: float) -> None:  # the operator waits; the controller ticks
        clock.sleep(seconds)
        controller.tick()

    pause = send_and_wait(store, controller.state, Command.PAUSE, clock, controller_ticks)
    assert pause.acted and pause.note.startswith("paused by an operator (")
    assert controller.state.paused_by is not None
    again = send_and_wait(store, controller.state, Command.PAUSE, clock, controller_ticks)
    assert again.taken and not again.acted  # pausing a paused rollout changes nothing
    abort = send_and_wait(store, controller.state, Command.ABORT, clock, controller_ticks)
    assert abort.acted and "share 0 on every gateway" in abort.note
    assert [t.student_share for t in fleet.traffic.values()] == [0.0, 0.0]


def test_promote_before_the_step_is_confirmed_says_why_it_cannot(
    store: RolloutStore, fleet: FakeFleet, clock: Clock
) -> None:
    controller, _, _ = make_controller(store, fleet, clock, FIRST)
    controller.start(Launch(GATEWAYS))
    fleet.down.add("http://gw-2")
    controller.tick()  # step 1 not confirmed: gw-2 is down
    command_id = store.send(controller.state.rollout_id, Command.PROMOTE, "sre", 10, clock())
    controller.tick()
    outcome = store.outcome(command_id)
    assert not outcome.acted and "not yet confirmed on every gateway" in outcome.note
    assert controller.state.step_index == 0


def test_abort_now_rolls_back_directly_when_no_controller_is_alive(
    store: RolloutStore, fleet: FakeFleet, clock: Clock
) -> None:
    controller = started(store, fleet, clock)
    clock.now += 60
    rollout = store.load()
    assert rollout is not None
    done = abort_now(store, rollout, fleet, clock)
    assert done.confirmed and [t.student_share for t in fleet.traffic.values()] == [0.0, 0.0]
    saved = store.load(controller.state.rollout_id)
    assert saved is not None and saved.phase is Phase.ROLLED_BACK
    assert saved.history[-1].action == "rolled back" and "--now" in saved.history[-1].reason
    assert store.lease("digits") is None  # released: a controller could start again


# -- new rollouts ------------------------------------------------------------------------------


def test_a_finished_rollout_is_kept_and_not_restarted_without_new(
    store: RolloutStore, fleet: FakeFleet, clock: Clock
) -> None:
    first = started(store, fleet, clock)
    store.send(first.state.rollout_id, Command.ABORT, "a test", 10, clock())
    first.tick()
    assert first.state.phase is Phase.ROLLED_BACK
    store.release(FIRST)
    again, _, _ = make_controller(store, fleet, clock, SECOND)
    with pytest.raises(StartRefused, match="rollout 1 ended RolledBack; pass --new"):
        again.start(Launch(GATEWAYS))
    second = again.start(Launch(GATEWAYS, new=True))
    assert second.rollout_id == 2 and store.rollout_ids() == [1, 2]
    kept = store.load(1)
    assert kept is not None and kept.rollback_reason == "aborted by an operator (a test)"


@pytest.mark.parametrize(("start", "expected"), [
    (Start.FRESH, "refused"), (Start.FROM_CURRENT, 2), (Start.RESET, 0)])  # fmt: skip
def test_a_new_rollout_never_silently_drops_a_promoted_fleet(
    store: RolloutStore, fleet: FakeFleet, clock: Clock, start: Start, expected: object
) -> None:
    for url in GATEWAYS:
        fleet.operator_put(url, 1.0)  # an earlier rollout promoted the student
    controller, _, _ = make_controller(store, fleet, clock, FIRST)
    if expected == "refused":
        with pytest.raises(StartRefused, match=r"already serve the student .* --from-current"):
            controller.start(Launch(GATEWAYS, start=start))
        assert fleet.puts == [] and store.lease("digits") is None
        return
    state = controller.start(Launch(GATEWAYS, start=start))
    assert state.step_index == expected
    controller.tick()
    assert fleet.traffic["http://gw-1"].student_share == [0.05, 0.25, 1.0][int(str(expected))]


def test_metrics_say_who_is_alive_and_what_each_gate_decided(
    store: RolloutStore, fleet: FakeFleet, clock: Clock
) -> None:
    controller, _, registry = make_controller(store, fleet, clock, FIRST)
    controller.start(Launch(GATEWAYS))
    controller.tick()
    clock.now += 3
    controller.tick()
    labels = {"model": "digits", "gate": "min_agreement"}
    assert metric(registry, "canary_last_tick_timestamp_seconds") == clock.now
    assert registry.get_sample_value("canary_gate_verdict", labels) == 1.0
    low, estimate, high = (registry.get_sample_value("canary_gate_value", {**labels, "bound": b})
                           for b in ("lower", "estimate", "upper"))  # fmt: skip
    assert low is not None and estimate is not None and high is not None
    assert 0.9 < low <= estimate <= high <= 1.0
    assert registry.get_sample_value("canary_gate_dry_run", labels) == 0.0
    assert metric(registry, "canary_step_bake_elapsed_seconds") == 3
    assert (
        registry.get_sample_value(
            "canary_rollout_info",
            {"model": "digits", "rollout": "1", "student_id": "", "student": ""},
        )
        == 1
    )


# -- in a cluster: named rollouts, SIGTERM, a replacement pod ----------------------------------


def test_a_named_rollout_is_resumed_while_unfinished_and_never_started_twice(
    store: RolloutStore, fleet: FakeFleet, clock: Clock
) -> None:
    job = Launch(GATEWAYS, name="student-v7")
    first, _, _ = make_controller(store, fleet, clock, FIRST)
    assert first.start(job).name == "student-v7"
    store.send(first.state.rollout_id, Command.ABORT, "a test", 10, clock())
    first.tick()
    store.release(FIRST)
    restarted, _, _ = make_controller(store, fleet, clock, SECOND)
    with pytest.raises(StartRefused, match=r"rollout 1 \(student-v7\) already ended RolledBack"):
        restarted.start(job)  # a pod restarted after the end never starts it again
    next_job = restarted.start(Launch(GATEWAYS, name="student-v8"))  # no --new needed
    assert next_job.rollout_id == 2 and next_job.name == "student-v8"
    store.release(SECOND)
    other, _, _ = make_controller(store, fleet, clock, FIRST)
    with pytest.raises(StartRefused, match=r"\(student-v8\) is still Progressing"):
        other.start(Launch(GATEWAYS, name="student-v9"))


@pytest.mark.parametrize("on_sigterm", list(OnSigterm))
def test_sigterm_persists_or_rolls_back_as_asked(
    store: RolloutStore, fleet: FakeFleet, clock: Clock, on_sigterm: OnSigterm
) -> None:
    controller, _, _ = make_controller(store, fleet, clock, FIRST, bake_seconds=1000,
                                       max_step_seconds=1000)  # fmt: skip

    def sleep(seconds: float) -> None:
        clock.sleep(seconds)
        if clock.now > 1005:
            controller.request_stop()  # what the SIGTERM handler calls

    controller.sleep = sleep
    code = controller.run(Launch(GATEWAYS, on_sigterm=on_sigterm))
    saved = store.load()
    assert saved is not None and store.lease("digits") is None  # the lease is released either way
    if on_sigterm is OnSigterm.PERSIST:
        assert code == EXIT_STOPPED and saved.phase is Phase.PROGRESSING
        assert saved.history[-1].action == "stopped"
        assert [t.student_share for t in fleet.traffic.values()] == [0.05, 0.05]
        successor, _, _ = make_controller(store, fleet, clock, SECOND)
        assert successor.start(Launch(GATEWAYS)).step_index == 0  # resumes at once
    else:
        assert code == 3 and saved.phase is Phase.ROLLED_BACK
        assert "SIGTERM" in (saved.rollback_reason or "")
        assert [t.student_share for t in fleet.traffic.values()] == [0.0, 0.0]


def test_a_replacement_controller_waits_for_the_lease_when_asked(
    store: RolloutStore, fleet: FakeFleet, clock: Clock
) -> None:
    started(store, fleet, clock)  # FIRST holds the lease until 1015, then goes silent
    waiting, _, _ = make_controller(store, fleet, clock, SECOND)
    with pytest.raises(LeaseHeld):
        waiting.start(Launch(GATEWAYS, wait_for_lease=5))  # gives up before the expiry
    resumed = waiting.start(Launch(GATEWAYS, wait_for_lease=60))
    assert resumed.rollout_id == 1 and clock.now >= 1015


def test_a_command_is_saved_before_it_is_acknowledged(
    store: RolloutStore, fleet: FakeFleet, clock: Clock
) -> None:
    """An operator told "paused" must find it paused even if the controller is killed right
    after the acknowledgement (seen once in an end-to-end drill: the pause was lost)."""
    controller = started(store, fleet, clock)
    saved_at_acknowledgement: list[Phase] = []
    acknowledge = store.acknowledge

    def checking(*args: Any, **kwargs: Any) -> Any:
        saved = store.load()
        assert saved is not None
        saved_at_acknowledgement.append(saved.phase)
        return acknowledge(*args, **kwargs)

    store.acknowledge = checking  # type: ignore[method-assign]
    store.send(controller.state.rollout_id, Command.PAUSE, "sre@host", 10, clock())
    controller.tick()
    assert saved_at_acknowledgement == [Phase.PAUSED]


# -- holding has a deadline ----------------------------------------------------------------


def phase(controller: CanaryController) -> Phase:
    return controller.state.phase  # read anew after each tick (a function, for mypy's sake)


def test_a_step_never_confirmed_rolls_back_after_max_step_seconds_naming_the_gateway(
    store: RolloutStore, fleet: FakeFleet, clock: Clock
) -> None:
    controller, _, registry = make_controller(store, fleet, clock, FIRST, max_step_seconds=60)
    controller.start(Launch(GATEWAYS))
    fleet.down.add("http://gw-2")
    for _ in range(60):  # a minute of ticks, one a second: held, not rolled back
        controller.tick()
        clock.sleep(1)
    assert phase(controller) is Phase.PROGRESSING
    assert controller.state.history[-1].action == "hold"
    clock.sleep(1)
    controller.tick()
    assert phase(controller) is Phase.ROLLED_BACK
    reason = controller.state.rollback_reason or ""
    assert "max_step_seconds" in reason and "http://gw-2" in reason, reason
    assert fleet.traffic["http://gw-1"].student_share == 0.0
    cause = {"model": "digits", "reason": "share_unconfirmed"}
    assert registry.get_sample_value("canary_rollbacks_total", cause) == 1


def test_a_fleet_that_cannot_be_read_mid_step_holds_then_rolls_back_at_the_deadline(
    store: RolloutStore, fleet: FakeFleet, clock: Clock
) -> None:
    controller = started(store, fleet, clock, max_step_seconds=60)
    fleet.down.add("http://gw-1")  # a store outage reads the same: the fleet cannot be read
    for _ in range(30):
        clock.sleep(1)
        controller.tick()
    assert phase(controller) is Phase.PROGRESSING  # inconclusive: no advance, no rollback
    assert controller.state.step_index == 0
    fleet.down.clear()  # back within the deadline: the step goes on
    clock.sleep(1)
    controller.tick()
    assert controller.state.held_since is None
    fleet.down.add("http://gw-1")
    for _ in range(62):
        clock.sleep(1)
        controller.tick()
    assert phase(controller) is Phase.ROLLED_BACK
    assert "http://gw-1" in (controller.state.rollback_reason or "")

"""Webhook gates of Flagger's types against a real HTTP server on loopback: what each answer does
to a rollout, what status says while it waits, and what a gate is sent."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from controller.policy import Policy
from controller.rollout import EXIT_PROMOTED, EXIT_ROLLED_BACK, CanaryController, Launch
from controller.rollout_store import Phase, Record, RolloutStore
from controller.status import render_status
from tests.controller.fakes import Clock, FakeFleet, make_controller
from tests.controller.receivers import (
    Receiver,
    closed_port,
    http_receiver,
    silent_receiver,
    trickling_receiver,
)

pytestmark = pytest.mark.e2e  # real HTTP receivers on loopback, real timeouts

GATEWAYS = ["http://gw-1", "http://gw-2"]
HOLDER = "test-host-a:1:aaaa"


def hook(
    receiver: Receiver | str, kind: str, name: str | None = None, **extra: Any
) -> dict[str, Any]:
    base = receiver if isinstance(receiver, str) else receiver.url
    return {"name": name or kind, "type": kind, "url": f"{base}/{name or kind}",
            "timeout_seconds": 2.0, **extra}  # fmt: skip


def controller_with(
    tmp_path: Path, hooks: list[dict[str, Any]], **policy: object
) -> tuple[CanaryController, RolloutStore, FakeFleet]:
    store, fleet = RolloutStore.create(tmp_path / "rollout.db"), FakeFleet(GATEWAYS)
    controller, _, _ = make_controller(store, fleet, Clock(), HOLDER, webhooks=hooks, **policy)
    return controller, store, fleet


def tick_for(controller: CanaryController, seconds: float) -> None:
    """Ticks once a (fake) second, as ``run`` would, for ``seconds`` or until the end."""
    for _ in range(int(seconds)):
        if controller.state.phase.terminal:
            return
        controller.tick()
        controller.clock.sleep(1)  # type: ignore[attr-defined]


def status_of(controller: CanaryController, store: RolloutStore) -> str:
    with httpx.Client(transport=httpx.MockTransport(lambda r: httpx.Response(503))) as client:
        return render_status(controller.state, store, client, controller.clock(), history=0)


def test_a_confirm_promotion_gate_answering_403_holds_before_the_last_step_until_200(
    tmp_path: Path,
) -> None:
    with http_receiver() as server:
        server.status["/confirm-promotion"] = 403
        gate = hook(server, "confirm-promotion")
        controller, store, fleet = controller_with(tmp_path, [gate], bake_seconds=3)
        controller.start(Launch(GATEWAYS))
        tick_for(controller, 30)  # step 1 and 2 pass their 3 s bakes well inside this
        state = controller.state
        assert state.phase is Phase.PROGRESSING and state.share == 0.25
        assert {t.student_share for t in fleet.traffic.values()} == {0.25}  # never 100 %
        asked = len(server.on("/confirm-promotion"))
        assert asked >= 15  # asked at every analysis that would have advanced
        text = status_of(controller, store)
        assert ("to enter step 3: waiting for confirm-promotion: webhook confirm-promotion "
                "answered 403") in text  # fmt: skip
        waited = re.search(r"waiting since \S+ \((\d+) s\)", text)
        assert waited is not None and int(waited[1]) >= 15  # the step-2 bake ended long ago
        waits = [r for r in state.history if r.action is Record.WAITING]
        assert len(waits) == 1  # recorded (and sent) once, while it kept holding
        server.status["/confirm-promotion"] = 200
        tick_for(controller, 10)
        controller.notifications.close(1.0)
    assert controller.state.phase is Phase.PROMOTED
    assert {t.student_share for t in fleet.traffic.values()} == {1.0}
    assert controller.state.waiting is None
    payload = server.on("/confirm-promotion")[-1].json()
    assert payload["type"] == "confirm-promotion" and payload["namespace"] == "digits"
    assert payload["rollout"]["step"] == 2 and payload["phase"] == "Progressing"
    assert len(server.on("/confirm-promotion")) == asked + 1


def test_an_unreachable_gate_holds_and_status_says_so(tmp_path: Path) -> None:
    with closed_port() as nowhere:
        gate = hook(nowhere, "confirm-traffic-increase", "load-test-gate")
        controller, store, fleet = controller_with(tmp_path, [gate])
        controller.start(Launch(GATEWAYS))
        tick_for(controller, 20)
        controller.notifications.close(1.0)
    assert controller.state.step_index == 0 and controller.state.step_started_at is None
    assert fleet.puts == []  # no traffic moved without the gate
    text = status_of(controller, store)
    assert "waiting for confirm-traffic-increase: webhook load-test-gate unreachable" in text
    assert "[unreachable, holding: load-test-gate]" in text


def test_confirm_rollout_waits_and_pre_rollout_refusing_rolls_back_before_any_traffic(
    tmp_path: Path,
) -> None:
    with http_receiver() as server:
        server.status["/confirm-rollout"] = 404
        hooks = [hook(server, "confirm-rollout", metadata={"ticket": "CHG-42"}),
                 hook(server, "pre-rollout")]  # fmt: skip
        controller, _, fleet = controller_with(tmp_path, hooks)
        controller.start(Launch(GATEWAYS))
        tick_for(controller, 5)
        assert fleet.puts == [] and len(server.on("/confirm-rollout")) == 5
        assert server.on("/confirm-rollout")[0].json()["metadata"] == {"ticket": "CHG-42"}
        server.status["/confirm-rollout"], server.status["/pre-rollout"] = 200, 500
        tick_for(controller, 5)
        controller.notifications.close(1.0)
    state = controller.state
    assert state.phase is Phase.ROLLED_BACK
    assert state.rollback_reason == "pre-rollout gate pre-rollout answered 500"
    assert {share for _, share in fleet.puts} == {0.0}  # the student never got traffic


def test_a_rollback_gate_answering_2xx_rolls_back_at_once(tmp_path: Path) -> None:
    with http_receiver() as server:
        server.status["/rollback"] = 404  # 404: no rollback asked for
        controller, _, fleet = controller_with(tmp_path, [hook(server, "rollback")])
        controller.start(Launch(GATEWAYS))
        tick_for(controller, 3)
        before = controller.state.phase, controller.state.share
        server.status["/rollback"] = 200
        tick_for(controller, 1)
        controller.notifications.close(1.0)
    assert before == (Phase.PROGRESSING, 0.05)
    assert controller.state.phase is Phase.ROLLED_BACK
    assert controller.state.rollback_reason == "rollback gate rollback answered 200"
    assert {t.student_share for t in fleet.traffic.values()} == {0.0}


def test_a_rollout_gate_failing_counts_as_failed_checks_until_rollback(tmp_path: Path) -> None:
    with http_receiver() as server:
        server.status["/smoke"] = 500
        controller, _, _ = controller_with(tmp_path, [hook(server, "rollout", "smoke")],
                                           failure_limit=3)  # fmt: skip
        assert controller.run(Launch(GATEWAYS)) == EXIT_ROLLED_BACK
    assert controller.state.rollback_reason == "webhook:smoke failed 3 analyses in a row"
    assert len(server.on("/smoke")) == 3


def test_post_rollout_is_called_once_after_the_end_and_recorded(tmp_path: Path) -> None:
    with http_receiver() as server:
        server.status["/post-rollout"] = 502
        controller, _, _ = controller_with(tmp_path, [hook(server, "post-rollout")])
        assert controller.run(Launch(GATEWAYS)) == EXIT_PROMOTED
    (call,) = server.on("/post-rollout")
    assert call.json()["phase"] == "Promoted"
    last = controller.state.history[-1]
    assert last.action is Record.GATE
    assert last.reason == "post-rollout gate post-rollout answered 502"


def test_a_gate_answers_within_its_timeout_or_holds(tmp_path: Path) -> None:
    """A gate that never answers costs a tick its timeout_seconds, not more."""
    with silent_receiver() as silent:
        gate = hook(silent, "confirm-rollout", timeout_seconds=0.3)
        controller, _, fleet = controller_with(tmp_path, [gate])
        controller.start(Launch(GATEWAYS))
        began = time.perf_counter()
        controller.tick()
        took = time.perf_counter() - began
    assert 0.3 <= took < 0.3 * 2 + 0.5 and fleet.puts == []
    assert "confirm-rollout: webhook confirm-rollout unreachable (DeadlineExceeded" in (
        controller.state.waiting or {}
    ).get("reason", "")


def test_a_gate_trickling_its_answer_is_cut_at_its_timeout_and_a_ticks_hooks_run_at_once(
    tmp_path: Path,
) -> None:
    """Each gate sends a byte every 50 ms for ever, so no single read times out: only the
    call's total deadline ends it. The tick's two rollback hooks run at once, then its
    confirm-rollout: two timeouts, not three."""
    timeout = 0.4
    with trickling_receiver() as slow:
        hooks = [hook(slow, "rollback", "kill-a", timeout_seconds=timeout),
                 hook(slow, "rollback", "kill-b", timeout_seconds=timeout),
                 hook(slow, "confirm-rollout", timeout_seconds=timeout)]  # fmt: skip
        controller, _, fleet = controller_with(tmp_path, hooks)
        controller.start(Launch(GATEWAYS))
        began = time.perf_counter()
        controller.tick()
        took = time.perf_counter() - began
    assert 2 * timeout <= took < 3 * timeout - 0.05 and fleet.puts == []
    reason = (controller.state.waiting or {}).get("reason", "")
    assert (
        f"confirm-rollout unreachable (DeadlineExceeded: no complete answer within {timeout:g} s)"
        in reason
    )
    assert "rollback: webhook kill-a unreachable" in reason and "kill-b unreachable" in reason


def test_a_policy_whose_hooks_could_outlast_the_lease_in_one_tick_is_refused() -> None:
    """interval 5 s: a 15 s lease, 10 s of it for hooks. An advancing tick calls the rollback
    hooks, then the rollout hooks, then the confirm hooks: 4 + 4 + 4 s is too long; the same
    hooks at 3 s each fit, and two rollback hooks at 4 s count once (they run at once)."""
    base = {"steps": [5, 100], "interval_seconds": 5, "gates": {"min_agreement": 0.9}}

    def hooks(seconds: float) -> list[dict[str, Any]]:
        kinds = (("rollback", "kill-a"), ("rollback", "kill-b"), ("rollout", "smoke"),
                 ("confirm-promotion", "board"))  # fmt: skip
        return [hook("http://h", kind, name, timeout_seconds=seconds) for kind, name in kinds]

    with pytest.raises(ValidationError) as refused:
        Policy.model_validate({**base, "webhooks": hooks(4)})
    assert (
        "webhooks: an advancing tick: 4 s (kill-b) + 4 s (smoke) + 4 s (board) = 12 s of "
        "calls in one tick, more than the lease (15 s"
    ) in str(refused.value)
    assert Policy.model_validate({**base, "webhooks": hooks(3)}).lease_seconds == 15

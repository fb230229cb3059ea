"""A cascade rolled out by the real controller (issue 33): real gateway processes in
``traffic.mode: cascade`` with the shipped digits pair, real labelled traffic, the real
``distill-canary`` CLI. The share is the cascade's lane, raised in steps with the same gates:
a cascade whose threshold is chosen from shadowed traffic is promoted on two gateways, and
``status`` shows each gateway's threshold with its evidence and what holds for the fleet; a
cascade whose threshold lets the bad student answer everything is rolled back to the teacher."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from controller.rollout_store import Phase
from gateway.metric_names import CASCADE_REQUESTS
from models import MODELS_DIR
from tests.rollouts import (
    canary_command,
    gateway_config,
    operator,
    run_canary,
    saved,
    share_of,
    traffic,
    write_policy,
)
from tests.servers import TestGateway, wait_until

pytestmark = pytest.mark.e2e
StartGateway = Callable[..., TestGateway]


def cascade_config(student: Path, cascade: dict[str, Any]) -> dict[str, Any]:
    return {**gateway_config(student), "traffic": {"mode": "cascade", "cascade": cascade}}


def test_a_cascade_is_rolled_out_in_steps_and_status_shows_its_thresholds(
    start_gateway: StartGateway, tmp_path: Path
) -> None:
    # fixed at 0.9 until 200 shadowed requests show a lower threshold safe at 95 %
    config = cascade_config(MODELS_DIR / "student.onnx",
                            {"max_disagreement": 0.02, "min_confidence": 0.9})  # fmt: skip
    gateways = [start_gateway(config), start_gateway(config)]
    state = tmp_path / "rollout.db"
    with traffic(*gateways) as sent:
        # from 25 %: the latency gates read the cascade's own requests (no shadow calls beside
        # them), and at 5 % the step held 20 s on max_latency_ms alone in a run here
        policy = write_policy(tmp_path, steps=[25, 50, 100])
        result = run_canary(canary_command(gateways, policy, state))
        # each gateway chooses once 200 of its requests are shadowed (a quick rollout may end
        # before): then status has evidence to show
        wait_until(lambda: all(_cascade(g)["source"] == "chosen" for g in gateways), 60,
                   "both gateways to choose a threshold from their evidence")  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert sent.answered_everywhere and sent.errors == []
    rollout = saved(state)
    assert rollout.phase is Phase.PROMOTED
    assert [r.share for r in rollout.history if r.action == "set"] == [0.25, 0.5, 1.0]
    for gateway in gateways:
        assert share_of(gateway) == 1.0
        # the lane ran the cascade: most requests the student's alone, some escalated
        sure = gateway.metric(CASCADE_REQUESTS, model="digits", escalated="false")
        escalated = gateway.metric(CASCADE_REQUESTS, model="digits", escalated="true")
        assert sure > escalated > 0, (sure, escalated)
    status = operator("status", state, "--history", "0")
    assert status.returncode == 0, status.stderr
    shown = " ".join(status.stdout.split())  # as read, whatever the terminal's width
    # each gateway's threshold, chosen from its own evidence, then what holds for the fleet
    chosen = (r"cascade escalates below 0\.\d\d \(chosen from [\d,]+ shadowed requests: "
              r"disagreement <= 0\.02 at 95%; this look's bound 0\.\d{4}\)")  # fmt: skip
    assert len(re.findall(chosen, shown)) == 2, status.stdout
    assert "cascade on 2 gateways: highest threshold " in shown
    assert "chosen from data on 2, each within its max_disagreement, all at once at confidence " \
           ">= 90%" in shown  # fmt: skip


def _cascade(gateway: TestGateway) -> dict[str, Any]:
    cascade: dict[str, Any] = httpx.get(f"{gateway.url}/admin/traffic").json()["cascade"]
    return cascade


def test_a_cascade_that_lets_a_bad_student_answer_is_rolled_back_to_the_teacher(
    start_gateway: StartGateway, tmp_path: Path
) -> None:
    # top probability is at least 1/10 for ten classes: below 0.05 nothing ever escalates
    gateway = start_gateway(cascade_config(MODELS_DIR / "student_bad.onnx",
                                           {"min_confidence": 0.05}))  # fmt: skip
    state = tmp_path / "rollout.db"
    with traffic(gateway) as sent:
        result = run_canary(canary_command([gateway], write_policy(tmp_path), state))
    assert result.returncode == 3, result.stdout + result.stderr
    assert sent.answered_everywhere and sent.errors == []  # wrong answers, never failed ones
    assert share_of(gateway) == 0.0
    rollout = saved(state)
    assert rollout.phase is Phase.ROLLED_BACK
    assert {r.step_index for r in rollout.history} == {0}  # never left the first step
    assert "min_agreement" in (rollout.rollback_reason or "")
    assert gateway.metric(CASCADE_REQUESTS, model="digits", escalated="false") > 0
    assert gateway.metric(CASCADE_REQUESTS, model="digits", escalated="true") == 0

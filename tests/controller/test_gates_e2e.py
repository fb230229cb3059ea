"""Notifications and human gates end to end: the real `distill-canary run` against a real gateway
under traffic, posting to a real receiver on loopback, held by a webhook gate and a manual
approval that the real `distill-canary approve` releases."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from controller.notify.delivery import SIGNATURE_HEADER
from tests.controller.receivers import http_receiver, signed_by
from tests.rollouts import (
    canary_command,
    canary_env,
    gateway_config,
    operator,
    saved,
    share_of,
    traffic,
    write_policy,
)
from tests.servers import TestGateway, wait_until

pytestmark = pytest.mark.e2e

SECRET = "an-hmac-key-for-the-ops-receiver"


def test_a_gated_rollout_waits_for_its_webhook_and_an_approval_and_says_so(
    start_gateway: Callable[..., TestGateway], tmp_path: Path
) -> None:
    gateway = start_gateway(gateway_config())
    state = tmp_path / "rollout.db"
    with http_receiver() as receiver:
        receiver.status["/confirm-promotion"] = 403
        policy = write_policy(
            tmp_path,
            notify=[{"url": f"{receiver.url}/ops", "name": "ops", "secret_env": "OPS_KEY",
                     "events": ["rollout_started", "step_advanced", "waiting_for_approval",
                                "approved", "promoted", "gate"]}],
            webhooks=[{"name": "change-board", "type": "confirm-promotion",
                       "url": f"{receiver.url}/confirm-promotion", "timeout_seconds": 2},
                      {"name": "cleanup", "type": "post-rollout",
                       "url": f"{receiver.url}/post-rollout"}],
            manual_approval=["confirm-promotion"],
        )  # fmt: skip
        command = canary_command([gateway], policy, state)
        env = {**canary_env(), "OPS_KEY": SECRET}
        with traffic(gateway), subprocess.Popen(command, env=env, text=True,
                                                stdout=subprocess.PIPE) as run:  # fmt: skip
            try:
                wait_until(lambda: state.exists() and saved(state) is not None
                           and saved(state).waiting is not None, 90, "the wait")  # fmt: skip
                assert share_of(gateway) == 0.25  # held before the last step
                status = operator("status", state)
                assert "to enter step 3: waiting for confirm-promotion: manual approval" in (
                    status.stdout
                )
                assert "webhook change-board answered 403" in status.stdout
                approved = operator("approve", state, "--gate", "confirm-promotion")
                assert approved.returncode == 0, approved.stderr
                assert "confirm-promotion approved by an operator (" in approved.stdout
                asked = len(receiver.on("/confirm-promotion"))
                wait_until(lambda: len(receiver.on("/confirm-promotion")) > asked + 2, 30,
                           "the gate asked again after the approval")  # fmt: skip
                assert share_of(gateway) == 0.25  # approved, but the webhook still says 403
                receiver.status["/confirm-promotion"] = 200
                out, _ = run.communicate(timeout=90)
            finally:
                if run.poll() is None:
                    run.kill()
        assert run.returncode == 0, out
        events = receiver.on("/ops")
        (post,) = receiver.on("/post-rollout")
    assert share_of(gateway) == 1.0
    kinds = [e.json()["type"] for e in events]
    assert kinds == ["rollout_started", "step_advanced", "waiting_for_approval", "approved",
                     "step_advanced", "promoted", "gate"]  # fmt: skip
    for event in events:
        assert signed_by(SECRET, event.headers[SIGNATURE_HEADER], event.body, time.time())
    assert events[3].json()["reason"].startswith("confirm-promotion approved by an operator (")
    assert post.json()["phase"] == "Promoted" and post.json()["rollout"]["share"] == 1.0
    history = saved(state).history
    assert any(r.action == "approved" for r in history)
    assert history[-1].reason == "post-rollout gate cleanup 200"

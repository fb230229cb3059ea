"""The latency-ratio gate decides against a real gateway, the last step included: the real
`distill-canary run` with `max_latency_ratio: 2` as its only quality gate, real traffic, and two
real students: the shipped one (faster than its teacher) is promoted through 5, 25 and 100 %
(at 100 % the teacher serves only shadow calls, so its latency comes from the earlier steps),
and a student many times slower than its teacher (``tests/slow_model.py``: about 2 ms of ONNX
Runtime's work a call against the teacher's tenth of one) is rolled back on latency at the first
step, within a few intervals of `min_requests`, not by the step's timeout."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from controller.rollout_store import Phase
from tests.rollouts import (
    gateway_config,
    roll_out,
    saved,
    share_of,
    write_policy,
)
from tests.servers import TestGateway
from tests.slow_model import write_slow_model

pytestmark = pytest.mark.e2e

StartGateway = Callable[..., TestGateway]
LATENCY_ONLY = {"gates": {"max_latency_ratio": 2.0, "max_error_rate": 0.05}}


def test_a_student_faster_than_its_teacher_passes_the_latency_gate_at_every_step(
    start_gateway: StartGateway, tmp_path: Path
) -> None:
    gateway = start_gateway(gateway_config())
    state = tmp_path / "rollout.db"
    result = roll_out(gateway, write_policy(tmp_path, **LATENCY_ONLY), state)
    assert result.returncode == 0, result.stdout + result.stderr
    assert share_of(gateway) == 1.0
    assert [r.share for r in saved(state).history if r.action == "set"] == [0.05, 0.25, 1.0]


def test_a_student_many_times_slower_is_rolled_back_on_latency_at_the_first_step(
    start_gateway: StartGateway, tmp_path: Path
) -> None:
    gateway = start_gateway(gateway_config(write_slow_model(tmp_path / "slow_student.onnx")))
    state = tmp_path / "rollout.db"
    result = roll_out(gateway, write_policy(tmp_path, **LATENCY_ONLY), state)
    assert result.returncode == 3, result.stdout + result.stderr
    assert share_of(gateway) == 0.0
    rollout = saved(state)
    assert rollout.phase is Phase.ROLLED_BACK
    assert {r.step_index for r in rollout.history} == {0}
    assert "max_latency_ratio" in rollout.rollback_reason, rollout.rollback_reason
    assert "timed out" not in rollout.rollback_reason and "inconclusive" not in (
        rollout.rollback_reason)  # fmt: skip

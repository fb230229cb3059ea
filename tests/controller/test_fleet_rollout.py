"""Rollouts over a fleet found in its state store (``distill-canary run --state-url``): real
Redis, real replicas, the real CLI. Replicas join and die mid-rollout; the controller follows the
registry."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from controller.local.processes import RedisProcess
from controller.rollout_store import Phase, StateError
from models import MODELS_DIR
from tests.rollouts import canary_env, gateway_config, saved, share_of, traffic, write_policy
from tests.servers import BIN, TestGateway, wait_until

pytestmark = pytest.mark.e2e

StartReplica = Callable[..., TestGateway]


@pytest.fixture
def replicas(
    redis_server: RedisProcess, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[tuple[StartReplica, str]]:
    prefix = f"rollout-{request.node.name}"[:60]
    started: list[TestGateway] = []

    def start(student: Path | None = None) -> TestGateway:
        config: dict[str, Any] = {
            **(gateway_config(student) if student else gateway_config()),
            "state": {"url": redis_server.url, "key_prefix": prefix, "heartbeat_seconds": 0.5,
                      "replica_ttl_seconds": 2.0},
        }  # fmt: skip
        replica = TestGateway(tmp_path, config).start()
        started.append(replica)
        return replica

    yield start, prefix
    for replica in started:
        replica.stop()


def fleet_canary(redis: RedisProcess, prefix: str, policy: Path, state: Path) -> list[str]:
    return [str(BIN / "distill-canary"), "run", "--policy", str(policy), "--state", str(state),
            "--state-url", redis.url, "--state-key-prefix", prefix]  # fmt: skip


def step_confirmed(state: Path) -> bool:
    try:  # the controller may have created the file and not yet its tables
        rollout = saved(state) if state.exists() else None
    except StateError:
        return False
    return rollout is not None and rollout.step_started_at is not None


def run_with_churn(
    start: StartReplica, redis: RedisProcess, prefix: str, tmp_path: Path, student: Path | None
) -> tuple[subprocess.CompletedProcess[str], list[TestGateway], TestGateway, Path]:
    """Three replicas under traffic; once the rollout has left its first step's entry, a fourth
    joins and the third is killed (not replaced). Returns the result, the live replicas, the
    dead one and the state file."""
    first, second, third = (start(student) for _ in range(3))
    state = tmp_path / "rollout.db"
    policy = write_policy(tmp_path, max_step_seconds=60)
    command = fleet_canary(redis, prefix, policy, state)
    with (
        traffic(first, second),
        subprocess.Popen(command, env=canary_env(), stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True) as controller,
    ):  # fmt: skip
        with traffic(third):
            wait_until(lambda: step_confirmed(state), 60, "the first step to be confirmed")
        third.kill()
        fourth = start(student)
        with traffic(fourth):
            output, _ = controller.communicate(timeout=240)
    result = subprocess.CompletedProcess(controller.args, controller.returncode, output, "")
    return result, [first, second, fourth], third, state


def test_a_fleet_rollout_follows_replicas_that_join_and_die(
    replicas: tuple[StartReplica, str], redis_server: RedisProcess, tmp_path: Path
) -> None:
    start, prefix = replicas
    result, live, dead, state = run_with_churn(start, redis_server, prefix, tmp_path, None)
    assert result.returncode == 0, result.stdout
    assert [share_of(replica) for replica in live] == [1.0, 1.0, 1.0]
    assert saved(state).phase is Phase.PROMOTED
    dead_id = f"{dead.url}"
    assert any("left the fleet" in line and dead_id in line for line in result.stdout.splitlines()
               ), result.stdout  # fmt: skip
    assert "joined the fleet" in result.stdout
    # A replica restarted a week later still serves the student: the store keeps 1.0.
    live[0].stop()
    live[0].start()
    assert share_of(live[0]) == 1.0


def test_a_fleet_rollback_leaves_every_live_replica_at_zero(
    replicas: tuple[StartReplica, str], redis_server: RedisProcess, tmp_path: Path
) -> None:
    start, prefix = replicas
    result, live, _, state = run_with_churn(start, redis_server, prefix, tmp_path,
                                            MODELS_DIR / "student_bad.onnx")  # fmt: skip
    assert result.returncode == 3, result.stdout
    assert [share_of(replica) for replica in live] == [0.0, 0.0, 0.0]
    assert saved(state).phase is Phase.ROLLED_BACK

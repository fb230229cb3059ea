"""A gateway whose admin API and ``/metrics`` have ports of their own, as
``deploy/kubernetes/gateway.yaml`` runs them: the controller's default source must find the
metrics where the gateway says they are, or it never confirms a share and rolls back after
``max_step_seconds`` ("share unconfirmed"). Real gateways, a real Redis, the real CLI."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from controller.local.processes import RedisProcess
from controller.rollout_store import Phase
from gateway.state.keys import StoreKeys
from tests.rollouts import gateway_config, run_canary, saved, traffic, write_policy
from tests.servers import BIN, TestGateway, free_port

pytestmark = pytest.mark.e2e


class ApartGateway(TestGateway):
    """V2 on its main port, the admin API and /metrics each on a port of its own."""

    def __init__(self, tmp_dir: Path, config: dict[str, Any]) -> None:
        self.admin_port, self.metrics_port = free_port(), free_port()
        super().__init__(tmp_dir, {**config, "admin": {"port": self.admin_port},
                                   "metrics": {"port": self.metrics_port}})  # fmt: skip
        self.admin_url = f"http://127.0.0.1:{self.admin_port}"
        self.metrics_url = f"http://127.0.0.1:{self.metrics_port}/metrics"

    def traffic_state(self) -> dict[str, Any]:
        answer: dict[str, Any] = httpx.get(f"{self.admin_url}/admin/traffic").json()
        return answer


@pytest.fixture
def apart(tmp_path: Path) -> Iterator[list[ApartGateway]]:
    started: list[ApartGateway] = []
    yield started
    for gateway in started:
        gateway.stop()


def test_a_gateway_advertises_its_metrics_and_the_controller_promotes_through_them(
    apart: list[ApartGateway], tmp_path: Path
) -> None:
    gateway = ApartGateway(tmp_path, gateway_config()).start()
    apart.append(gateway)
    assert httpx.get(f"{gateway.admin_url}/metrics").status_code == 404  # what was scraped
    assert gateway.traffic_state()["metrics_url"] == gateway.metrics_url
    state = tmp_path / "rollout.db"
    command = [str(BIN / "distill-canary"), "run", "--policy",
               str(write_policy(tmp_path, max_step_seconds=30)), "--state", str(state),
               "--gateway", gateway.admin_url]  # fmt: skip
    with traffic(gateway):
        result = run_canary(command)
    assert result.returncode == 0, result.stdout + result.stderr
    assert gateway.traffic_state()["student_share"] == 1.0
    rollout = saved(state)
    assert rollout.phase is Phase.PROMOTED
    assert [r.share for r in rollout.history if r.action == "set"] == [0.05, 0.25, 1.0]
    assert list(json.loads(json.dumps(rollout.step_mark))["counters"]) == [gateway.admin_url]


def test_a_fleet_registers_its_metrics_and_the_controller_promotes_through_them(
    apart: list[ApartGateway], redis_server: RedisProcess, tmp_path: Path
) -> None:
    prefix = "metrics-apart"
    config = {
        **gateway_config(),
        "state": {
            "url": redis_server.url,
            "key_prefix": prefix,
            "heartbeat_seconds": 0.5,
            "replica_ttl_seconds": 2,
        },
    }
    gateway = ApartGateway(tmp_path, config).start()
    apart.append(gateway)
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    keys = StoreKeys(prefix, "digits")
    (replica_id,) = (str(member) for member in client.smembers(keys.replicas))
    record = json.loads(client.get(keys.replica(replica_id)) or "{}")
    assert record["url"] == gateway.admin_url and record["metrics_url"] == gateway.metrics_url
    state = tmp_path / "rollout.db"
    command = [str(BIN / "distill-canary"), "run", "--policy",
               str(write_policy(tmp_path, max_step_seconds=30)), "--state", str(state),
               "--state-url", redis_server.url, "--state-key-prefix", prefix]  # fmt: skip
    with traffic(gateway):
        result = run_canary(command)
    assert result.returncode == 0, result.stdout + result.stderr
    assert saved(state).phase is Phase.PROMOTED
    assert gateway.traffic_state()["student_share"] == 1.0

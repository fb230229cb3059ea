"""The controller with several models per gateway, against real parts: the models a fleet's state
store knows (a real Redis), and two rollouts at once on two models of one real gateway."""

from __future__ import annotations

import json
import subprocess
import threading
from pathlib import Path
from typing import Any

import httpx
import redis

from controller.fleet_store import fleet_models
from controller.gateway_paths import traffic_path
from controller.local.processes import RedisProcess
from controller.rollout_store import Phase, RolloutStore
from gateway.state.keys import StoreKeys
from tests.conftest import StartGateway
from tests.rollouts import (
    canary_command,
    canary_env,
    gateway_config,
    operator,
    run_canary,
    traffic,
    write_policy,
)
from tests.servers import BIN, RedisFleet, TestGateway, wait_until


def register(client: redis.Redis, prefix: str, model: str, replica: str, live: bool) -> None:
    keys = StoreKeys(prefix, model)
    client.sadd(keys.replicas, replica)
    if live:  # an expired registration leaves its id in the set until a reader prunes it
        client.set(keys.replica(replica), json.dumps({"id": replica}), ex=60)


def test_the_models_of_a_fleet_are_those_a_live_replica_registered_under(
    redis_server: RedisProcess,
) -> None:
    client = redis.Redis.from_url(redis_server.url)
    prefix = "models-e2e[1]"  # glob characters in the prefix match themselves only
    register(client, prefix, "digits", "r1", live=True)
    register(client, prefix, "text", "r1", live=True)
    register(client, prefix, "gone", "r2", live=False)
    register(client, f"{prefix}:nested", "other", "r3", live=True)  # another fleet's prefix
    register(client, "models-e2e1", "elsewhere", "r4", live=True)  # what "[1]" globs would match
    assert fleet_models(redis_server.url, prefix) == ["digits", "text"]
    assert fleet_models(redis_server.url, "no-such-fleet") == []
    client.close()


# -- two rollouts at once on one gateway ------------------------------------------------------


class ShareLog:
    """Every share each model's traffic showed on any of ``gateways``, polled until stopped: a
    controller that wrote to the other model would leave a share there that model's own rollout
    never set."""

    def __init__(self, gateways: list[TestGateway], models: tuple[str, ...]) -> None:
        self.seen: dict[str, set[float]] = {model: set() for model in models}
        self._gateways, self._stop = gateways, threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> ShareLog:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _poll(self) -> None:
        while not self._stop.wait(0.05):
            for gateway in self._gateways:
                for model, seen in self.seen.items():
                    try:
                        seen.add(gateway.share(model))
                    except httpx.HTTPError:
                        continue  # a slow answer on a busy machine: the next poll reads it


def policies(tmp_path: Path) -> tuple[Path, Path]:
    """a's passes; b's gate cannot pass (no student answers within a microsecond)."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    promoted = write_policy(tmp_path / "a", steps=[5, 50, 100])
    failing = write_policy(tmp_path / "b", steps=[5, 50, 100], failure_limit=1,
                           gates={"max_latency_ms": 0.001})  # fmt: skip
    return promoted, failing


def two_rollouts_at_once(
    gateways: list[TestGateway], run_a: list[str], run_b: list[str], state: Path, logs: Path
) -> None:
    """Runs both controllers at once under traffic to both models (a on the first gateway, b on
    the last): a ends promoted (exit 0) and b rolled back (3); a second ``run`` of a while a's
    runs is refused by a's lease; ``status`` names both; neither wrote the other's share; no
    client of either model saw an error."""
    with (
        ShareLog(gateways, ("a", "b")) as shares,
        traffic(gateways[0], model="a") as sent_a,
        traffic(gateways[-1], model="b") as sent_b,
        (logs / "a.log").open("w") as log_a,
        (logs / "b.log").open("w") as log_b,
        subprocess.Popen(run_a, stdout=subprocess.DEVNULL, stderr=log_a, env=canary_env()) as a,
        subprocess.Popen(run_b, stdout=subprocess.DEVNULL, stderr=log_b, env=canary_env()) as b,
    ):
        wait_until(lambda: bool(shares.seen["a"] & {0.05, 0.5}), 90, "model a's first step")
        again = run_canary(run_a, timeout=60)  # a's lease is held: refused
        assert again.returncode == 5 and "holds this rollout of model a" in again.stderr
        listed = operator("status", state, "--history", "0")
        a.wait(timeout=240)
        b.wait(timeout=240)
    for sent in (sent_a, sent_b):  # neither model's clients saw an error, labels included
        assert sent.answered_everywhere and sent.errors == []
    assert a.returncode == 0, (logs / "a.log").read_text()
    assert b.returncode == 3, (logs / "b.log").read_text()
    assert listed.returncode == 0 and "model a" in listed.stdout and "model b" in listed.stdout
    for gateway in gateways:
        assert (gateway.share("a"), gateway.share("b")) == (1.0, 0.0), gateway.url
    assert shares.seen["a"] <= {0.0, 0.05, 0.5, 1.0} and 1.0 in shares.seen["a"]
    assert shares.seen["b"] <= {0.0, 0.05}  # b never left its first step: a never wrote b's
    store = RolloutStore.open_existing(state)
    rollout_a, rollout_b = store.load(model="a"), store.load(model="b")
    assert rollout_a is not None and rollout_a.phase is Phase.PROMOTED
    assert rollout_b is not None and rollout_b.phase is Phase.ROLLED_BACK
    assert "max_latency_ms" in (rollout_b.rollback_reason or "")
    assert store.lease("a") is None and store.lease("b") is None  # both released


TWO_MODELS: dict[str, Any] = {**gateway_config(), "models": [{"name": "a"}, {"name": "b"}]}


def test_two_rollouts_on_two_models_of_one_gateway_run_at_once_each_on_its_own_share(
    start_gateway: StartGateway, tmp_path: Path
) -> None:
    gateway = start_gateway(TWO_MODELS)
    state = tmp_path / "rollouts.db"
    promoted, failing = policies(tmp_path)
    unnamed = run_canary(canary_command([gateway], promoted, tmp_path / "unnamed.db"), timeout=60)
    assert unnamed.returncode == 2 and "the gateways serve a, b: pass --model" in unnamed.stderr
    run_a = [*canary_command([gateway], promoted, state), "--model", "a"]
    run_b = [*canary_command([gateway], failing, state), "--model", "b"]
    two_rollouts_at_once([gateway], run_a, run_b, state, tmp_path)
    # a's generation counts a's controller's writes alone (its three steps): b's never reached it
    rollout_a = RolloutStore.open_existing(state).load(model="a")
    assert rollout_a is not None
    generation = httpx.get(f"{gateway.url}{traffic_path('a')}").json()["generation"]
    assert generation == rollout_a.generations[gateway.url] == 3


def test_two_rollouts_on_two_models_of_one_fleet_run_at_once_through_its_store(
    redis_fleet: RedisFleet, tmp_path: Path
) -> None:
    replicas = [redis_fleet.start(TWO_MODELS) for _ in range(2)]
    state = tmp_path / "rollouts.db"
    promoted, failing = policies(tmp_path)
    store = ["--state-url", redis_fleet.redis_url, "--state-key-prefix", redis_fleet.prefix]
    run = [str(BIN / "distill-canary"), "run", "--state", str(state), *store]
    unnamed = run_canary([*run, "--policy", str(promoted)], timeout=60)
    assert unnamed.returncode == 2 and "the gateways serve a, b" in unnamed.stderr
    two_rollouts_at_once(replicas, [*run, "--policy", str(promoted), "--model", "a"],
                         [*run, "--policy", str(failing), "--model", "b"], state,
                         tmp_path)  # fmt: skip

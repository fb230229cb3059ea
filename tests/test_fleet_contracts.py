"""The fleet's contracts, each written once: a replica's registration (the gateway writes it, the
controller reads it, both through ``ReplicaRegistration``), the key layout (``StoreKeys``: the Lua
scripts are given every key, never spell one) and the predictions' place in it. Real Redis."""

from __future__ import annotations

import ast
import asyncio
import json
import re
from pathlib import Path

import numpy as np
import pytest
import redis
from prometheus_client import CollectorRegistry

from controller.actuator import GatewaysUnreachable
from controller.fleet_store import StoreFleet
from controller.local.processes import RedisProcess
from gateway.config import StateConfig
from gateway.metrics import GatewayMetrics
from gateway.protocol import TrafficState
from gateway.state.fleet import FleetMember, StudentHooks
from gateway.state.health import StoreHealth
from gateway.state.keys import StoreKeys
from gateway.state.redis_store import Limits, Pending, RedisStore
from gateway.state.registration import ReplicaRegistration
from gateway.state.scripts import SOURCES

ROOT = Path(__file__).resolve().parents[1]
METRICS = GatewayMetrics(CollectorRegistry(), "digits", {"teacher": 1.0, "student": 0.1})

PREVIOUS_VERSION_RECORD = (
    '{"id": "gw-0-4242", "url": "http://10.0.0.7:8081", "metrics_url": '
    '"http://10.0.0.7:9090/metrics", "student_share": 0.25, "generation": 7, "pid": 4242, '
    '"started_at": 1764800000.5, "heartbeat_at": 1764800042.25, "draining": false, '
    '"student_id": "3f2a9c", "student_error": null}'
)
"""What a replica of the previous version registers (its ``json.dumps`` of a dict), verbatim."""


def test_a_registration_in_the_previous_versions_json_reads_and_is_written_back_alike() -> None:
    read = ReplicaRegistration.model_validate_json(PREVIOUS_VERSION_RECORD)
    assert (read.id, read.student_share, read.generation) == ("gw-0-4242", 0.25, 7)
    assert read.scrape_url == "http://10.0.0.7:9090/metrics"
    assert (read.student_id, read.student_error, read.draining) == ("3f2a9c", None, False)
    # the same keys and values: a controller of the previous version reads this one's replicas
    assert json.loads(read.model_dump_json()) == json.loads(PREVIOUS_VERSION_RECORD)


def test_a_newer_replicas_extra_keys_are_ignored() -> None:
    newer = {**json.loads(PREVIOUS_VERSION_RECORD), "models": ["digits", "text"], "zone": "b"}
    read = ReplicaRegistration.model_validate_json(json.dumps(newer))
    assert read == ReplicaRegistration.model_validate_json(PREVIOUS_VERSION_RECORD)


def member(store: RedisStore, replica_id: str, share: float, generation: int) -> FleetMember:
    config = StateConfig(url=store.url, key_prefix=store.keys.key_prefix, replica_id=replica_id,
                         advertise_url=f"http://{replica_id}:8081",
                         advertise_metrics_url=f"http://{replica_id}:9090/metrics")  # fmt: skip
    health = StoreHealth(METRICS.state_store_up, METRICS.state_store_errors, "digits")

    async def load(model_id: str) -> None:
        raise AssertionError("no student is set in this test")

    hooks = StudentHooks(served=lambda: "3f2a9c", load=load)
    return FleetMember(store, config, health, lambda: (share, generation),
                       lambda *_: None, student=hooks)  # fmt: skip


def test_what_a_gateway_registers_the_controller_reads(redis_server: RedisProcess) -> None:
    prefix = "contracts-roundtrip"

    async def join() -> list[ReplicaRegistration]:
        store = RedisStore(redis_server.url, "digits", prefix, timeout_seconds=2.0)
        replica = member(store, "gw-a", 0.25, 7)
        await replica.join()
        await store.close()
        return replica.replicas

    seen_by_the_gateway = asyncio.run(join())
    fleet = StoreFleet(redis_server.url, "digits", prefix)
    try:
        traffic = fleet.read()
        assert fleet.replicas == seen_by_the_gateway  # one model, read alike on both sides
        (written,) = fleet.replicas
        assert (written.url, written.student_id, written.draining) == (
            "http://gw-a:8081", "3f2a9c", False)  # fmt: skip
        assert written.heartbeat_at is not None and written.pid is not None
        # the generation the seed wrote: the store was empty, the member seeded it with its own
        assert traffic == {"gw-a": TrafficState(student_share=0.25, generation=7)}
        assert fleet.scrape_targets() == {"http://gw-a:8081": "http://gw-a:9090/metrics"}
    finally:
        fleet.close()


def test_a_registration_the_controller_cannot_read_holds_it_naming_the_replica(
    redis_server: RedisProcess,
) -> None:
    """It cannot be confirmed, so the rollout holds (as for a replica that does not answer);
    the gateways, which only count the fleet, leave it out."""
    keys = StoreKeys("contracts-unreadable", "digits")
    client = redis.Redis.from_url(redis_server.url)
    client.set(keys.replica("gw-b"), json.dumps({"id": "gw-b", "url": "http://gw-b:8081"}))
    client.sadd(keys.replicas, "gw-b")
    client.close()
    fleet = StoreFleet(redis_server.url, "digits", keys.key_prefix)
    try:
        with pytest.raises(
            GatewaysUnreachable,
            match=r"replica gw-b's registration .* reads: "
            r"student_share: Field required; generation: Field required$",
        ):
            fleet.read()
    finally:
        fleet.close()

    async def counted() -> list[ReplicaRegistration]:
        store = RedisStore(redis_server.url, "digits", keys.key_prefix, timeout_seconds=2.0)
        try:
            return await store.replicas()
        finally:
            await store.close()

    assert asyncio.run(counted()) == []


def test_predictions_live_at_the_keys_the_layout_names(redis_server: RedisProcess) -> None:
    """Each prediction at ``StoreKeys.prediction``, indexed and charged under the layout's keys;
    the oldest evicted beyond ``max_entries`` is deleted by the key the index holds."""
    keys = StoreKeys("contracts-predictions", "digits")
    client = redis.Redis.from_url(redis_server.url)

    async def remember() -> None:
        store = RedisStore(redis_server.url, "digits", keys.key_prefix, timeout_seconds=2.0)
        limits = Limits(ttl_seconds=60, max_entries=2, max_bytes=10**9)
        for request_id in ("r1", "r2", "r3"):
            await store.exchange([Pending(request_id, "student", np.array([3]))], [], [], limits)
        await store.close()

    asyncio.run(remember())
    kept = [keys.prediction("r2").encode(), keys.prediction("r3").encode()]
    assert client.zrange(keys.prediction_index, 0, -1) == kept
    assert client.exists(keys.prediction("r1")) == 0  # evicted: its hash is gone too
    assert client.hget(keys.prediction("r3"), "b") == b"student"
    sizes = client.hgetall(keys.prediction_sizes)
    assert sorted(sizes) == kept
    assert int(client.get(keys.prediction_bytes) or 0) == sum(int(v) for v in sizes.values())
    client.close()


def test_a_prediction_the_previous_version_made_is_labelled_by_this_one(
    redis_server: RedisProcess,
) -> None:
    """During a rolling upgrade a label may reach a new replica for an old one's prediction:
    the prediction's hash is where it was (``p:<id>``); only the index moved."""
    keys = StoreKeys("contracts-upgrade", "digits")
    client = redis.Redis.from_url(redis_server.url)
    classes = np.array([3, 7], dtype="<i4").tobytes()
    written_at = "contracts-upgrade:digits:p:old-1"  # the previous version's script built it so
    client.hset(written_at, mapping={"b": "student", "c": classes, "s": "2"})
    client.pexpire(written_at, 60_000)
    client.close()

    async def label() -> str:
        store = RedisStore(redis_server.url, "digits", keys.key_prefix, timeout_seconds=2.0)
        try:
            limits = Limits(ttl_seconds=60, max_entries=10, max_bytes=10**9)
            _, (found,) = await store.exchange([], [], [("old-1", np.array([3, 1]))], limits)
        finally:
            await store.close()
        assert found.classes is not None and list(found.classes) == [3, 7]
        return found.outcome

    assert asyncio.run(label()) == "ok"


# -- no script spells a key -----------------------------------------------------------------

SHARE_FIELDS = {"share", "generation", "student"}
"""The share hash's fields: the scripts name them, and ``share`` is also its key's last part."""
EARLIER_NAMES = {"p-index", "p-size", "p-bytes"}
"""The predictions' keys of the previous layout, built inside the exchange script."""


def key_literals() -> set[str]:
    """Every key ``StoreKeys`` names, less its ``<prefix>:<model>:`` and any id."""
    keys = StoreKeys("PREFIX", "MODEL")
    named = {getattr(keys, name) for name, value in vars(StoreKeys).items()
             if isinstance(value, property) and name != "prefix"}  # fmt: skip
    named |= {keys.replica("ID"), keys.prediction("ID")}
    return {key.removeprefix(keys.prefix).removesuffix("ID") for key in named}


def lua_texts() -> list[tuple[str, str]]:
    """Every Lua script in the package's source: a string constant that calls Redis."""
    found = []
    for path in sorted([*ROOT.glob("gateway/**/*.py"), *ROOT.glob("controller/**/*.py")]):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and "redis.call" in str(node.value):
                found.append((str(path.relative_to(ROOT)), str(node.value)))
    return found


def key_spellings(lua: str) -> list[str]:
    """What in ``lua`` spells a key rather than take it from KEYS: a string literal naming one,
    a literal joined to a name (``..``), or a literal as a command's key."""
    code = re.sub(r"--[^\n]*", "", lua)
    literals = re.findall(r"'([^'\n]*)'|\"([^\"\n]*)\"", code)
    forbidden = (key_literals() | EARLIER_NAMES) - SHARE_FIELDS
    wrong = [f"literal {a or b!r}" for a, b in literals if (a or b) in forbidden]
    wrong += [f"joined {m!r}" for m in re.findall(r"['\"][^'\"\n]*['\"]\s*\.\.|\.\.\s*['\"]", code)]
    wrong += [
        f"key {m!r}" for m in re.findall(r"redis\.call\(\s*'\w+'\s*,\s*(['\"][^'\"]*['\"])", code)
    ]
    return wrong


def test_no_lua_script_in_the_package_spells_a_key() -> None:
    texts = lua_texts()
    assert len(texts) >= len(SOURCES)  # the scan finds the scripts it is meant to check
    assert {where for where, _ in texts} == {"gateway/state/scripts.py"}
    for where, lua in texts:
        assert key_spellings(lua) == [], where
    assert {"p:", "replica:", "share-changed", "prediction-bytes"} <= key_literals()


def test_the_check_catches_the_previous_layouts_spelling() -> None:
    previous = """
local p = ARGV[1]
local index, sizes, total = p .. 'p-index', p .. 'p-size', p .. 'p-bytes'
redis.call('DEL', p .. 'p:' .. id)
redis.call('HGET', 'distill-gateway:digits:share', 'share')
"""
    wrong = key_spellings(previous)
    assert "literal 'p-index'" in wrong and "literal 'p:'" in wrong
    assert any(w.startswith("joined") for w in wrong) and any(w.startswith("key") for w in wrong)

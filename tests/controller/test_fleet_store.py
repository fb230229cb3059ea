"""StoreFleet against a real Redis with registrations written as replicas write them: who is
waited for, who is named, and a store that is down."""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis

from controller.actuator import GatewaysDisagree, GatewaysUnreachable
from controller.fleet_store import StoreFleet
from controller.local.processes import RedisProcess, free_port
from controller.sources import MetricsUnavailable
from gateway.state.keys import StoreKeys

PREFIX = "fleet-store-test"


def register(server: RedisProcess, replica: dict[str, Any]) -> None:
    client = redis.Redis.from_url(server.url)
    keys = StoreKeys(PREFIX, "digits")
    client.set(keys.replica(replica["id"]), json.dumps(replica), px=60_000)
    client.sadd(keys.replicas, replica["id"])
    client.close()


def replica(name: str, share: float, generation: int, draining: bool = False) -> dict[str, Any]:
    return {"id": name, "url": f"http://{name}:8081", "student_share": share,
            "generation": generation, "draining": draining}  # fmt: skip


def test_a_share_is_confirmed_by_live_replicas_and_a_laggard_is_named(
    redis_server: RedisProcess,
) -> None:
    ticks = iter(range(1000))  # a clock that moves a second per reading: no real waiting
    fleet = StoreFleet(redis_server.url, "digits", PREFIX, sleep=lambda _: None,
                       clock=lambda: float(next(ticks)))  # fmt: skip
    register(redis_server, replica("a", 0.05, 5))
    register(redis_server, replica("b", 0.0, 1))  # never applies it
    register(redis_server, replica("c", 0.0, 1, draining=True))  # leaving: not waited for
    with pytest.raises(GatewaysDisagree, match=r"b \(http://b:8081\) reports share 0") as caught:
        fleet.set_share(0.05)
    assert "a (" not in str(caught.value) and "c (" not in str(caught.value)
    generation = int(redis.Redis.from_url(redis_server.url).hget(StoreKeys(PREFIX, "digits").share,
                                                                 "generation") or 0)  # fmt: skip
    register(redis_server, replica("a", 0.05, generation))
    register(redis_server, replica("b", 0.05, generation))
    fleet.verify(0.05, {"a": fleet.read()["a"]})
    assert fleet.scrape_targets() == {u: f"{u}/metrics" for u in ("http://a:8081", "http://b:8081",
                                                                  "http://c:8081")}  # fmt: skip


def test_a_store_that_is_down_holds_rather_than_fails() -> None:
    fleet = StoreFleet(f"redis://127.0.0.1:{free_port()}/0", "digits", PREFIX,
                       timeout_seconds=0.5)  # fmt: skip
    with pytest.raises(GatewaysUnreachable, match=r"state store redis://127\.0\.0\.1"):
        fleet.read()
    with pytest.raises(GatewaysUnreachable):
        fleet.set_share(0.25)
    with pytest.raises(MetricsUnavailable):  # the analysis holds, as for a failed scrape
        fleet.scrape_targets()

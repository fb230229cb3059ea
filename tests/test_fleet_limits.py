"""Where fleet mode and one process would differ on the predictions awaiting labels, against a
real Redis: expiry runs on Redis's clock (a replica whose clock runs ahead expires nobody's
predictions), and ``feedback.max_bytes`` charges what a prediction really costs Redis."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import numpy as np
import pytest
import redis
from prometheus_client import CollectorRegistry

from controller.local.processes import RedisProcess
from gateway.config import FeedbackConfig
from gateway.feedback import ClassLabels
from gateway.metrics import GatewayMetrics
from gateway.state.health import StoreHealth
from gateway.state.keys import StoreKeys
from gateway.state.predictions import FleetPredictions
from gateway.state.redis_store import Limits, Pending, RedisStore

pytestmark = pytest.mark.e2e
METRICS = GatewayMetrics(CollectorRegistry(), "digits", {"teacher": 1.0, "student": 0.1})


@pytest.fixture(scope="module")
def redis_url(redis_server: RedisProcess) -> Iterator[str]:
    yield redis_server.url


def replica(url: str, prefix: str) -> tuple[RedisStore, FleetPredictions]:
    store = RedisStore(url, "digits", prefix, timeout_seconds=2.0)
    health = StoreHealth(METRICS.state_store_up, METRICS.state_store_errors, "digits")
    config = FeedbackConfig(ttl_seconds=60)
    predictions = FleetPredictions(store, config, ClassLabels(10), health,
                                   METRICS.state_store_fallbacks, "digits")  # fmt: skip
    return store, predictions


def test_a_replica_whose_clock_runs_ahead_expires_no_one_elses_predictions(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def main() -> None:
        first, on_time = replica(redis_url, "skew")
        second, ahead = replica(redis_url, "skew")
        await on_time.remember("made-on-time", "student", np.array([4]))
        real = time.time
        monkeypatch.setattr(time, "time", lambda: real() + 7200)  # two hours ahead
        await ahead.remember("made-ahead", "teacher", np.array([5]))
        monkeypatch.setattr(time, "time", real)
        assert (await on_time.score("made-on-time", 4)).correct == 1  # not expired by the other
        assert (await on_time.score("made-ahead", 5)).correct == 1
        for store in (first, second):
            await store.close()

    asyncio.run(main())


@pytest.mark.parametrize(("id_length", "rows"), [(16, 1), (36, 1), (36, 64), (100, 1)])
def test_max_bytes_charges_what_a_prediction_costs_redis(
    redis_url: str, id_length: int, rows: int
) -> None:
    """INFO memory's growth per prediction against what the store charges for it (within 15 %);
    one process charges its own memory the same way (gateway.feedback)."""
    prefix, count = f"cost-{id_length}-{rows}", 5000
    client = redis.Redis.from_url(redis_url)

    async def main() -> None:
        store = RedisStore(redis_url, "digits", prefix, timeout_seconds=5.0)
        limits = Limits(600, 10**7, 10**12)
        for start in range(0, count, 500):
            batch = [Pending(f"{i:0{id_length}d}", "student", np.arange(rows) % 10)
                     for i in range(start, start + 500)]  # fmt: skip
            await store.exchange(batch, [], [], limits)
        await store.close()

    before = int(client.info("memory")["used_memory"])
    asyncio.run(main())
    grown = (int(client.info("memory")["used_memory"]) - before) / count
    charged = int(client.get(StoreKeys(prefix, "digits").prediction_bytes) or 0) / count
    client.close()
    assert charged == pytest.approx(grown, rel=0.15), (charged, grown)

"""FleetPredictions' own logic, against a fake store at its seam (the real Redis is in
test_fleet.py): one round trip per event-loop turn, and what happens when the store fails."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from gateway.config import FeedbackConfig
from gateway.errors import Conflict, NotFound
from gateway.feedback import ClassLabels
from gateway.metrics import GatewayMetrics
from gateway.state import StoreUnavailable
from gateway.state.health import StoreHealth
from gateway.state.predictions import FleetPredictions
from gateway.state.redis_store import Labelled, Limits, Pending, shape_text


class FakeStore:
    """Keeps predictions in a dict, counts round trips, and fails while ``down``."""

    url_for_humans = "redis://fake:6379/0"

    def __init__(self) -> None:
        self.predictions: dict[str, tuple[str, np.ndarray, bool]] = {}
        self.round_trips: list[tuple[int, int]] = []  # (predictions, labels) per round trip
        self.down = False
        self.answering = asyncio.Event()  # cleared: a store that takes its time to answer
        self.answering.set()

    async def exchange(
        self,
        pending: Sequence[Pending],
        pairs: Sequence[tuple[str, np.ndarray]],
        labels: Sequence[tuple[str, np.ndarray]],
        limits: Limits,
    ) -> tuple[int, list[Labelled]]:
        await asyncio.sleep(0)  # a round trip yields to the loop
        await self.answering.wait()
        if self.down:
            raise StoreUnavailable("state store redis://fake:6379/0 unreachable (exchange)")
        self.round_trips.append((len(pending), len(labels)))
        for item in pending:
            self.predictions[item.request_id] = (item.backend, item.classes, False)
        found = []
        for request_id, given in labels:
            shape = given.shape
            entry = self.predictions.get(request_id)
            if entry is None:
                found.append(Labelled("missing"))
            elif entry[2]:
                found.append(Labelled("labelled"))
            elif entry[1].shape != tuple(shape):
                found.append(Labelled("shape", shape=shape_text(entry[1].shape)))
            else:
                self.predictions[request_id] = (entry[0], entry[1], True)
                found.append(Labelled("ok", entry[0], entry[1]))
        return len(self.predictions) if pending else -1, found

    async def pending_count(self) -> tuple[int, int]:
        return len(self.predictions), 0


REGISTRY = CollectorRegistry()
METRICS = GatewayMetrics(REGISTRY, "digits", {"teacher": 1.0, "student": 0.1})


@pytest.fixture
def metrics() -> GatewayMetrics:
    return METRICS


def kept_locally() -> float:
    labels = {"model": "digits", "op": "remember"}
    return REGISTRY.get_sample_value("gateway_state_store_fallbacks_total", labels) or 0.0


def fleet_predictions(store: FakeStore, metrics: GatewayMetrics) -> FleetPredictions:
    health = StoreHealth(metrics.state_store_up, metrics.state_store_errors, "digits")
    return FleetPredictions(store, FeedbackConfig(), ClassLabels(10), health,  # type: ignore[arg-type]
                            metrics.state_store_fallbacks, "digits")  # fmt: skip


def test_requests_finishing_in_one_loop_turn_share_one_round_trip(metrics: GatewayMetrics) -> None:
    store = FakeStore()
    predictions = fleet_predictions(store, metrics)

    async def scenario() -> None:
        await asyncio.gather(*(predictions.remember(f"r{i}", "student", np.array([i % 10]))
                               for i in range(50)))  # fmt: skip
        assert store.round_trips == [(50, 0)]  # all 50 answered only after their write
        scored = await asyncio.gather(*(predictions.score(f"r{i}", i % 10) for i in range(50)))
        assert all(s.correct == 1 for s in scored)
        assert store.round_trips[1:] == [(0, 50)]

    asyncio.run(scenario())


def test_labels_keep_their_meaning_through_the_store(metrics: GatewayMetrics) -> None:
    store = FakeStore()
    predictions = fleet_predictions(store, metrics)

    async def scenario() -> None:
        await predictions.remember("a", "teacher", np.array([3, 4]))
        with pytest.raises(NotFound, match="no prediction for request id 'b'"):
            await predictions.score("b", 3)
        with pytest.raises(Exception, match="had 2 example"):
            await predictions.score("a", 3)  # one label for two rows: 422, not consumed
        assert (await predictions.score("a", [3, 5])).correct == 1
        with pytest.raises(Conflict):
            await predictions.score("a", [3, 4])

    asyncio.run(scenario())


def test_with_the_store_down_predictions_stay_here_and_other_labels_are_503(
    metrics: GatewayMetrics,
) -> None:
    store = FakeStore()
    predictions = fleet_predictions(store, metrics)
    before = kept_locally()

    async def scenario() -> None:
        store.down = True
        await predictions.remember("here", "student", np.array([7]))  # answered all the same
        assert kept_locally() == before + 1  # counted
        with pytest.raises(StoreUnavailable, match="retry later"):
            await predictions.score("elsewhere", 7)  # made by another replica: 503, not 404
        assert (await predictions.score("here", 7)).correct == 1  # this replica's: joined
        store.down = False
        await predictions.remember("after", "student", np.array([1]))  # health is down: local
        assert "after" in predictions.local and "after" not in store.predictions

    asyncio.run(scenario())


def test_a_slow_store_holds_a_request_no_longer_than_its_deadline(metrics: GatewayMetrics) -> None:
    """The write goes on after the request is answered, and lands: a later label joins it."""

    async def main() -> None:
        store = FakeStore()
        store.answering.clear()  # the store answers only when the test says
        predictions = fleet_predictions(store, metrics)
        started = time.perf_counter()
        await predictions.remember("r-1", "student", np.array([3]), deadline=started + 0.05)
        assert time.perf_counter() - started < 1.0 and "r-1" not in store.predictions
        store.answering.set()
        assert (await predictions.score("r-1", 3)).correct == 1

    asyncio.run(main())

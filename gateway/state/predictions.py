"""Predictions awaiting their labels: in this process (``memory``), or in the fleet's store so
that a label posted to any replica joins the prediction made by any other.

Both offer the same three calls to the service: ``remember`` (awaited on the request path, so a
label posted the moment the answer arrives finds it), ``pair`` (a shadow answer, from the shadow
worker) and ``score`` (a label).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import replace
from typing import Any, Protocol

import numpy as np
from prometheus_client import Counter

from gateway.config import FeedbackConfig
from gateway.errors import NotFound
from gateway.feedback import (
    LabelRules,
    PredictionStore,
    Scored,
    already_labelled,
    wrong_label_count,
)
from gateway.state.errors import StoreUnavailable
from gateway.state.health import StoreHealth
from gateway.state.redis_store import Labelled, Limits, Pending, RedisStore

log = logging.getLogger(__name__)
ROUND_TRIPS_IN_FLIGHT = 1
"""What finishes while a round trip is out waits for it and goes in the next, bigger one: round
trips cost the gateway CPU (redis-py), and at 2 in flight bench_fleet lost 14-17 % instead of 9-10
%."""


class Predictions(Protocol):
    async def remember(
        self, request_id: str, backend: str, classes: np.ndarray, deadline: float | None = None
    ) -> None:
        """``deadline`` (``time.perf_counter()``): the request's own; the wait ends there."""
        ...

    def pair(self, request_id: str, other_classes: np.ndarray) -> object: ...

    async def score(self, request_id: str, label: Any) -> Scored: ...

    def pending(self) -> tuple[int, int]:
        """Predictions waiting, and the bytes they are charged."""
        ...


class LocalPredictions:
    """This process's memory alone (``state.url: memory``)."""

    def __init__(self, store: PredictionStore) -> None:
        self.store = store

    async def remember(
        self, request_id: str, backend: str, classes: np.ndarray, deadline: float | None = None
    ) -> None:
        self.store.remember(request_id, backend, classes)

    def pair(self, request_id: str, other_classes: np.ndarray) -> bool:
        return self.store.pair(request_id, other_classes)

    async def score(self, request_id: str, label: Any) -> Scored:
        return self.store.score(request_id, label)

    def pending(self) -> tuple[int, int]:
        return len(self.store), self.store.bytes


class FleetPredictions:
    """In the store, in one round trip per event-loop turn: the predictions of every request
    that finished in the same turn, the shadow answers and the labels that arrived go together
    (one Lua call), while the requests wait for it; at most ``ROUND_TRIPS_IN_FLIGHT`` are out at
    once, so under load batches grow instead of round trips. With the store down, predictions
    are kept in this process (counted), and a label the store cannot be asked about is answered
    503 (retry), never 404."""

    def __init__(
        self,
        store: RedisStore,
        config: FeedbackConfig,
        labels: LabelRules,
        health: StoreHealth,
        kept_locally: Counter,
        model: str,
    ) -> None:
        self._store = store
        self._limits = Limits(config.ttl_seconds, config.max_entries, config.max_bytes)
        self._rules = labels
        self._health = health
        self._kept_locally = kept_locally.labels(model, "remember")
        self.local = PredictionStore(config.ttl_seconds, config.max_entries, labels,
                                   max_bytes=config.max_bytes)  # fmt: skip
        self._remembering: list[tuple[Pending, asyncio.Future[None]]] = []
        self._pairs: list[tuple[str, np.ndarray]] = []
        self._labels: list[tuple[str, np.ndarray, asyncio.Future[Labelled]]] = []
        self._scheduled = False  # a round trip will start at the end of this loop turn
        self._in_flight = 0
        self._trips: set[asyncio.Task[None]] = set()
        self._in_store = (0, 0)

    async def remember(
        self, request_id: str, backend: str, classes: np.ndarray, deadline: float | None = None
    ) -> None:
        """Waits for the write (at most ``state.timeout_ms``, the store's own timeout), so that
        a label posted to another replica the moment the answer arrives finds it; never past
        ``deadline``: a request whose time is up is answered, and its write goes on (a label
        sent before it lands gets 404 and may be sent again)."""
        if not self._health.up:
            self._keep_locally([Pending(request_id, backend, classes)])
            return
        done = asyncio.get_running_loop().create_future()
        self._remembering.append((Pending(request_id, backend, classes), done))
        self._schedule()
        if deadline is None:
            await done  # cancelled with its request, the write goes on regardless
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(done), max(0.0, deadline - time.perf_counter()))

    def pair(self, request_id: str, other_classes: np.ndarray) -> None:
        if request_id in self.local:
            self.local.pair(request_id, other_classes)
        elif self._health.up:
            self._pairs.append((request_id, other_classes))
            self._schedule()

    async def score(self, request_id: str, label: Any) -> Scored:
        labels = self._rules.check(label)
        if request_id in self.local:  # made while the store was down
            return self.local.score(request_id, label)
        found: asyncio.Future[Labelled] = asyncio.get_running_loop().create_future()
        self._labels.append((request_id, labels, found))
        self._schedule()
        try:
            taken = await found
        except StoreUnavailable as exc:
            raise StoreUnavailable(
                f"cannot join the label for request id {request_id!r}: the state store is "
                "unreachable, and this replica did not make that prediction; retry later"
            ) from exc
        if taken.outcome == "missing":
            raise NotFound(f"no prediction for request id {request_id!r} (unknown or expired)")
        if taken.outcome == "labelled":
            raise already_labelled(request_id)
        if taken.outcome == "shape":
            examples = int(taken.shape.split(",")[0] or 1)
            raise wrong_label_count(request_id, examples, len(labels))
        assert taken.classes is not None
        scored = self._rules.score(taken.backend, taken.classes, taken.other, labels)
        return replace(scored, repeat=True) if taken.outcome == "repeat" else scored

    @property
    def _waiting(self) -> bool:
        return bool(self._remembering or self._pairs or self._labels)

    def _schedule(self) -> None:
        if not self._scheduled and self._in_flight < ROUND_TRIPS_IN_FLIGHT:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._start)

    def _start(self) -> None:
        """Sends what waits now: this event-loop turn's predictions, shadow answers, labels."""
        self._scheduled = False
        if not self._waiting:
            return
        batch = (self._remembering, self._pairs, self._labels)
        self._remembering, self._pairs, self._labels = [], [], []
        self._in_flight += 1
        task = asyncio.get_running_loop().create_task(self._send(*batch))
        self._trips.add(task)
        task.add_done_callback(self._trips.discard)

    async def _send(
        self,
        remembering: list[tuple[Pending, asyncio.Future[None]]],
        pairs: list[tuple[str, np.ndarray]],
        labels: list[tuple[str, np.ndarray, asyncio.Future[Labelled]]],
    ) -> None:
        try:
            await self._round_trip(remembering, pairs, labels)
        finally:
            self._in_flight -= 1
            if self._waiting:
                self._schedule()

    async def _round_trip(
        self,
        remembering: list[tuple[Pending, asyncio.Future[None]]],
        pairs: list[tuple[str, np.ndarray]],
        labels: list[tuple[str, np.ndarray, asyncio.Future[Labelled]]],
    ) -> None:
        pending = [item for item, _ in remembering]
        try:
            count, found = await self._store.exchange(
                pending, pairs, [(i, given) for i, given, _ in labels], self._limits
            )
        except Exception as exc:
            failure = exc if isinstance(exc, StoreUnavailable) else StoreUnavailable(
                f"state store: {type(exc).__name__}: {exc}")  # fmt: skip
            if not isinstance(exc, StoreUnavailable):  # a bug: must not leave requests waiting
                log.exception("state store round trip failed")
            self._health.failed("remember" if pending else "label", failure)
            self._keep_locally(pending)
            for *_, waiting in labels:
                if not waiting.done():
                    waiting.set_exception(failure)
        else:
            self._health.succeeded()
            if count >= 0:
                self._in_store = (count, self._in_store[1])
            for (*_, waiting), answer in zip(labels, found, strict=True):
                if not waiting.done():
                    waiting.set_result(answer)
        for _, done in remembering:
            if not done.done():
                done.set_result(None)

    def _keep_locally(self, pending: list[Pending]) -> None:
        for item in pending:
            self.local.remember(item.request_id, item.backend, item.classes)
        if pending:
            self._kept_locally.inc(len(pending))

    async def refresh_pending(self) -> None:
        """For the pending gauges: read by the heartbeat, never on the request path."""
        self._in_store = await self._store.pending_count()

    def pending(self) -> tuple[int, int]:
        count, size = self._in_store
        return count + len(self.local), size + self.local.bytes

    async def flush(self) -> None:
        """Waits for the round trips in flight (on shutdown)."""
        await asyncio.gather(*self._trips, return_exceptions=True)

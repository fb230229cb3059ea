"""Predictions awaiting their labels: in this process (``memory``), or in the fleet's store so
that a label posted to any replica joins the prediction made by any other.

Both offer the same three calls to the service: ``remember`` (awaited on the request path, so a
label posted the moment the answer arrives finds it), ``pair`` (a shadow answer, from the shadow
worker) and ``score`` (a label).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Protocol

import numpy as np
from prometheus_client import Counter

from gateway.config import FeedbackConfig
from gateway.errors import NotFound
from gateway.feedback import (
    FeedbackStore,
    Scored,
    already_labelled,
    check_labels,
    score_labels,
    wrong_label_count,
)
from gateway.state.errors import StoreUnavailable
from gateway.state.health import StoreHealth
from gateway.state.redis_store import Pending, RedisStore

log = logging.getLogger(__name__)


class Predictions(Protocol):
    async def remember(self, request_id: str, backend: str, classes: np.ndarray) -> None: ...

    def pair(self, request_id: str, other_classes: np.ndarray) -> object: ...

    async def score(self, request_id: str, label: int | list[int]) -> Scored: ...

    def pending(self) -> tuple[int, int]:
        """Predictions waiting, and the bytes they are charged."""
        ...


class LocalPredictions:
    """This process's memory alone (``state.url: memory``)."""

    def __init__(self, store: FeedbackStore) -> None:
        self.store = store

    async def remember(self, request_id: str, backend: str, classes: np.ndarray) -> None:
        self.store.remember(request_id, backend, classes)

    def pair(self, request_id: str, other_classes: np.ndarray) -> bool:
        return self.store.pair(request_id, other_classes)

    async def score(self, request_id: str, label: int | list[int]) -> Scored:
        return self.store.score(request_id, label)

    def pending(self) -> tuple[int, int]:
        return len(self.store), self.store.bytes


class FleetPredictions:
    """In the store, written once per event-loop turn: the predictions of every request that
    finished in the same turn (and the shadow answers) go in one round trip, while the requests
    wait for it; one write is in flight at a time, so under load batches grow instead of round
    trips. With the store down, predictions are kept in this process (counted), and a label the
    store cannot be asked about is answered 503 (retry), never 404."""

    def __init__(
        self,
        store: RedisStore,
        config: FeedbackConfig,
        num_classes: int,
        health: StoreHealth,
        kept_locally: Counter,
        model: str,
    ) -> None:
        self._store = store
        self._config = config
        self._num_classes = num_classes
        self._health = health
        self._kept_locally = kept_locally.labels(model, "remember")
        self.local = FeedbackStore(config.ttl_seconds, config.max_entries, num_classes,
                                   max_bytes=config.max_bytes)  # fmt: skip
        self._waiting: list[tuple[Pending, asyncio.Future[None]]] = []
        self._pairs: list[tuple[str, np.ndarray]] = []
        self._writing = False
        self._scheduled = False
        self._writer: asyncio.Task[None] | None = None
        self._in_store = (0, 0)

    async def remember(self, request_id: str, backend: str, classes: np.ndarray) -> None:
        if not self._health.up:
            self._keep_locally([Pending(request_id, backend, classes)])
            return
        done = asyncio.get_running_loop().create_future()
        self._waiting.append((Pending(request_id, backend, classes), done))
        self._schedule()
        await asyncio.shield(done)  # a client that goes away does not cancel the write

    def pair(self, request_id: str, other_classes: np.ndarray) -> None:
        if request_id in self.local:
            self.local.pair(request_id, other_classes)
        elif self._health.up:
            self._pairs.append((request_id, other_classes))
            self._schedule()

    def _schedule(self) -> None:
        if not self._scheduled and not self._writing:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._start_writing)

    def _start_writing(self) -> None:
        self._scheduled = False
        if self._writing or not (self._waiting or self._pairs):
            return
        self._writing = True
        self._writer = asyncio.get_running_loop().create_task(self._write())

    async def _write(self) -> None:
        while self._waiting or self._pairs:
            batch, self._waiting = self._waiting, []
            pairs, self._pairs = self._pairs, []
            pending = [item for item, _ in batch]
            try:
                count = await self._store.remember(
                    pending, pairs, self._config.ttl_seconds, self._config.max_entries,
                    self._config.max_bytes, int(time.time() * 1000),
                )  # fmt: skip
            except StoreUnavailable as exc:
                self._health.failed("remember", exc)
                self._keep_locally(pending)
            except Exception:  # a bug must not leave requests waiting forever
                log.exception("writing %d prediction(s) to the state store failed", len(pending))
                self._keep_locally(pending)
            else:
                self._health.succeeded()
                if count >= 0:
                    self._in_store = (count, self._in_store[1])
            for _, done in batch:
                if not done.done():
                    done.set_result(None)
        self._writing = False

    def _keep_locally(self, pending: list[Pending]) -> None:
        for item in pending:
            self.local.remember(item.request_id, item.backend, item.classes)
        self._kept_locally.inc(len(pending))

    async def score(self, request_id: str, label: int | list[int]) -> Scored:
        labels = check_labels(label, self._num_classes)
        if request_id in self.local:  # made while the store was down
            return self.local.score(request_id, label)
        try:
            found = await self._store.take_for_label(request_id, labels.shape)
        except StoreUnavailable as exc:
            self._health.failed("label", exc)
            raise StoreUnavailable(
                f"cannot join the label for request id {request_id!r}: the state store is "
                "unreachable, and this replica did not make that prediction; retry later"
            ) from exc
        self._health.succeeded()
        if found.outcome == "missing":
            raise NotFound(f"no prediction for request id {request_id!r} (unknown or expired)")
        if found.outcome == "labelled":
            raise already_labelled(request_id)
        if found.outcome == "shape":
            examples = int(np.prod([int(d) for d in found.shape.split(",") if d]))
            raise wrong_label_count(request_id, examples, labels.size)
        assert found.classes is not None
        return score_labels(found.backend, found.classes, found.other, labels)

    async def refresh_pending(self) -> None:
        """For the pending gauges: read by the heartbeat, never on the request path."""
        self._in_store = await self._store.pending_count()

    def pending(self) -> tuple[int, int]:
        count, size = self._in_store
        return count + len(self.local), size + self.local.bytes

    async def flush(self) -> None:
        """Waits for the write in flight (on shutdown)."""
        if self._writer is not None:
            await asyncio.gather(self._writer, return_exceptions=True)

"""Remembers what each request predicted until its ground-truth label arrives (or its TTL ends).

Bounded in size and time: the oldest predictions are forgotten first.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from gateway.errors import Conflict, NotFound, Unprocessable


@dataclass
class _Prediction:
    backend: str
    classes: np.ndarray
    expires_at: float
    labelled: bool = False


@dataclass(frozen=True)
class Scored:
    backend: str
    correct: int
    total: int


class FeedbackStore:
    def __init__(
        self,
        ttl_seconds: float,
        max_entries: int,
        num_classes: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ttl = ttl_seconds
        self._max_entries = max_entries
        self._num_classes = num_classes
        self._clock = clock
        self._predictions: OrderedDict[str, _Prediction] = OrderedDict()

    def __len__(self) -> int:
        return len(self._predictions)

    def remember(self, request_id: str, backend: str, classes: np.ndarray) -> None:
        """A reused request id replaces the earlier prediction."""
        now = self._clock()
        self._forget_expired(now)
        self._predictions.pop(request_id, None)
        self._predictions[request_id] = _Prediction(backend, classes, now + self._ttl)
        while len(self._predictions) > self._max_entries:
            self._predictions.popitem(last=False)

    def score(self, request_id: str, label: int | list[int]) -> Scored:
        self._forget_expired(self._clock())
        prediction = self._predictions.get(request_id)
        if prediction is None:
            raise NotFound(f"no prediction for request id {request_id!r} (unknown or expired)")
        if prediction.labelled:
            raise Conflict(f"request id {request_id!r} already has a label")
        labels = np.atleast_1d(np.asarray(label, dtype=np.int64))
        if labels.shape != prediction.classes.shape:
            raise Unprocessable(
                f"request {request_id!r} had {prediction.classes.size} example(s); "
                f"got {labels.size} label(s)"
            )
        if labels.min() < 0 or labels.max() >= self._num_classes:
            raise Unprocessable(f"labels must be classes 0..{self._num_classes - 1}")
        prediction.labelled = True
        correct = int((labels == prediction.classes).sum())
        return Scored(prediction.backend, correct, int(labels.size))

    def _forget_expired(self, now: float) -> None:
        # Insertion order is expiry order, so expired entries are all at the front.
        while self._predictions:
            oldest = next(iter(self._predictions.values()))
            if oldest.expires_at > now:
                break
            self._predictions.popitem(last=False)

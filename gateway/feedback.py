"""Remembers what each request predicted until its ground-truth label arrives (or its TTL ends).

Bounded in time, in entries and in bytes: the oldest predictions are forgotten first.
"""

from __future__ import annotations

import sys
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Final

import numpy as np

from gateway.errors import Conflict, NotFound, Unprocessable

_ENTRY_OVERHEAD = 400
"""Bytes an entry costs beyond its id's string and its classes' data: the dataclass, the numpy
array's header and the ordered dict's slot (measured with tracemalloc, rounded up)."""


# A remembered prediction is a plain tuple, not a dataclass: a tuple of strings, numbers and
# arrays is untracked by the garbage collector once it has looked at it, so a full store (100,000
# entries by default) stops costing every full collection 23 ms (8 ms as tuples), a pause that
# lands on the requests of the moment.
_Prediction = tuple[str, np.ndarray, float, int, np.ndarray | None, np.ndarray | None]
# its fields: backend, classes, expires_at, size (what it is charged against max_bytes), the
# labels it was given (None until then), and the other backend's classes (from shadow traffic) or
# None
_CLASSES: Final = 1
_EXPIRES_AT: Final = 2
_SIZE: Final = 3
_LABELLED: Final = 4
_OTHER: Final = 5


@dataclass(frozen=True)
class Paired:
    """A labelled request both backends answered: how many examples each got right."""

    both_correct: int
    teacher_only: int
    student_only: int
    both_wrong: int

    def by_outcome(self) -> dict[str, int]:
        return {"both_correct": self.both_correct, "teacher_only": self.teacher_only,
                "student_only": self.student_only, "both_wrong": self.both_wrong}  # fmt: skip


@dataclass(frozen=True)
class Scored:
    backend: str
    correct: int
    total: int
    by_class: dict[int, tuple[int, int]]  # true class -> (examples, right)
    paired: dict[int, Paired] | None = None  # by true class, when the other backend answered
    repeat: bool = False  # the same label again (a retry): answered alike, counted once


class FeedbackStore:
    def __init__(
        self,
        ttl_seconds: float,
        max_entries: int,
        num_classes: int,
        clock: Callable[[], float] = time.monotonic,
        max_bytes: int | None = None,
    ) -> None:
        self._ttl = ttl_seconds
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self.bytes = 0  # what the remembered predictions are charged, in all
        self._num_classes = num_classes
        self._clock = clock
        self._predictions: OrderedDict[str, _Prediction] = OrderedDict()

    def __len__(self) -> int:
        return len(self._predictions)

    def remember(self, request_id: str, backend: str, classes: np.ndarray) -> None:
        """A reused request id replaces the earlier prediction."""
        now = self._clock()
        self._forget_expired(now)
        self._forget(request_id)
        size = sys.getsizeof(request_id) + classes.nbytes + _ENTRY_OVERHEAD
        self._predictions[request_id] = (backend, classes, now + self._ttl, size, None, None)
        self.bytes += size
        while len(self._predictions) > self._max_entries or self._over_budget():
            self._forget_oldest()

    def _over_budget(self) -> bool:
        return self._max_bytes is not None and self.bytes > self._max_bytes

    def _forget(self, request_id: str) -> None:
        forgotten = self._predictions.pop(request_id, None)
        if forgotten is not None:
            self.bytes -= forgotten[_SIZE]

    def _forget_oldest(self) -> None:
        _, forgotten = self._predictions.popitem(last=False)
        self.bytes -= forgotten[_SIZE]

    def pair(self, request_id: str, other_classes: np.ndarray) -> bool:
        """The other backend's answer to a remembered request (from shadow traffic), so that
        its label scores both: whether it was kept (False once labelled, expired or unknown)."""
        prediction = self._predictions.get(request_id)
        if (prediction is None or prediction[_LABELLED] is not None
                or prediction[_OTHER] is not None
                or other_classes.shape != prediction[_CLASSES].shape):  # fmt: skip
            return False
        backend, classes, expires_at, size, labelled, _ = prediction
        size += other_classes.nbytes
        self._predictions[request_id] = (
            backend,
            classes,
            expires_at,
            size,
            labelled,
            other_classes,
        )
        self.bytes += other_classes.nbytes
        while self._over_budget():
            self._forget_oldest()
        return request_id in self._predictions

    def __contains__(self, request_id: str) -> bool:
        return request_id in self._predictions

    def score(self, request_id: str, label: int | list[int]) -> Scored:
        self._forget_expired(self._clock())
        prediction = self._predictions.get(request_id)
        if prediction is None:
            raise NotFound(f"no prediction for request id {request_id!r} (unknown or expired)")
        backend, classes, expires_at, size, labelled, other = prediction
        labels = check_labels(label, self._num_classes)
        if labelled is not None:
            return rescored(request_id, labelled, labels, backend, classes, other)
        if labels.shape != classes.shape:
            raise wrong_label_count(request_id, classes.size, labels.size)
        self._predictions[request_id] = (backend, classes, expires_at, size, labels, other)
        return score_labels(backend, classes, other, labels)

    def _forget_expired(self, now: float) -> None:
        # Insertion order is expiry order, so expired entries are all at the front.
        while self._predictions:
            oldest = next(iter(self._predictions.values()))
            if oldest[_EXPIRES_AT] > now:
                break
            self._forget_oldest()


def check_labels(label: int | list[int], num_classes: int) -> np.ndarray:
    """The labels as an array, refused (422) when one is not a class of the model."""
    labels = np.atleast_1d(np.asarray(label, dtype=np.int64))
    if labels.min() < 0 or labels.max() >= num_classes:
        raise Unprocessable(f"labels must be classes 0..{num_classes - 1}")
    return labels


def already_labelled(request_id: str) -> Conflict:
    return Conflict(f"request id {request_id!r} already has a different label")


def rescored(
    request_id: str, given: np.ndarray, labels: np.ndarray, backend: str, classes: np.ndarray,
    other: np.ndarray | None,
) -> Scored:  # fmt: skip
    """A second label for a labelled request: the same one (a client retrying a label whose
    answer it never got) is answered as the first was and counted nowhere again; another one
    is a conflict."""
    if given.shape != labels.shape or not np.array_equal(given, labels):
        raise already_labelled(request_id)
    return replace(score_labels(backend, classes, other, labels), repeat=True)


def wrong_label_count(request_id: str, examples: int, labels: int) -> Unprocessable:
    return Unprocessable(f"request {request_id!r} had {examples} example(s); got {labels} label(s)")


def score_labels(
    backend: str, classes: np.ndarray, other: np.ndarray | None, labels: np.ndarray
) -> Scored:
    """How the serving backend (and, when the other one answered too, both) did on ``labels``."""
    right = labels == classes
    by_class = {int(c): (int((labels == c).sum()), int(right[labels == c].sum()))
                for c in np.unique(labels)}  # fmt: skip
    return Scored(backend, int(right.sum()), int(labels.size), by_class,
                  _paired(backend, other, labels, right))  # fmt: skip


def _paired(
    backend: str, other: np.ndarray | None, labels: np.ndarray, right: np.ndarray
) -> dict[int, Paired] | None:
    if other is None:
        return None
    other_right = labels == other
    teacher, student = (right, other_right) if backend == "teacher" else (other_right, right)
    paired = {}
    for c in np.unique(labels):
        rows = labels == c
        t, s = teacher[rows], student[rows]
        paired[int(c)] = Paired(
            both_correct=int((t & s).sum()),
            teacher_only=int((t & ~s).sum()),
            student_only=int((~t & s).sum()),
            both_wrong=int((~t & ~s).sum()),
        )
    return paired

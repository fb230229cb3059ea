"""Remembers what each request predicted until its ground-truth label arrives (or its TTL ends),
and what a label is for each task (``LabelRules``: a class, one 0/1 per label, numbers, or none).

Bounded in time, in entries and in bytes: the oldest predictions are forgotten first.

A prediction is kept as 4-byte words (the fleet's store keeps them as int32 bytes): classes and
0/1 labels as they are, a regression's numbers as the bits of their float32 values.
"""

from __future__ import annotations

import sys
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Final, Protocol

import numpy as np

from gateway.errors import BadRequest, Conflict, NotFound, Unprocessable

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
    abs_errors: np.ndarray | None = None  # regression: per example, mean |answer - label|
    relative_errors: np.ndarray | None = None  # regression: per example, relative to the label
    hamming_loss: np.ndarray | None = None  # multilabel: per example, share of labels wrong

    def summary(self) -> dict[str, object]:
        """What the feedback API answers beyond the id and the backend."""
        if self.abs_errors is not None and self.relative_errors is not None:
            return {"total": self.total, "mean_abs_error": float(self.abs_errors.mean()),
                    "mean_relative_error": float(self.relative_errors.mean())}  # fmt: skip
        return {"correct": self.correct, "total": self.total, "paired": self.paired is not None}


class LabelRules(Protocol):
    """What a label is for a task: checked into words like the prediction's, and scored."""

    @property
    def task(self) -> str:
        """The task's name, for the messages."""
        ...

    def check(self, label: Any) -> np.ndarray:
        """The label as words; ``BadRequest`` naming the task for a label of the wrong type,
        ``Unprocessable`` for one of the right type out of range."""
        ...

    def score(
        self, backend: str, predicted: np.ndarray, other: np.ndarray | None, labels: np.ndarray
    ) -> Scored: ...


class PredictionStore:
    def __init__(
        self,
        ttl_seconds: float,
        max_entries: int,
        labels: LabelRules,
        clock: Callable[[], float] = time.monotonic,
        max_bytes: int | None = None,
    ) -> None:
        self._ttl = ttl_seconds
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self.bytes = 0  # what the remembered predictions are charged, in all
        self._rules = labels
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

    def score(self, request_id: str, label: Any) -> Scored:
        checked = self._rules.check(label)  # the wrong type is a 400 whether or not it is known
        self._forget_expired(self._clock())
        prediction = self._predictions.get(request_id)
        if prediction is None:
            raise NotFound(f"no prediction for request id {request_id!r} (unknown or expired)")
        backend, classes, expires_at, size, labelled, other = prediction
        labels = fit_labels(checked, classes.shape)
        if labelled is not None:
            return rescored(request_id, labelled, labels, backend, classes, other, self._rules)
        if labels.shape != classes.shape:
            raise wrong_label_count(request_id, classes.shape[0] if classes.ndim else 1,
                                    labels.size)  # fmt: skip
        self._predictions[request_id] = (backend, classes, expires_at, size, labels, other)
        return self._rules.score(backend, classes, other, labels)

    def _forget_expired(self, now: float) -> None:
        # Insertion order is expiry order, so expired entries are all at the front.
        while self._predictions:
            oldest = next(iter(self._predictions.values()))
            if oldest[_EXPIRES_AT] > now:
                break
            self._forget_oldest()


def fit_labels(labels: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Labels given flat (``[1.5, 2.0]`` for two targets of one row) in the prediction's shape
    when they have as many elements; else as given, for the count check to refuse."""
    return labels.reshape(shape) if labels.size == int(np.prod(shape)) else labels


def _numbers(label: Any, task: str, what: str, whole: bool) -> np.ndarray:
    """``label`` (a JSON number or nested lists of them) as an array, or a 400 naming the task
    when an element is not ``what`` (an integer, where ``whole``) or the lists are ragged."""

    def wrong(detail: str) -> BadRequest:
        return BadRequest(f"this model's task is {task}: a label is {what}; {detail}")

    try:
        array = np.asarray(label, dtype=object)
    except ValueError as exc:  # ragged nesting
        raise wrong("the lists are ragged") from exc
    for value in array.reshape(-1).tolist():
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not number or (whole and not isinstance(value, int)):
            raise wrong(f"got {value!r}")
        if isinstance(value, float) and not np.isfinite(value):
            raise wrong(f"got {value!r}")
        # past these a class overflows int64, a number float32 (what predictions are kept as):
        # refused here, not a 500 or an inf in the error sums
        if not (_INT64_MIN <= value <= _INT64_MAX if whole else abs(value) <= _FLOAT32_MAX):
            raise wrong(f"got {_short(value)}, outside {'int64' if whole else 'float32'}'s range")
    if array.size == 0:
        raise wrong("got none")
    return np.atleast_1d(array.astype(np.int64 if whole else np.float64))


_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _short(value: float) -> str:
    """A number for a message: a 400-digit integer as its magnitude, not its digits."""
    if isinstance(value, int) and abs(value) > 10**15:
        return f"an integer of about {int(value.bit_length() * 0.30103) + 1} digits"
    return f"{value:.3g}" if abs(value) > 1e15 else repr(value)


@dataclass(frozen=True)
class ClassLabels:
    """Classification: a label is a class, one per row."""

    num_classes: int
    task: str = "classification"

    def check(self, label: Any) -> np.ndarray:
        what = "an integer class (one per row: [3, 7])"
        labels = _numbers(label, self.task, what, whole=True)
        if labels.ndim > 1:
            raise BadRequest(f"this model's task is {self.task}: a label is {what}; got a list "
                             "of lists")  # fmt: skip
        return check_labels(labels, self.num_classes)

    def score(
        self, backend: str, predicted: np.ndarray, other: np.ndarray | None, labels: np.ndarray
    ) -> Scored:
        return score_labels(backend, predicted, other, labels)


@dataclass(frozen=True)
class MultiLabels:
    """Multilabel: a label is one 0/1 per label of each row (``[0, 1, 1]``, or a list of those);
    scored label by label (``by_class`` keyed by the label's index) and by Hamming loss."""

    labels: int
    task: str = "multilabel"

    def check(self, label: Any) -> np.ndarray:
        what = f"one 0 or 1 for each of the {self.labels} labels of a row ([0, 1, 1, ...])"
        values = _numbers(label, self.task, what, whole=True)
        if ((values != 0) & (values != 1)).any() or values.shape[-1] != self.labels:
            raise BadRequest(f"this model's task is multilabel: a label is {what}; got "
                             f"{np.asarray(label).tolist()!r}")  # fmt: skip
        return values.reshape(-1, self.labels)

    def score(
        self, backend: str, predicted: np.ndarray, other: np.ndarray | None, labels: np.ndarray
    ) -> Scored:
        right = labels == predicted
        by_label = {index: (int(labels.shape[0]), int(right[:, index].sum()))
                    for index in range(self.labels)}  # fmt: skip
        paired = None
        if other is not None:
            other_right = labels == other
            teacher, student = (
                (right, other_right) if backend == "teacher" else (other_right, right)
            )
            paired = {index: _paired_table(teacher[:, index], student[:, index])
                      for index in range(self.labels)}  # fmt: skip
        return Scored(backend, int(right.sum()), int(right.size), by_label, paired,
                      hamming_loss=1.0 - right.mean(axis=1))  # fmt: skip


@dataclass(frozen=True)
class NumberLabels:
    """Regression: a label is a number per output element of each row (``2.5`` for one row of
    one target, ``[[2.5, 0.1], [1.0, 0.0]]`` for two rows of two; flat lists are cut into rows
    of ``per_row``)."""

    floor: float  # the relative error's least denominator (task.relative_floor)
    per_row: int | None  # output elements per row, when the output's shape fixes them
    cap: float  # the absolute error's most (the top finite edge of task.abs_error_buckets)
    task: str = "regression"

    def check(self, label: Any) -> np.ndarray:
        values = _numbers(label, self.task, "a number per output element of each row", False)
        if self.per_row and values.size % self.per_row == 0:
            values = values.reshape(-1, self.per_row)
        elif values.ndim == 1:
            values = values.reshape(-1, 1)
        return as_words(values.reshape(len(values), -1))

    def score(
        self, backend: str, predicted: np.ndarray, other: np.ndarray | None, labels: np.ndarray
    ) -> Scored:
        truth, answer = from_words(labels), from_words(predicted)
        abs_errors, relative = row_errors(answer, truth, self.floor, self.cap)
        return Scored(backend, 0, len(abs_errors), {}, abs_errors=abs_errors,
                      relative_errors=relative)  # fmt: skip


@dataclass(frozen=True)
class NoLabels:
    """Embedding: nothing to label."""

    task: str = "embedding"

    def check(self, label: Any) -> np.ndarray:
        raise BadRequest("this model's task is embedding: its answers take no labels (the "
                         "student is judged by its cosine similarity to the teacher)")  # fmt: skip

    def score(
        self, backend: str, predicted: np.ndarray, other: np.ndarray | None, labels: np.ndarray
    ) -> Scored:
        raise AssertionError("embedding labels are refused in check")


RELATIVE_ERROR_CAP = 10.0
"""A relative error counts as at most 10 (1,000 %): one reference near 0 moves the mean by at
most its weight, and the histogram's +Inf bucket stays empty (as the KL's cap does)."""


def row_errors(
    answer: np.ndarray, reference: np.ndarray, floor: float, cap: float
) -> tuple[np.ndarray, np.ndarray]:
    """Per row: the mean absolute error, capped at ``cap``, and that over the reference's mean
    magnitude (or ``floor``), capped at ``RELATIVE_ERROR_CAP``. A row with a NaN or an infinity
    counts as both caps (as wrong as can be): an uncapped error would make the histogram's
    ``_sum`` inf, or swallow every later increment (a float64 sum of 1e30 no longer grows by
    0.5), for the rest of the process's life."""
    rows = max(len(answer), 1) if answer.ndim else 1
    with np.errstate(invalid="ignore", over="ignore"):
        difference = np.abs(answer.astype(np.float64) - reference.astype(np.float64))
        raw = difference.reshape(rows, -1).mean(axis=1)
        scale = np.maximum(np.abs(reference.astype(np.float64)).reshape(rows, -1).mean(axis=1),
                           floor)  # fmt: skip
        broken = ~np.isfinite(raw)
        abs_errors = np.where(broken, cap, np.minimum(raw, cap))
        relative = np.where(broken, RELATIVE_ERROR_CAP,
                            np.minimum(raw / scale, RELATIVE_ERROR_CAP))  # fmt: skip
    return abs_errors, relative


def as_words(values: np.ndarray) -> np.ndarray:
    """Numbers as the bits of their float32 values (what the stores keep)."""
    return values.astype(np.float32).view(np.int32).astype(np.int64)


def from_words(words: np.ndarray) -> np.ndarray:
    return words.astype(np.int32).view(np.float32)


def check_labels(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """The labels as an array, refused (422) when one is not a class of the model."""
    labels = np.atleast_1d(np.asarray(labels, dtype=np.int64))
    if labels.min() < 0 or labels.max() >= num_classes:
        raise Unprocessable(f"labels must be classes 0..{num_classes - 1}")
    return labels


def already_labelled(request_id: str) -> Conflict:
    return Conflict(f"request id {request_id!r} already has a different label")


def rescored(
    request_id: str, given: np.ndarray, labels: np.ndarray, backend: str, classes: np.ndarray,
    other: np.ndarray | None, rules: LabelRules,
) -> Scored:  # fmt: skip
    """A second label for a labelled request: the same one (a client retrying a label whose
    answer it never got) is answered as the first was and counted nowhere again; another one
    is a conflict."""
    if given.shape != labels.shape or not np.array_equal(given, labels):
        raise already_labelled(request_id)
    return replace(rules.score(backend, classes, other, labels), repeat=True)


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
    return {int(c): _paired_table(teacher[labels == c], student[labels == c])
            for c in np.unique(labels)}  # fmt: skip


def _paired_table(teacher: np.ndarray, student: np.ndarray) -> Paired:
    return Paired(
        both_correct=int((teacher & student).sum()),
        teacher_only=int((teacher & ~student).sum()),
        student_only=int((~teacher & student).sum()),
        both_wrong=int((~teacher & ~student).sum()),
    )

"""What the model's answers are (``task:`` in the config), as one small strategy per task: what
the shadow compares between teacher and student, what is remembered of an answer for its label,
what a label is (``gateway.feedback``'s rules) and which metrics hold the numbers.

- classification: top-1 agreement and KL(teacher || student) of the class distributions.
- multilabel: per-label and exact-set agreement, Hamming loss, of the thresholded labels.
- regression: absolute and relative error of the student against the teacher.
- embedding: cosine similarity of the two vectors; no labels.

Adding a task is a class here, its config in ``gateway.task_config`` and a row in ``TASKS``. The
comparisons are pure functions of the two answers (tested on their own); ``Task.record`` puts
one into the metrics.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from gateway.errors import GatewayError
from gateway.feedback import (
    ClassLabels,
    LabelRules,
    MultiLabels,
    NoLabels,
    NumberLabels,
    as_words,
    row_errors,
)
from gateway.metrics import KL_BUCKETS, GatewayMetrics, TaskMetrics
from gateway.signature import Signature, TensorSpec
from gateway.task_config import (
    ClassificationTask,
    EmbeddingTask,
    MultilabelTask,
    RegressionTask,
    TaskConfig,
)

KL_CAP = KL_BUCKETS[-1]
"""A comparison's KL counts as at most this (10 nats: the student gives the teacher's answer a
probability of e^-10 or less, as wrong as the gate needs to know)."""
_NOT_NUMBERS = ("BYTES", "BOOL")


class TaskMismatch(GatewayError):
    """The configured task does not fit the model's outputs (found at start-up)."""


# -- the comparisons: pure functions of the teacher's and the student's answers ----------------


@dataclass(frozen=True)
class ClassComparison:
    examples: int
    agreements: int
    kl_per_example: np.ndarray


@dataclass(frozen=True)
class MultilabelComparison:
    examples: int
    agreements: int  # examples whose whole label set agrees
    label_agreements: np.ndarray  # per label: examples on which the two agree about it
    hamming_loss: np.ndarray  # per example: the share of labels they disagree on


@dataclass(frozen=True)
class RegressionComparison:
    examples: int
    abs_errors: np.ndarray  # per example: mean |student - teacher|
    relative_errors: np.ndarray  # per example: that over the teacher's mean magnitude


@dataclass(frozen=True)
class EmbeddingComparison:
    examples: int
    cosine_distance: np.ndarray  # per example: 1 - cosine(student, teacher), 0..2


Comparison = ClassComparison | MultilabelComparison | RegressionComparison | EmbeddingComparison


def compare_logits(teacher_logits: np.ndarray, student_logits: np.ndarray) -> ClassComparison:
    """Row-wise top-1 agreement and KL(softmax(teacher) || softmax(student)) in nats."""
    return _compare_distributions(
        _log_softmax(teacher_logits.astype(np.float64)),
        _log_softmax(student_logits.astype(np.float64)),
        teacher_logits, student_logits,
    )  # fmt: skip


def compare_probabilities(teacher: np.ndarray, student: np.ndarray) -> ClassComparison:
    """The same for answers that are probabilities already (renormalised; a 0 counts as 1e-12)."""
    return _compare_distributions(_log_normalised(teacher), _log_normalised(student), teacher,
                                  student)  # fmt: skip


def _compare_distributions(
    teacher_log_p: np.ndarray, student_log_p: np.ndarray, teacher: np.ndarray,
    student: np.ndarray,
) -> ClassComparison:  # fmt: skip
    """Each KL capped at ``KL_CAP``: one outlier then moves the mean by at most its weight, and
    the histogram's +Inf bucket stays empty, so the max_kl gate's variance bound stays finite."""
    kl = (np.exp(teacher_log_p) * (teacher_log_p - student_log_p)).sum(axis=1)
    agreements = int((teacher.argmax(axis=1) == student.argmax(axis=1)).sum())
    # NaN (a model that answered NaN) counts as the cap too: it must not poison the KL sum
    capped = np.clip(np.nan_to_num(kl, nan=KL_CAP, posinf=KL_CAP), 0.0, KL_CAP)
    return ClassComparison(len(teacher), agreements, capped)


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    result: np.ndarray = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return result


def _log_normalised(probabilities: np.ndarray) -> np.ndarray:
    p = np.clip(probabilities.astype(np.float64), 1e-12, None)
    result: np.ndarray = np.log(p / p.sum(axis=1, keepdims=True))
    return result


def compare_multilabel(teacher: np.ndarray, student: np.ndarray) -> MultilabelComparison:
    """Of two [examples, labels] 0/1 (or boolean) answers."""
    agree = teacher.astype(bool) == student.astype(bool)
    return MultilabelComparison(len(agree), int(agree.all(axis=1).sum()), agree.sum(axis=0),
                                1.0 - agree.mean(axis=1))  # fmt: skip


def compare_regression(
    teacher: np.ndarray, student: np.ndarray, floor: float, cap: float
) -> RegressionComparison:
    """Each row's errors capped (``row_errors``): ``cap`` is ``task.abs_error_cap``."""
    abs_errors, relative = row_errors(student, teacher, floor, cap)
    return RegressionComparison(len(abs_errors), abs_errors, relative)


def compare_embeddings(teacher: np.ndarray, student: np.ndarray) -> EmbeddingComparison:
    """Cosine over each example's flattened vector. Two zero vectors are the same (distance 0),
    one zero vector is orthogonal to anything (1), a NaN is as far as it gets (2)."""
    rows = len(teacher)
    t = teacher.astype(np.float64).reshape(rows, -1)
    s = student.astype(np.float64).reshape(rows, -1)
    norms = np.linalg.norm(t, axis=1) * np.linalg.norm(s, axis=1)
    dots = (t * s).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cosine = np.where(norms > 0, dots / np.where(norms > 0, norms, 1.0), 0.0)
    both_zero = ~t.any(axis=1) & ~s.any(axis=1)
    distance = np.where(both_zero, 0.0, 1.0 - cosine)
    broken = ~(np.isfinite(t).all(axis=1) & np.isfinite(s).all(axis=1))
    return EmbeddingComparison(rows, np.where(broken, 2.0, np.clip(distance, 0.0, 2.0)))


# -- the strategies -----------------------------------------------------------------------------


class Task(ABC):
    """One model's task: built at start-up from its config, its signature and its metrics."""

    kind: ClassVar[str]

    def __init__(
        self, config: Any, spec: TensorSpec, metrics: GatewayMetrics, task_metrics: TaskMetrics
    ) -> None:
        self.output = spec.name
        """The output compared and remembered."""
        self._metrics = metrics
        self._task_metrics = task_metrics
        self.labels: LabelRules = NoLabels()

    @abstractmethod
    def compare(self, teacher: np.ndarray, student: np.ndarray) -> Comparison:
        """The two backends' answers (this task's output) on the same rows."""

    @abstractmethod
    def record(self, comparison: Any) -> None:
        """Puts a comparison this task made into the metrics."""

    def prediction(self, answer: np.ndarray) -> np.ndarray | None:
        """What is remembered of an answer for its label, as words (``gateway.feedback``); None
        when the task takes no labels (nothing is remembered)."""
        return None

    def confidence(self, answer: np.ndarray, measure: str) -> np.ndarray | None:
        """Per row, how sure the answer is, 0..1 (``traffic.mode: cascade``): ``top`` or
        ``margin``; None for a task that has no cascade (refused at start)."""
        return None

    def record_feedback(self, scored: Any) -> None:
        """Puts a label's scores into the metrics (a retried label is counted once)."""
        if scored.repeat:
            return
        metrics, model = self._metrics, self._metrics.model
        for true_class, (examples, right) in scored.by_class.items():
            label = str(true_class)
            metrics.feedback.labels(model, scored.backend, label).inc(examples)
            metrics.feedback_correct.labels(model, scored.backend, label).inc(right)
        for true_class, paired in (scored.paired or {}).items():
            for outcome, count in paired.by_outcome().items():
                metrics.feedback_paired.labels(model, outcome, str(true_class)).inc(count)

    def _observe(self, histogram: Any, values: np.ndarray) -> None:
        for value in values.tolist():
            histogram.observe(value)


class Classification(Task):
    kind = "classification"

    def __init__(self, config: ClassificationTask, spec: TensorSpec, metrics: GatewayMetrics,
                 task_metrics: TaskMetrics) -> None:  # fmt: skip
        super().__init__(config, spec, metrics, task_metrics)
        self._probabilities = config.scores == "probabilities"
        classes = _classes(spec, self.kind)
        self.labels = ClassLabels(classes)
        metrics.start_classes(classes)
        model = metrics.model
        self._comparisons = metrics.shadow_comparisons.labels(model)
        self._agreements = metrics.shadow_agreements.labels(model)
        self._kl = metrics.shadow_kl.labels(model)

    def compare(self, teacher: np.ndarray, student: np.ndarray) -> ClassComparison:
        if self._probabilities:
            return compare_probabilities(teacher, student)
        return compare_logits(teacher, student)

    def record(self, comparison: ClassComparison) -> None:
        self._comparisons.inc(comparison.examples)
        self._agreements.inc(comparison.agreements)
        self._observe(self._kl, comparison.kl_per_example)

    def prediction(self, answer: np.ndarray) -> np.ndarray:
        result: np.ndarray = answer.argmax(axis=-1)
        return result

    def confidence(self, answer: np.ndarray, measure: str) -> np.ndarray:
        """The top class's probability, or its lead over the second (one class: its own)."""
        rows = answer.reshape(len(answer), -1).astype(np.float64)
        log_p = _log_normalised(rows) if self._probabilities else _log_softmax(rows)
        ranked = np.sort(np.exp(log_p), axis=1)
        top: np.ndarray = ranked[:, -1]
        if measure == "top" or ranked.shape[1] < 2:
            return top
        margin: np.ndarray = top - ranked[:, -2]
        return margin


class Multilabel(Task):
    kind = "multilabel"

    def __init__(self, config: MultilabelTask, spec: TensorSpec, metrics: GatewayMetrics,
                 task_metrics: TaskMetrics) -> None:  # fmt: skip
        super().__init__(config, spec, metrics, task_metrics)
        labels = _classes(spec, self.kind)
        self.labels = MultiLabels(labels)
        metrics.start_classes(labels)
        # sigmoid(x) >= t exactly when x >= log(t / (1 - t)): no sigmoid on the path
        threshold = config.threshold
        self._cut = np.log(threshold / (1 - threshold)) if config.scores == "logits" else threshold
        model = metrics.model
        self._comparisons = metrics.shadow_comparisons.labels(model)
        self._agreements = metrics.shadow_agreements.labels(model)

    def chosen(self, answer: np.ndarray) -> np.ndarray:
        """The labels an answer predicts, 0/1 per label."""
        result: np.ndarray = (answer.astype(np.float64) >= self._cut).astype(np.int64)
        return result

    def compare(self, teacher: np.ndarray, student: np.ndarray) -> MultilabelComparison:
        return compare_multilabel(self.chosen(teacher), self.chosen(student))

    def record(self, comparison: MultilabelComparison) -> None:
        self._comparisons.inc(comparison.examples)
        self._agreements.inc(comparison.agreements)
        for counter, agreed in zip(self._task_metrics.label_agreements,
                                   comparison.label_agreements.tolist(), strict=True):  # fmt: skip
            counter.inc(agreed)
        self._observe(self._task_metrics.shadow_hamming.labels(self._metrics.model),
                      comparison.hamming_loss)  # fmt: skip

    def prediction(self, answer: np.ndarray) -> np.ndarray:
        return self.chosen(answer)

    def record_feedback(self, scored: Any) -> None:
        super().record_feedback(scored)
        if not scored.repeat and scored.hamming_loss is not None:
            histogram = self._task_metrics.feedback_hamming.labels(self._metrics.model,
                                                                  scored.backend)  # fmt: skip
            self._observe(histogram, scored.hamming_loss)


class Regression(Task):
    kind = "regression"

    def __init__(self, config: RegressionTask, spec: TensorSpec, metrics: GatewayMetrics,
                 task_metrics: TaskMetrics) -> None:  # fmt: skip
        super().__init__(config, spec, metrics, task_metrics)
        self._floor = config.relative_floor
        self._cap = config.abs_error_cap
        fixed = all(d > 0 for d in spec.shape[1:])
        per_row = int(np.prod(spec.shape[1:])) if fixed else None
        self.labels = NumberLabels(config.relative_floor, per_row, self._cap)
        self._comparisons = metrics.shadow_comparisons.labels(metrics.model)

    def compare(self, teacher: np.ndarray, student: np.ndarray) -> RegressionComparison:
        return compare_regression(teacher, student, self._floor, self._cap)

    def record(self, comparison: RegressionComparison) -> None:
        model, task = self._metrics.model, self._task_metrics
        self._comparisons.inc(comparison.examples)
        self._observe(task.shadow_abs_error.labels(model), comparison.abs_errors)
        self._observe(task.shadow_relative_error.labels(model), comparison.relative_errors)

    def prediction(self, answer: np.ndarray) -> np.ndarray:
        return as_words(answer.reshape(len(answer), -1) if answer.ndim else answer)

    def record_feedback(self, scored: Any) -> None:
        if scored.repeat or scored.abs_errors is None:
            return
        model, task = self._metrics.model, self._task_metrics
        self._observe(task.feedback_abs_error.labels(model, scored.backend), scored.abs_errors)
        self._observe(task.feedback_relative_error.labels(model, scored.backend),
                      scored.relative_errors)  # fmt: skip


class Embedding(Task):
    kind = "embedding"

    def __init__(self, config: EmbeddingTask, spec: TensorSpec, metrics: GatewayMetrics,
                 task_metrics: TaskMetrics) -> None:  # fmt: skip
        super().__init__(config, spec, metrics, task_metrics)
        self._comparisons = metrics.shadow_comparisons.labels(metrics.model)

    def compare(self, teacher: np.ndarray, student: np.ndarray) -> EmbeddingComparison:
        return compare_embeddings(teacher, student)

    def record(self, comparison: EmbeddingComparison) -> None:
        self._comparisons.inc(comparison.examples)
        histogram = self._task_metrics.shadow_cosine_distance.labels(self._metrics.model)
        self._observe(histogram, comparison.cosine_distance)


TASKS: dict[str, type[Task]] = {
    task.kind: task for task in (Classification, Multilabel, Regression, Embedding)
}


def build_task(config: TaskConfig, signature: Signature, metrics: GatewayMetrics) -> Task:
    """The task for ``config`` on a model of ``signature``; ``TaskMismatch`` (at start-up) when
    its output is missing or of a kind the task cannot compare."""
    name = config.output or signature.outputs[0].name
    spec = signature.output(name)
    if spec is None:
        known = ", ".join(f"'{out.name}'" for out in signature.outputs)
        raise TaskMismatch(f"task.output: the model has no output '{name}' (it has {known})")
    if spec.datatype in _NOT_NUMBERS:
        raise TaskMismatch(f"task {config.kind}: output '{name}' is {spec.datatype}; it compares "
                           "numbers (name a numeric output in task.output)")  # fmt: skip
    labels = _classes(spec, config.kind) if config.kind in ("classification", "multilabel") else 0
    if config.kind == "embedding" and len(spec.shape) < 2:
        raise TaskMismatch(f"task embedding: output '{spec.name}' has shape {list(spec.shape)}; "
                           "a vector per example needs [batch, ..., width]")  # fmt: skip
    buckets = config.abs_error_buckets if isinstance(config, RegressionTask) else ()
    # checked before any metric exists: a refused task leaves no series behind
    task_metrics = TaskMetrics(metrics, config.kind, labels, buckets)
    return TASKS[config.kind](config, spec, metrics, task_metrics)


def _classes(spec: TensorSpec, kind: str) -> int:
    """Classes (or labels): the fixed last axis of a [batch, classes] output."""
    if len(spec.shape) != 2 or spec.shape[-1] < 1:
        raise TaskMismatch(f"task {kind}: output '{spec.name}' has shape {list(spec.shape)}; "
                           "scores need [batch, classes] with a fixed number of classes (name "
                           "the scores output in task.output)")  # fmt: skip
    return spec.shape[-1]

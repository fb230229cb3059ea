"""The ``task:`` section of the gateway's config: what the model's answers are, so that shadow
comparisons, labels and the controller's gates fit them (``gateway.tasks`` acts on it).

``task: regression`` is short for ``task: {kind: regression}``.
"""

from __future__ import annotations

import itertools
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Discriminator, Field, Tag, field_validator

from gateway.validation import StrictModel

TASK_KINDS = ("classification", "multilabel", "regression", "embedding")

# 1-2-5 steps: fine enough for a useful mean and quantile over eight decades
_ONE_TWO_FIVE = tuple(m * 10.0**e for e in range(-4, 4) for m in (1, 2, 5))
ABS_ERROR_BUCKETS = (*_ONE_TWO_FIVE, 10_000.0)


class ClassificationTask(StrictModel):
    """One class per example: top-1 agreement and KL on shadow traffic; a label is a class."""

    kind: Literal["classification"] = "classification"
    output: str | None = None
    """The output holding the class scores, ``[batch, classes]``; default: the model's first."""
    scores: Literal["logits", "probabilities"] = "logits"
    """``logits`` (softmax gives the distribution) or ``probabilities`` (used as they are)."""


class MultilabelTask(StrictModel):
    """Independent yes/no labels per example: per-label agreement and Hamming agreement on shadow
    traffic; a label is one 0/1 per label (``[0, 1, 1]``)."""

    kind: Literal["multilabel"]
    output: str | None = None
    """The output holding one score per label, ``[batch, labels]``; default: the model's first."""
    scores: Literal["logits", "probabilities"] = "logits"
    """``logits`` (the sigmoid gives each label's probability) or ``probabilities``."""
    threshold: float = Field(default=0.5, gt=0.0, lt=1.0)
    """A label is predicted when its probability is at least this."""


class RegressionTask(StrictModel):
    """Numbers: absolute and relative error of the student against the teacher (shadow) and of
    each backend against labels; a label is one number per output element."""

    kind: Literal["regression"]
    output: str | None = None
    """The numeric output compared; default: the model's first."""
    relative_floor: float = Field(default=1e-6, gt=0.0)
    """Relative error divides by the reference's magnitude, or this when it is smaller, so a
    reference near 0 does not make every difference infinite."""
    abs_error_buckets: tuple[float, ...] = ABS_ERROR_BUCKETS
    """Histogram edges of the absolute errors, in the output's units. The ``max_mean_abs_error``
    gate bounds the variance by these edges. A row's absolute error counts as at most the last
    edge (``abs_error_cap``), so the +Inf bucket stays empty and one huge (or NaN) answer or
    label moves a window's mean by at most its weight, and never a later window's."""

    @property
    def abs_error_cap(self) -> float:
        """The most one row's absolute error counts as: the top finite bucket edge (one knob,
        so the cap and the histogram cannot disagree)."""
        return self.abs_error_buckets[-1]

    @field_validator("abs_error_buckets")
    @classmethod
    def _rising(cls, edges: tuple[float, ...]) -> tuple[float, ...]:
        if not edges or any(b <= a for a, b in itertools.pairwise(edges)):
            raise ValueError("must be a non-empty list of rising edges")
        if edges[0] <= 0:
            raise ValueError("edges must be positive")
        return edges


class EmbeddingTask(StrictModel):
    """Vectors: cosine similarity of student and teacher on shadow traffic; no labels."""

    kind: Literal["embedding"]
    output: str | None = None
    """The output holding one vector per example, ``[batch, ..., width]``; default: the first."""


def _short_form(value: Any) -> Any:
    return {"kind": value} if isinstance(value, str) else value


TaskConfig = Annotated[
    Annotated[ClassificationTask, Tag("classification")]
    | Annotated[MultilabelTask, Tag("multilabel")]
    | Annotated[RegressionTask, Tag("regression")]
    | Annotated[EmbeddingTask, Tag("embedding")],
    Discriminator(lambda v: v.get("kind", "classification") if isinstance(v, dict) else v.kind),
    BeforeValidator(_short_form),
]

"""The ``traffic.cascade:`` section of the gateway's config: when the student is sure enough to
answer alone (``gateway.cascade`` acts on it)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from gateway.validation import StrictModel


class CascadeConfig(StrictModel):
    """``traffic.mode: cascade``: every request routed to the student runs on it first, and is
    escalated to the teacher (whose answer is returned) when the student's confidence is below
    the threshold."""

    confidence: Literal["top", "margin"] = "top"
    """How sure the student is of a row (classification): ``top``, its highest class
    probability; ``margin``, the highest minus the second highest. A request of several rows is
    as sure as its least sure row."""
    min_confidence: float | None = Field(default=None, ge=0.0, le=1.0)
    """A fixed threshold: escalate below it. With ``max_disagreement`` too, it is the threshold
    used until the data can choose one."""
    max_disagreement: float | None = Field(default=None, gt=0.0, lt=1.0)
    """Choose the threshold from shadowed traffic: the lowest grid value whose answers disagree
    with the teacher's on at most this fraction of the cascade's requests, at
    ``confidence_level`` (Learn-then-Test; ``gateway.thresholds``). Until there is enough
    evidence, ``min_confidence`` if given, else 1.0 (every request escalated)."""
    confidence_level: float = Field(default=0.95, gt=0.0, lt=1.0)
    """The chance that no threshold the data chose, at any recomputation, ever breaks
    ``max_disagreement``."""
    grid_step: float = Field(default=0.01, gt=0.0, le=0.5)
    """Thresholds tried by ``max_disagreement``: 1.0 down to 0 in steps of this (fixed in
    advance, as the method needs)."""
    min_samples: int = Field(default=200, ge=1)
    """Shadowed requests before the first choice; after that it is recomputed each time their
    count doubles (the recomputations the guarantee covers)."""

    @model_validator(mode="after")
    def _some_threshold(self) -> CascadeConfig:
        if self.min_confidence is None and self.max_disagreement is None:
            raise ValueError("a cascade needs min_confidence or max_disagreement (or both)")
        return self

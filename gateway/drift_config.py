"""The ``drift:`` section of the gateway's config: which requests feed the input and output
distribution summaries (``gateway.drift``) and, where the default bins do not fit an input, its
own bin edges."""

from __future__ import annotations

import itertools

from pydantic import Field, field_validator

from gateway.validation import StrictModel


class DriftInputConfig(StrictModel):
    edges: list[float]
    """Upper bin edges for a float input's values, rising (a value ``v`` counts in the first bin
    whose edge is ``>= v``; one more bin above the last edge). Replaces the default signed
    half-decade edges, e.g. with the edges of a training-set profile."""

    @field_validator("edges")
    @classmethod
    def _rising(cls, edges: list[float]) -> list[float]:
        if not 1 <= len(edges) <= 63:
            raise ValueError("between 1 and 63 edges")
        if any(later <= earlier for earlier, later in itertools.pairwise(edges)):
            raise ValueError("edges must rise strictly")
        return edges


class DriftConfig(StrictModel):
    """Summaries of what the model is asked and answers, as Prometheus counters over fixed bins:
    Prometheus (and the canary controller) sums them over replicas, and the controller's watch
    compares them with a reference (README: "Watching the student after promotion")."""

    enabled: bool = True
    """Off: no drift counters at all."""
    sample_rate: float = Field(default=0.1, gt=0.0, le=1.0)
    """Fraction of answered requests summarised: every ``round(1 / sample_rate)``-th, counted
    deterministically (a summarised batch-1 request costs 2-8 us; README: "Drift
    summaries")."""
    max_blocks: int = Field(default=16, ge=1, le=256)
    """A float input (or a regression output) of more fixed features than this is summarised in
    this many blocks of neighbouring features, each block one histogram: series per input are at
    most ``max_blocks`` x its bins."""
    inputs: dict[str, DriftInputConfig] = Field(default_factory=dict)
    """Per float input, by name: bin edges of its own."""

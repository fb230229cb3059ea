"""The policy's ``watch:`` section: how the student is judged after promotion
(``controller.watch``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from gateway.validation import StrictModel


class WatchPolicy(StrictModel):
    interval_seconds: float = Field(default=30.0, gt=0)
    """How often the watch looks."""
    window_seconds: float = Field(default=3600.0, gt=0)
    """A window with no breach ends after this long and a new one starts (old traffic must not
    dilute a new shift); a breach ends its window too. Each window spends the policy's alpha
    once, over all its looks."""
    recent_seconds: float = Field(default=300.0, ge=0)
    """Each look also judges the window's last this many seconds (at half the look's alpha, the
    whole window the other half): a shift late in a long window is found within about this long
    instead of once it outweighs the window's older traffic. 0: the whole window only."""
    min_rows: int = Field(default=200, ge=1)
    """Rows a window needs (and the student's rows, for the prediction checks) before a drift
    check can judge."""
    reference_seconds: float = Field(default=600.0, gt=0)
    """With no reference, or one under ``min_rows`` rows (a last step promoted early, ``promote
    --full``): the first this many seconds of traffic become the reference (traffic the operator
    vouches for), recorded again while it has fewer rows than ``min_rows``."""
    blind_looks: int = Field(default=10, ge=1)
    """Looks in a row whose window has no drift rows (the gateways' ``drift:`` off, a metrics
    source without the drift counters, or no traffic) before the watch alerts that its drift
    checks are blind (a ``watch_alert``, whatever ``on_breach`` says); then again every as many."""
    max_input_psi: float | None = Field(default=0.25, gt=0)
    """The largest input PSI, per feature (block, sequence length, token ids), accepted against
    the reference; 0.1-0.25 is the usual "moderate shift" band. None: inputs not judged."""
    max_prediction_psi: float | None = Field(default=0.25, gt=0)
    """The same for the student's predicted-class distribution (output values for other tasks)."""
    max_estimated_accuracy_drop: float | None = Field(default=None, gt=0, le=1)
    """Classification, without labels: the reference's accuracy minus the accuracy the student's
    mean confidence predicts now (calibrated on the reference), as a fraction."""
    gates: dict[str, float] = Field(default_factory=dict)
    """Gates of the policy's ``gates:`` kind, judged on the window as at a step (``min_agreement``
    and ``max_kl`` on the shadow sample, ``max_accuracy_drop`` from labels, ``max_latency_ms``,
    ``max_error_rate``); none by default. Checked like ``gates:`` (the policy validates them)."""
    on_breach: Literal["rollback", "alert"] = "alert"
    """rollback: share 0 on every gateway, reason "drift: ...", and the watch ends; alert: a
    ``watch_alert`` event to the policy's ``notify`` receivers, and a new window."""

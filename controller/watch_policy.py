"""The policy's ``watch:`` section: how the student is judged after promotion
(``controller.watch``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from gateway.validation import StrictModel

DAY_SECONDS = 86_400.0
DRIFT_CHECKS = ("max_input_psi", "max_prediction_psi", "max_estimated_accuracy_drop")
"""The watch's drift checks, each a ``WatchPolicy`` key of that name."""


class WatchPolicy(StrictModel):
    interval_seconds: float = Field(default=30.0, gt=0)
    """How often the watch looks."""
    window_seconds: float = Field(default=3600.0, gt=0)
    """A window with no breach ends after this long and a new one starts (old traffic must not
    dilute a new shift); a breach ends its window too. Each window spends its alpha once, over
    all its looks (``false_alarms_per_day``)."""
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
    false_alarms_per_day: float | None = Field(default=None, gt=0, le=24)
    """The error budget across windows: the expected false alarms a day when nothing drifts
    (a bound). Each window spends ``false_alarms_per_day x window_seconds / 86,400`` over its
    looks, the drift checks half and ``gates`` half (all of it without gates): the windows
    restart, each a new test, so the expectations add up over a day's windows. None: every
    window spends the policy's alpha (``1 - confidence``) for the drift checks and as much for
    the gates, i.e. at most 2 alpha x 86,400 / ``window_seconds`` a day (2.4 at 0.05, hourly).
    Must leave each window's alpha under 0.5."""
    shadow_sample_rate: float | None = Field(default=0.01, ge=0, le=1)
    """The model's shadow sample rate the watch sets on every gateway at its start (``PUT
    /admin/models/{model}/shadow``): the share of the student's answers also sent to the
    teacher, for ``gates``' agreement and KL. Each gateway's configured rate is put back when
    the watch ends (``controller.shadow_rate``). None: left as configured."""
    reference: Literal["production", "registry"] = "production"
    """production: the rollout's last step (``run``), or ``distill-canary watch --reference``,
    or recorded from the first ``reference_seconds``; registry: the profile of the training
    split ``distill-models profile`` stored in the served student's registry entry (falling
    back to production, said in each look's reason, when the entry has none)."""
    on_breach: Literal["rollback", "alert"] = "alert"
    """rollback: share 0 on every gateway, reason "drift: ...", and the watch ends; alert: a
    ``watch_alert`` event to the policy's ``notify`` receivers, and a new window."""

    @model_validator(mode="after")
    def _budget_fits_a_window(self) -> WatchPolicy:
        per_window = self.per_window_alpha
        if per_window is not None and per_window >= 0.5:
            raise ValueError(
                f"false_alarms_per_day {self.false_alarms_per_day:g} gives each "
                f"{self.window_seconds:g} s window an alpha of {per_window:.3g}; under 0.5 "
                "needed (a smaller budget, or shorter windows)"
            )
        return self

    @property
    def per_window_alpha(self) -> float | None:
        """What ``false_alarms_per_day`` leaves each window (None: no budget set)."""
        if self.false_alarms_per_day is None:
            return None
        return self.false_alarms_per_day * self.window_seconds / DAY_SECONDS

    @property
    def drift_checks(self) -> dict[str, float]:
        """The configured drift checks (``DRIFT_CHECKS`` that are set), by name."""
        return {name: getattr(self, name) for name in DRIFT_CHECKS
                if getattr(self, name) is not None}  # fmt: skip

    def window_alphas(self, confidence: float) -> tuple[float, float]:
        """The alpha each window spends on the drift checks, and on ``gates``."""
        per_window = self.per_window_alpha
        if per_window is None:
            return 1.0 - confidence, 1.0 - confidence
        return (per_window / 2, per_window / 2) if self.gates else (per_window, 0.0)

"""The controller's Prometheus series, named once: ``controller.exporter`` sets them, the dashboard
(``grafana/build_dashboard.py``) and the tests read them. The gate series are in
``controller.gate_metrics`` (re-exported here), with their labels' values.

Every series carries ``model``; the post-promotion watch's (``WATCH_*``) are set by
``distill-canary watch`` and by ``run`` once it watches.
"""

from __future__ import annotations

from controller.gate_metrics import GATE_DRY_RUN, GATE_THRESHOLD, GATE_VALUE, GATE_VERDICT

STUDENT_SHARE = "canary_student_share"
STEP_INDEX = "canary_step_index"
PHASE = "canary_phase"
ROLLOUT_INFO = "canary_rollout_info"
LAST_TICK = "canary_last_tick_timestamp_seconds"
BAKE_ELAPSED = "canary_step_bake_elapsed_seconds"
CONSECUTIVE_FAILURES = "canary_consecutive_failures"
ANALYSIS = "canary_analysis_total"
ROLLBACKS = "canary_rollbacks_total"
PROMOTIONS = "canary_promotions_total"
SHARE_DRIFT = "canary_share_drift_total"
NOTIFICATIONS = "canary_notifications_total"

WATCH_LOOKS = "canary_watch_looks_total"
"""The watch's looks, by ``outcome`` (``controller.watch.Outcome``: watching, alerted, ...)."""
WATCH_VERDICTS = "canary_watch_verdicts_total"
"""The watch's check verdicts, by ``gate`` and ``result`` (pass, inconclusive, fail)."""
WATCH_WINDOW_STARTED = "canary_watch_window_start_timestamp_seconds"
"""When the watch's current window started."""
WATCH_SHADOW_SAMPLE_RATE = "canary_watch_shadow_sample_rate"
"""The shadow sample rate the watch set on the gateways (-1 until one confirmed it)."""

__all__ = [
    "ANALYSIS",
    "BAKE_ELAPSED",
    "CONSECUTIVE_FAILURES",
    "GATE_DRY_RUN",
    "GATE_THRESHOLD",
    "GATE_VALUE",
    "GATE_VERDICT",
    "LAST_TICK",
    "NOTIFICATIONS",
    "PHASE",
    "PROMOTIONS",
    "ROLLBACKS",
    "ROLLOUT_INFO",
    "SHARE_DRIFT",
    "STEP_INDEX",
    "STUDENT_SHARE",
    "WATCH_LOOKS",
    "WATCH_SHADOW_SAMPLE_RATE",
    "WATCH_VERDICTS",
    "WATCH_WINDOW_STARTED",
]

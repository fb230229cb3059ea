"""The names of the gateway's metrics that others read: the controller's metrics sources, and
(by these same strings) the dashboards, the recording rules and the alerts. One place, so a rename
cannot leave a reader behind. The metrics themselves are defined in ``gateway.metrics``."""

from __future__ import annotations

REQUESTS = "gateway_requests_total"  # model, backend, code, protocol
REQUEST_DURATION = "gateway_request_duration_seconds"  # model, backend, protocol
BACKEND_DURATION = "gateway_backend_duration_seconds"  # model, backend, path (live, shadow)
FEEDBACK = "gateway_feedback_total"  # model, backend, class (the true one)
FEEDBACK_CORRECT = "gateway_feedback_correct_total"  # model, backend, class
FEEDBACK_PAIRED = "gateway_feedback_paired_total"  # model, outcome (PAIRED_OUTCOMES), class
PAIRED_OUTCOMES = ("both_correct", "teacher_only", "student_only", "both_wrong")
"""Which of the two backends was right on a labelled example both answered (live and shadow)."""
COST = "gateway_inference_cost_dollars_total"  # model, backend, basis
CPU = "gateway_backend_cpu_seconds_total"  # model, backend, path (live, shadow)
SHADOW_COMPARISONS = "gateway_shadow_comparisons_total"  # model
SHADOW_AGREEMENTS = "gateway_shadow_agreements_total"  # model
SHADOW_KL = "gateway_shadow_kl_divergence"  # model; a histogram
FALLBACKS = "gateway_fallbacks_total"  # model, from_backend, to_backend, reason

"""The names of the gateway's metrics that others read: the controller's metrics sources, and
(by these same strings) the dashboards, the recording rules and the alerts. One place, so a rename
cannot leave a reader behind. The metrics themselves are defined in ``gateway.metrics``."""

from __future__ import annotations

from gateway.roles import NO_BACKEND, ROLES

# Label values the readers select on (the roles themselves are ``gateway.roles``'s).
MODEL = "model"
"""The label every gateway_* series carries: the served model's name (a gateway serves several)."""
TEACHER, STUDENT = ROLES
BACKEND_NONE = NO_BACKEND
"""``backend`` of a request refused before routing (shed, bad input): no backend's call."""
LIVE, SHADOW = "live", "shadow"
"""``path`` of BACKEND_DURATION and CPU: a call that answered a client, or a shadow comparison."""

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
TASK_INFO = "gateway_task_info"  # model, task (TASK_KINDS); 1: what the model's answers are
# Per task (``gateway.tasks``): what fits a multilabel, a regression and an embedding model.
SHADOW_LABEL_AGREEMENTS = "gateway_shadow_label_agreements_total"  # model, label (its index)
"""Multilabel: compared examples on which the two backends agree about label ``label`` (over
SHADOW_COMPARISONS: that label's agreement). SHADOW_AGREEMENTS counts exact-set agreement."""
SHADOW_HAMMING_LOSS = "gateway_shadow_hamming_loss"  # model; a histogram, per example
"""Multilabel: the share of labels on which the two backends disagree (1 - Hamming agreement)."""
SHADOW_ABS_ERROR = "gateway_shadow_abs_error"  # model; a histogram, per example
"""Regression: mean |student - teacher| over an example's output elements."""
SHADOW_RELATIVE_ERROR = "gateway_shadow_relative_error"  # model; a histogram, per example
"""Regression: that over the teacher's mean magnitude (capped at 10)."""
SHADOW_COSINE_DISTANCE = "gateway_shadow_cosine_distance"  # model; a histogram, per example
"""Embedding: 1 - cosine(student, teacher), 0..2."""
FEEDBACK_HAMMING_LOSS = "gateway_feedback_hamming_loss"  # model, backend; a histogram
"""Multilabel: per labelled example, the share of its labels the serving backend got wrong
(1 - Hamming accuracy). FEEDBACK and FEEDBACK_CORRECT count per label (class = its index)."""
FEEDBACK_ABS_ERROR = "gateway_feedback_abs_error"  # model, backend; a histogram
"""Regression: per labelled example, mean |answer - label| of the serving backend."""
FEEDBACK_RELATIVE_ERROR = "gateway_feedback_relative_error"  # model, backend; a histogram
"""Regression: that over the label's mean magnitude (capped at 10)."""
# The cascade (``traffic.mode: cascade``; ``gateway.cascade``), made in that mode only.
CASCADE_REQUESTS = "gateway_cascade_requests_total"  # model, escalated (CASCADE_ESCALATED)
CASCADE_ESCALATED = ("false", "true", "failed")
"""Requests answered through the cascade (the student's share of the traffic, less requests the
student failed: those fell back and count as the teacher's); escalated="true": the student was
unsure and the teacher's answer was returned; "failed": it was unsure, the teacher failed, and
the student's answer was returned (x-escalated: failed). Escalation rate: not "false" over all."""
CASCADE_DURATION = "gateway_cascade_request_duration_seconds"  # model, escalated; a histogram
"""A cascade request's time in the gateway: an escalated one pays the student's call and the
teacher's."""
CASCADE_THRESHOLD = "gateway_cascade_threshold"  # model
"""The confidence below which a request is escalated now."""
CASCADE_THRESHOLD_SOURCE = "gateway_cascade_threshold_source"  # model, source; 1 for the one used
CASCADE_SOURCES = ("fixed", "chosen", "no_evidence")
"""fixed: min_confidence alone; chosen: from data (max_disagreement); no_evidence: waiting for
enough shadowed requests (or none was shown safe), min_confidence or 1.0 meanwhile."""
CASCADE_CALIBRATION_SAMPLES = "gateway_cascade_calibration_samples"  # model
"""Shadowed requests (both answers known) the last choice was made from."""
CASCADE_DISAGREEMENT_BOUND = "gateway_cascade_disagreement_bound"  # model
"""The last choice's upper bound on the fraction of requests the cascade answers unlike the
teacher (at that look's level), beside max_disagreement."""
CASCADE_COMPARISONS = "gateway_cascade_comparisons_total"  # model
CASCADE_AGREEMENTS = "gateway_cascade_agreements_total"  # model
"""Shadowed cascade requests, and those whose returned answer equals the teacher's (an escalated
one always does): the cascade's agreement with the teacher."""
CASCADE_EVIDENCE_DROPPED = "gateway_cascade_evidence_dropped_total"  # model, reason
CASCADE_DROP_REASONS = ("queue_full", "circuit_open", "timeout", "error")
"""Requests drawn as the cascade's evidence whose shadow call did not answer (the shadow queue
full, the shadow backend's circuit not closed, its call timed out or failed): left out of the
evidence, escalated or not, so that it stays a random sample of the traffic."""
DRIFT_ROWS = "gateway_drift_rows_total"  # model: answered rows summarised
DRIFT_STUDENT_ROWS = "gateway_drift_student_rows_total"  # model: of those, the student's
DRIFT_INPUT_VALUES = "gateway_drift_input_values_total"  # model, input, block, bin
DRIFT_SEQUENCE_LENGTH = "gateway_drift_sequence_length_total"  # model, input, bin
DRIFT_TOKEN_IDS = "gateway_drift_token_ids_total"  # model, input, bin
DRIFT_PREDICTIONS = "gateway_drift_predictions_total"  # model, output, block, bin (class)
DRIFT_CONFIDENCE = "gateway_drift_confidence_total"  # model, bin: rows by top-1 confidence
DRIFT_CONFIDENCE_SUM = "gateway_drift_confidence_sum_total"  # model: sum of top-1 confidence
CASCADE_FEEDBACK = "gateway_cascade_feedback_total"  # model, escalated
CASCADE_FEEDBACK_CORRECT = "gateway_cascade_feedback_correct_total"  # model, escalated
"""Labelled rows of requests answered through the cascade, and those whose returned answer was
right: the cascade's accuracy, escalated or not (labels that reach the replica that answered)."""
# Routing, the student served, shadowing and batching (``gateway.metrics``).
TRAFFIC_SHARE = "gateway_traffic_share"  # model, backend: 0..1
TRAFFIC_GENERATION = "gateway_traffic_generation"  # model: the share's version
STUDENT_INFO = "gateway_student_info"  # model, student_id: 1 for the student served
SHADOW_DROPPED = "gateway_shadow_dropped_total"  # model, reason
SHADOW_ERRORS = "gateway_shadow_errors_total"  # model, backend
BATCH_SIZE = "gateway_batch_size"  # model, backend; a histogram
BATCH_PADDING = "gateway_batch_padding_elements_total"  # model, backend
BATCH_PADDED_CALL = "gateway_batch_padded_call_elements_total"  # model, backend
SHADOW_BATCH_SIZE = "gateway_shadow_batch_size"  # model, backend; a histogram
SHADOW_BATCH_DURATION = "gateway_shadow_batch_duration_seconds"  # model, backend; a histogram
# The backends' health and what they cost in the process.
BACKEND_UP = "gateway_backend_up"  # model, backend: ready and its circuit not open
SIGNATURE_MISMATCH = "gateway_backend_signature_mismatch"  # model, backend
CIRCUIT_STATE = "gateway_circuit_state"  # model, backend, state
BACKEND_ABANDONED = "gateway_backend_abandoned_calls_total"  # model, backend
BACKEND_ABANDONED_RUNNING = "gateway_backend_abandoned_calls_running"  # model, backend, lane
BACKEND_MEMORY = "gateway_backend_memory_bytes"  # model, backend
BACKEND_REMOTE_COMPUTE = "gateway_backend_remote_compute_seconds_total"  # model, backend
# Admission and overload.
SHED = "gateway_shed_total"  # model, reason
QUEUE_DELAY = "gateway_queue_delay_seconds"  # model, backend; a histogram
QUEUE_TARGET = "gateway_queue_target_seconds"  # model: overload.max_queue_ms
BODY_TIMEOUTS = "gateway_body_timeouts_total"  # model
INFLIGHT = "gateway_inflight_requests"  # model
MAX_INFLIGHT = "gateway_max_inflight_requests"  # model: overload.max_inflight
EVENT_LOOP_LAG = "gateway_event_loop_lag_seconds"  # model; a histogram
ADMIN_AUTH_FAILURES = "gateway_admin_auth_failures_total"  # model, reason
# Feedback kept waiting for its label.
FEEDBACK_PENDING = "gateway_feedback_pending"  # model
FEEDBACK_PENDING_BYTES = "gateway_feedback_pending_bytes"  # model
# The fleet's state store (Redis).
STATE_STORE_UP = "gateway_state_store_up"  # model
STATE_STORE_ERRORS = "gateway_state_store_errors_total"  # model, op
STATE_STORE_FALLBACKS = "gateway_state_store_fallbacks_total"  # model, op
FLEET_REPLICAS = "gateway_fleet_replicas"  # model: live replicas in the registry
CASCADE_ESCALATION_CALLS = "gateway_cascade_escalation_calls_total"  # model, backend, code, reason
"""Each escalation's call to the teacher, by the status a teacher-only request would have had:
``backend="teacher"`` 200 (answered), 503 (``error``, an open circuit too) or 504 (``timeout``);
``backend="none"`` 503 (``shed``) or 504 (``deadline``), which, as in split mode, are no
backend's failure. The request itself is counted once, in gateway_requests_total, as the cascade
lane's (``backend="student"``) 200: a failed escalation returns the student's answer. So the
teacher's error rate is its live requests plus these calls (``controller.error_rate``)."""
ESCALATION_REASONS = ("ok", "error", "timeout", "shed", "deadline")
CASCADE_FEEDBACK_PAIRED = "gateway_cascade_feedback_paired_total"  # model, escalated, outcome
"""Labelled rows of cascade requests that returned the student's answer (escalated ``false`` or
``failed``) whose teacher answer is known too (shadowed on the teacher), by which was right
(``gateway.metric_names.PAIRED_OUTCOMES``): the paired half of the cascade's accuracy gate."""

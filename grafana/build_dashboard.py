"""Builds grafana/dashboards/distill-gateway.json from code: `python grafana/build_dashboard.py`.

Plain dicts in Grafana's dashboard JSON model (schemaVersion 39), so there is no generator library
to keep in step with Grafana. A test checks that the committed JSON is this script's output, and
runs every panel's query against a real Prometheus.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controller import error_rate
from controller import gate_metrics as gm
from gateway import metric_names as names

OUT = Path(__file__).parent / "dashboards" / "distill-gateway.json"
DS = {"type": "prometheus", "uid": "${datasource}"}
M = 'model="$model"'
W = "$__rate_interval"
SECONDS_PER_MONTH = 30 * 24 * 3600


def rate(metric: str, selector: str = "", by: str = "", window: str = W) -> str:
    labels = f"{M},{selector}" if selector else M
    grouping = f" by ({by})" if by else ""
    return f"sum{grouping} (rate({metric}{{{labels}}}[{window}]))"


def quantile(q: float, histogram: str, by: str = "backend") -> str:
    return f"histogram_quantile({q}, sum by ({by}, le) (rate({histogram}_bucket{{{M}}}[{W}])))"


def cost_per_request(backend: str, window: str = W) -> str:
    cost = rate("gateway_inference_cost_dollars_total", f'backend="{backend}"', window=window)
    served = rate("gateway_requests_total", f'backend="{backend}",code="200"', window=window)
    return f"({cost} / {served})"


ROUTED = 'backend!="none"'
SERVED = 'code="200"'
TEACHER = 'backend="teacher"'
TEACHER_LIVE = 'backend="teacher",path="live"'


@dataclass(frozen=True)
class Panel:
    title: str
    unit: str
    queries: list[tuple[str, str]]  # (PromQL, legend)
    kind: str = "timeseries"
    width: int = 12
    shows_name: bool = False  # a stat panel that shows the series' name (its label), not a value


def ratio(numerator: str, denominator: str) -> str:
    return f"{numerator} / {denominator}"


TASK_ROW = "Per task: regression, embedding, multilabel"
CASCADE_ROW = "Cascade: the student answers when it is sure"
DRIFT_ROW = "Drift: the student's predictions after promotion"
TASK_PANELS = ("Regression:", "Embedding:", "Multilabel:")
"""Title prefixes of the panels that fit one task only (empty for a model of another task)."""

PANELS = [
    Panel("Student share", "percentunit", [
        (f'max by (instance) (gateway_traffic_share{{{M},backend="student"}})',
         "gateway {{instance}}"),
        (f"max(canary_student_share{{{M}}})", "controller"),
    ]),
    Panel("Canary phase", "none", [(f"max by (phase) (canary_phase{{{M}}}) == 1", "{{phase}}")],
          "stat", 6, shows_name=True),
    Panel("Canary step", "none", [(f"max(canary_step_index{{{M}}}) + 1", "step")], "stat", 6),
    Panel("Requests per second by backend", "reqps", [
        (rate("gateway_requests_total", ROUTED, "backend"), "{{backend}}"),
    ]),
    Panel("Requests per second by protocol (HTTP, gRPC) and backend", "reqps", [
        (rate("gateway_requests_total", ROUTED, "protocol, backend"), "{{protocol}} {{backend}}"),
    ]),
    Panel("Time in gateway p99 by protocol", "s", [
        (quantile(0.99, "gateway_request_duration_seconds", "protocol"), "p99 {{protocol}}"),
    ]),
    Panel("Backend latency p50 and p99 (as the controller judges it)", "s", [
        (quantile(0.5, "gateway_backend_duration_seconds"), "p50 {{backend}}"),
        (quantile(0.99, "gateway_backend_duration_seconds"), "p99 {{backend}}"),
    ]),
    Panel("Time in gateway p50 and p99", "s", [
        (quantile(0.5, "gateway_request_duration_seconds"), "p50 {{backend}}"),
        (quantile(0.99, "gateway_request_duration_seconds"), "p99 {{backend}}"),
    ]),
    Panel("Error rate by backend", "percentunit", [
        # The one definition the controller's gate and the alert's rule use: calls routed to a
        # backend that failed (5xx, or fallen back away from it) over the calls routed to it.
        (error_rate.error_ratio(W, M, "backend"), "{{backend}}"),
    ]),
    Panel("Fallbacks per second (student failed, teacher answered)", "ops", [
        (rate("gateway_fallbacks_total", by="from_backend, reason"),
         "from {{from_backend}}: {{reason}}"),
    ]),
    Panel("Backend up (ready, circuit not open)", "none", [
        (f"max by (backend) (gateway_backend_up{{{M}}})", "{{backend}}"),
    ]),
    Panel("Shadow agreement (top-1, student vs teacher)", "percentunit", [
        (ratio(rate("gateway_shadow_agreements_total"), rate("gateway_shadow_comparisons_total")),
         "agreement"),
    ], width=8),
    Panel("Mean KL divergence (teacher || student)", "none", [
        (ratio(rate("gateway_shadow_kl_divergence_sum"),
               rate("gateway_shadow_kl_divergence_count")), "mean KL"),
    ], width=8),
    Panel("Shadow comparisons dropped per second", "ops", [
        (rate("gateway_shadow_dropped_total"), "dropped"),
    ], width=8),
    Panel("Requests shed per second (overload, 503), by reason", "reqps", [
        (rate("gateway_shed_total", by="reason"), "{{reason}}"),
        (rate("gateway_body_timeouts_total"), "slow upload (408)"),
    ], width=8),
    Panel("Queue delay p50 and p99 by backend, against the target", "s", [
        (quantile(0.5, "gateway_queue_delay_seconds"), "p50 {{backend}}"),
        (quantile(0.99, "gateway_queue_delay_seconds"), "p99 {{backend}}"),
        (f"max(gateway_queue_target_seconds{{{M}}})", "target (overload.max_queue_ms)"),
    ], width=8),
    Panel("Requests held and the memory bound", "none", [
        (f"max by (instance) (gateway_inflight_requests{{{M}}})", "held {{instance}}"),
        (f"max(gateway_max_inflight_requests{{{M}}})", "bound (overload.max_inflight)"),
    ], width=8),
    Panel("Fleet: live replicas, state store up, store errors per second", "none", [
        (f"max(gateway_fleet_replicas{{{M}}})", "replicas in the registry"),
        (f"min by (instance) (gateway_state_store_up{{{M}}})", "store up {{instance}}"),
        (rate("gateway_state_store_errors_total", by="op"), "errors: {{op}}"),
    ], width=8),
    Panel("Event-loop lag p99 (what every request waited for the loop)", "s", [
        (quantile(0.99, "gateway_event_loop_lag_seconds", "instance"), "{{instance}}"),
    ], width=8),
    Panel("Accuracy by backend (ground-truth feedback)", "percentunit", [
        (ratio(rate("gateway_feedback_correct_total", by="backend"),
               rate("gateway_feedback_total", by="backend")), "{{backend}}"),
    ]),
    Panel("Accuracy drop by true class (teacher - student, live labels)", "percentunit", [
        ("(" + ratio(rate("gateway_feedback_correct_total", 'backend="teacher"', "class"),
                     rate("gateway_feedback_total", 'backend="teacher"', "class"))
         + ") - (" + ratio(rate("gateway_feedback_correct_total", 'backend="student"', "class"),
                           rate("gateway_feedback_total", 'backend="student"', "class"))
         + ")", "class {{class}}"),
    ]),
    Panel("Cost per 1,000 requests by backend", "currencyUSD", [
        ("1000 * " + ratio(rate("gateway_inference_cost_dollars_total", by="backend"),
                           rate("gateway_requests_total", SERVED, "backend")), "{{backend}}"),
    ]),
    Panel("CPU per request by backend (in-process backends)", "s", [
        (ratio(rate("gateway_backend_cpu_seconds_total", 'path="live"', "backend"),
               rate("gateway_requests_total", SERVED, "backend")), "{{backend}}"),
    ]),
    Panel("Memory each backend's model holds (in process)", "bytes", [
        (f"max by (backend) (gateway_backend_memory_bytes{{{M}}})", "{{backend}}"),
    ], width=8),
    Panel("Gateway resident memory", "bytes", [
        (f"max by (instance) (process_resident_memory_bytes and on (instance) "
         f"gateway_traffic_generation{{{M}}})", "{{instance}}"),
    ], width=8),
    Panel("Gateway open file descriptors", "none", [
        (f"max by (instance) (process_open_fds and on (instance) "
         f"gateway_traffic_generation{{{M}}})", "{{instance}}"),
    ], width=8),
    Panel("Projected monthly saving with all current traffic on the student", "currencyUSD", [
        (f'({cost_per_request("teacher", "1d")} - {cost_per_request("student", "1d")})'
         f" * {rate('gateway_requests_total', SERVED)} * {SECONDS_PER_MONTH}", "saving"),
    ], "stat"),
    # Per task (gateway/tasks.py): each panel has data only for a model of its task.
    Panel(TASK_ROW, "none", [], "row", 24),
    Panel("Regression: mean error, student vs teacher (shadow) and against labels", "none", [
        (ratio(rate("gateway_shadow_abs_error_sum"), rate("gateway_shadow_abs_error_count")),
         "|student - teacher|"),
        (ratio(rate("gateway_shadow_relative_error_sum"),
               rate("gateway_shadow_relative_error_count")), "relative to the teacher"),
        (ratio(rate("gateway_feedback_abs_error_sum", by="backend"),
               rate("gateway_feedback_abs_error_count", by="backend")), "|{{backend}} - label|"),
    ], width=8),
    Panel("Embedding: mean cosine similarity, student vs teacher (shadow)", "none", [
        ("1 - " + ratio(rate("gateway_shadow_cosine_distance_sum"),
                        rate("gateway_shadow_cosine_distance_count")), "cosine"),
    ], width=8),
    Panel("Multilabel: Hamming agreement (shadow) and accuracy by backend (labels)",
          "percentunit", [
        ("1 - " + ratio(rate("gateway_shadow_hamming_loss_sum"),
                        rate("gateway_shadow_hamming_loss_count")), "agreement"),
        ("1 - " + ratio(rate("gateway_feedback_hamming_loss_sum", by="backend"),
                        rate("gateway_feedback_hamming_loss_count", by="backend")),
         "accuracy {{backend}}"),
    ], width=8),
    # The cascade (traffic.mode: cascade, gateway/cascade.py): data only for a model in that mode.
    Panel(CASCADE_ROW, "none", [], "row", 24),
    Panel("Cascade: escalation rate (escalated to the teacher / through the cascade)",
          "percentunit", [
        (ratio(rate(names.CASCADE_REQUESTS, 'escalated!="false"'), rate(names.CASCADE_REQUESTS)),
         "escalated"),
    ], width=8),
    Panel("Cascade: latency p50 / p99, escalated (student + teacher) or not", "s", [
        (quantile(0.5, names.CASCADE_DURATION, "escalated"), "p50 escalated={{escalated}}"),
        (quantile(0.99, names.CASCADE_DURATION, "escalated"), "p99 escalated={{escalated}}"),
    ], width=8),
    Panel("Cascade: agreement with the teacher (shadow) and accuracy (labels)", "percentunit", [
        (ratio(rate(names.CASCADE_AGREEMENTS), rate(names.CASCADE_COMPARISONS)), "agreement"),
        (ratio(rate(names.CASCADE_FEEDBACK_CORRECT), rate(names.CASCADE_FEEDBACK)), "accuracy"),
        (ratio(rate(names.CASCADE_FEEDBACK_CORRECT, by="escalated"),
               rate(names.CASCADE_FEEDBACK, by="escalated")), "accuracy escalated={{escalated}}"),
    ], width=8),
    Panel("Cascade: threshold, and the disagreement bound behind a chosen one", "none", [
        (f"max({names.CASCADE_THRESHOLD}{{{M}}})", "threshold"),
        (f"max({names.CASCADE_DISAGREEMENT_BOUND}{{{M}}})", "disagreement bound"),
        (f"max by (source) ({names.CASCADE_THRESHOLD_SOURCE}{{{M}}}) == 1", "source: {{source}}"),
    ]),
    Panel("Cascade: dollars per 1,000 requests, against the teacher alone", "currencyUSD", [
        (f"1000 * {rate(names.COST)} / {rate(names.REQUESTS, SERVED)}", "cascade"),
        (f"1000 * {rate(names.COST, TEACHER)} / "
         f"{rate(names.BACKEND_DURATION + '_count', TEACHER_LIVE)}",
         "teacher only"),
    ]),
    # Drift (issue 31, gateway/drift.py): the student's predictions against the last day, from
    # the recording rules the DistillStudentDrift alert reads; the watch judges inputs too.
    Panel(DRIFT_ROW, "none", [], "row", 24),
    Panel("Drift: PSI of the student's predicted classes, last hour against the last day", "none", [
        (f"max by (output, block) (model_output:gateway_drift_prediction_psi:1h{{{M}}})",
         "{{output}} {{block}}"),
    ], width=8),
    Panel("Drift: the student's predicted-class shares over the last hour", "percentunit", [
        (f"max by (bin) (model_output_bin:gateway_drift_prediction_share:1h{{{M}}})",
         "class {{bin}}"),
    ], width=8),
    Panel("Drift: rows summarised per second (every answer's inputs, the student's answers)",
          "none", [
        (rate(names.DRIFT_ROWS), "inputs"),
        (rate(names.DRIFT_STUDENT_ROWS), "student answers"),
    ], width=8),
    # The gates' row. A value is never shown without its interval and verdict: it may be far
    # from passing. The second panel puts every gate on one scale: its threshold is 1.
    Panel("Canary gates", "none", [], "row", 24),
    Panel("Canary gates: value, interval and threshold", "none", [
        (f"max by (gate, {gm.BOUND_LABEL}) ({gm.GATE_VALUE}{{{M}}})", "{{gate}} {{bound}}"),
        (f"max by (gate) ({gm.GATE_THRESHOLD}{{{M}}})", "{{gate}} threshold"),
    ]),
    Panel("Canary gates against their thresholds (1 = the threshold)", "none", [
        (f"max by (gate, {gm.BOUND_LABEL}) ({gm.GATE_VALUE}{{{M}}}) / on (gate) group_left "
         f"max by (gate) ({gm.GATE_THRESHOLD}{{{M}}})", "{{gate}} {{bound}}"),
    ]),
    Panel("Canary gate verdicts: 1 pass, 0 inconclusive, -1 fail", "none", [
        (f"max by (gate) ({gm.GATE_VERDICT}{{{M}}})", "{{gate}}"),
        (f"max by (gate) ({gm.GATE_DRY_RUN}{{{M}}})", "{{gate}} dry run (1: never decides)"),
    ]),
    Panel("Canary step: bake elapsed, failures in a row, share drifts", "none", [
        (f"max(canary_step_bake_elapsed_seconds{{{M}}})", "bake elapsed (s)"),
        (f"max(canary_consecutive_failures{{{M}}})", "failed analyses in a row"),
        (f"sum(increase(canary_share_drift_total{{{M}}}[5m]))", "share drifts (5m)"),
    ]),
    Panel("Seconds since the controller's last heartbeat", "s", [
        (f"time() - max(canary_last_tick_timestamp_seconds{{{M}}})", "heartbeat age"),
    ], "stat", 6),
    # Which student the gateways serve, by model registry id (two ids: a swap in progress).
    Panel("Student served (registry id)", "none", [
        (f"max by (student_id) (gateway_student_info{{{M}}}) == 1", "{{student_id}}"),
    ], "stat", 6, shows_name=True),
]  # fmt: skip

ANNOTATIONS = [
    ("Rollbacks", "red", f"sum by (reason) (increase(canary_rollbacks_total{{{M}}}[1m])) > 0",
     "rolled back: {{reason}}"),
    ("Promotions", "green", f"sum(increase(canary_promotions_total{{{M}}}[1m])) > 0", "promoted"),
]  # fmt: skip


HEIGHTS = {"timeseries": 8, "row": 1}


def panel(index: int, x: int, y: int, spec: Panel) -> dict[str, Any]:
    result: dict[str, Any] = {
        "id": index + 1,
        "type": spec.kind,
        "title": spec.title,
        "datasource": DS,
        "gridPos": {"x": x, "y": y, "w": spec.width, "h": HEIGHTS.get(spec.kind, 4)},
        "fieldConfig": {"defaults": {"unit": spec.unit}, "overrides": []},
        "targets": [
            {"refId": chr(ord("A") + n), "datasource": DS, "expr": expr, "legendFormat": legend}
            for n, (expr, legend) in enumerate(spec.queries)
        ],
    }
    if spec.kind == "row":
        result.update(collapsed=False, panels=[])
    if spec.kind == "stat":
        text_mode = "name" if spec.shows_name else "value"
        result["options"] = {"reduceOptions": {"calcs": ["lastNotNull"]}, "textMode": text_mode}
    return result


def dashboard() -> dict[str, Any]:
    panels, x, y, row_height = [], 0, 0, 0
    for index, spec in enumerate(PANELS):
        width = spec.width
        if x + width > 24:
            x, y = 0, y + row_height
            row_height = 0
        built = panel(index, x, y, spec)
        panels.append(built)
        row_height = max(row_height, built["gridPos"]["h"])
        x += width
    return {
        "uid": "distill-gateway",
        "title": "distill-gateway: teacher to student rollout",
        "tags": ["distill-gateway", "canary"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "type": "datasource",
                    "query": "prometheus",
                    "label": "Prometheus",
                },
                {
                    "name": "model",
                    "type": "query",
                    "datasource": DS,
                    "label": "model",
                    "query": {
                        "query": "label_values(gateway_requests_total, model)",
                        "refId": "model",
                    },
                    "definition": "label_values(gateway_requests_total, model)",
                    "refresh": 2,
                },
            ]
        },
        "annotations": {
            "list": [
                {
                    "name": name,
                    "datasource": DS,
                    "enable": True,
                    "iconColor": color,
                    "expr": expr,
                    "titleFormat": title,
                    "step": "15s",
                }
                for name, color, expr, title in ANNOTATIONS
            ]
        },
        "panels": panels,
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2) + "\n"


if __name__ == "__main__":
    OUT.write_text(render())
    print(f"wrote {OUT}")

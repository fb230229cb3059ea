"""Builds grafana/dashboards/distill-gateway.json from code: `python grafana/build_dashboard.py`.

Plain dicts in Grafana's dashboard JSON model (schemaVersion 39), so there is no generator library
to keep in step with Grafana. A gateway serves several models: the ``model`` variable is
multi-value (with "All"), and every row repeats per chosen model, so each panel shows one model
(``model="$model"`` inside a repeated row is that row's model) and one model's trouble never hides
behind another's traffic. Metric names and label values come from ``gateway.metric_names`` and
``controller.gate_metrics``. A test checks that the committed JSON is this script's output, and
runs every panel's query against a real Prometheus.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controller import error_rate
from controller import gate_metrics as gm
from controller import metric_names as cn
from gateway import metric_names as names

OUT = Path(__file__).parent / "dashboards" / "distill-gateway.json"
DS = {"type": "prometheus", "uid": "${datasource}"}
VARIABLE = names.MODEL
"""The dashboard variable, named after the label it selects."""
M = f'{names.MODEL}="${VARIABLE}"'
"""A panel's model: inside a repeated row, the row's one model."""
CHOSEN = f'{names.MODEL}=~"${VARIABLE}"'
"""The models chosen (a regex of them under "All"): the annotations, which no row scopes."""
W = "$__rate_interval"
SECONDS_PER_MONTH = 30 * 24 * 3600

# The controller's series, named once in controller.metric_names (the exporter's too).
CANARY_SHARE, CANARY_PHASE, CANARY_STEP = cn.STUDENT_SHARE, cn.PHASE, cn.STEP_INDEX
CANARY_BAKE, CANARY_FAILURES = cn.BAKE_ELAPSED, cn.CONSECUTIVE_FAILURES
CANARY_SHARE_DRIFTS, CANARY_HEARTBEAT = cn.SHARE_DRIFT, cn.LAST_TICK
CANARY_ROLLBACKS, CANARY_PROMOTIONS = cn.ROLLBACKS, cn.PROMOTIONS
# Recorded by deploy/prometheus/rules/recording.yml (the drift alert reads them too).
DRIFT_PSI = "model_output:gateway_drift_prediction_psi:1h"
DRIFT_SHARE = "model_output_bin:gateway_drift_prediction_share:1h"


def rate(metric: str, selector: str = "", by: str = "", window: str = W) -> str:
    labels = f"{M},{selector}" if selector else M
    grouping = f" by ({by})" if by else ""
    return f"sum{grouping} (rate({metric}{{{labels}}}[{window}]))"


def quantile(q: float, histogram: str, by: str = "backend") -> str:
    return f"histogram_quantile({q}, sum by ({by}, le) (rate({histogram}_bucket{{{M}}}[{W}])))"


def ratio(numerator: str, denominator: str) -> str:
    return f"{numerator} / {denominator}"


def mean(histogram: str, by: str = "") -> str:
    """A histogram's mean observation over the window."""
    return ratio(rate(f"{histogram}_sum", by=by), rate(f"{histogram}_count", by=by))


def gauge(metric: str, selector: str = "", agg: str = "max", by: str = "") -> str:
    labels = f"{M},{selector}" if selector else M
    grouping = f" by ({by}) " if by else ""
    return f"{agg}{grouping}({metric}{{{labels}}})"


def backend(role: str) -> str:
    return f'backend="{role}"'


ROUTED = f'backend!="{names.BACKEND_NONE}"'
SERVED = 'code="200"'
TEACHER = backend(names.TEACHER)
STUDENT = backend(names.STUDENT)
TEACHER_LIVE = f'{TEACHER},path="{names.LIVE}"'


def cost_per_request(role: str, window: str = W) -> str:
    cost = rate(names.COST, backend(role), window=window)
    served = rate(names.REQUESTS, f"{backend(role)},{SERVED}", window=window)
    return f"({cost} / {served})"


def process_of_model(metric: str) -> str:
    """A process-wide series (process_*) of the gateways that serve the row's model."""
    return f"max by (instance) ({metric} and on (instance) {names.TASK_INFO}{{{M}}})"


@dataclass(frozen=True)
class Panel:
    title: str
    unit: str
    queries: list[tuple[str, str]]  # (PromQL, legend)
    kind: str = "timeseries"
    width: int = 12
    shows_name: bool = False  # a stat panel that shows the series' name (its label), not a value


def row(title: str) -> Panel:
    """A row that repeats per chosen model, with the panels after it up to the next row."""
    return Panel(f"${VARIABLE}: {title}", "none", [], "row", 24)


TRAFFIC_ROW = "Rollout and traffic"
LATENCY_ROW = "Latency and errors"
CAPACITY_ROW = "Shadow, overload and the fleet"
QUALITY_ROW = "Accuracy, cost and memory"
TASK_ROW = "Per task: regression, embedding, multilabel"
CASCADE_ROW = "Cascade: the student answers when it is sure"
DRIFT_ROW = "Drift: the student's predictions after promotion"
GATES_ROW = "Canary gates"
TASK_PANELS = ("Regression:", "Embedding:", "Multilabel:")
"""Title prefixes of the panels that fit one task only (empty for a model of another task)."""

PANELS = [
    row(TRAFFIC_ROW),
    Panel("Student share", "percentunit", [
        (gauge(names.TRAFFIC_SHARE, STUDENT, by="instance"), "gateway {{instance}}"),
        (gauge(CANARY_SHARE), "controller"),
    ]),
    Panel("Canary phase", "none", [(f"{gauge(CANARY_PHASE, by='phase')} == 1", "{{phase}}")],
          "stat", 6, shows_name=True),
    Panel("Canary step", "none", [(f"{gauge(CANARY_STEP)} + 1", "step")], "stat", 6),
    Panel("Requests per second by backend", "reqps", [
        (rate(names.REQUESTS, ROUTED, "backend"), "{{backend}}"),
    ]),
    Panel("Requests per second by protocol (HTTP, gRPC) and backend", "reqps", [
        (rate(names.REQUESTS, ROUTED, "protocol, backend"), "{{protocol}} {{backend}}"),
    ]),
    row(LATENCY_ROW),
    Panel("Time in gateway p99 by protocol", "s", [
        (quantile(0.99, names.REQUEST_DURATION, "protocol"), "p99 {{protocol}}"),
    ]),
    Panel("Backend latency p50 and p99 (as the controller judges it)", "s", [
        (quantile(0.5, names.BACKEND_DURATION), "p50 {{backend}}"),
        (quantile(0.99, names.BACKEND_DURATION), "p99 {{backend}}"),
    ]),
    Panel("Time in gateway p50 and p99", "s", [
        (quantile(0.5, names.REQUEST_DURATION), "p50 {{backend}}"),
        (quantile(0.99, names.REQUEST_DURATION), "p99 {{backend}}"),
    ]),
    Panel("Error rate by backend", "percentunit", [
        # The one definition the controller's gate and the alert's rule use: calls routed to a
        # backend that failed (5xx, or fallen back away from it) over the calls routed to it.
        (error_rate.error_ratio(W, M, "backend"), "{{backend}}"),
    ]),
    Panel("Fallbacks per second (student failed, teacher answered)", "ops", [
        (rate(names.FALLBACKS, by="from_backend, reason"), "from {{from_backend}}: {{reason}}"),
    ]),
    Panel("Backend up (ready, circuit not open)", "none", [
        (gauge(names.BACKEND_UP, by="backend"), "{{backend}}"),
    ]),
    row(CAPACITY_ROW),
    Panel("Shadow agreement (top-1, student vs teacher)", "percentunit", [
        (ratio(rate(names.SHADOW_AGREEMENTS), rate(names.SHADOW_COMPARISONS)), "agreement"),
    ], width=8),
    Panel("Mean KL divergence (teacher || student)", "none", [
        (mean(names.SHADOW_KL), "mean KL"),
    ], width=8),
    Panel("Shadow comparisons dropped per second", "ops", [
        (rate(names.SHADOW_DROPPED), "dropped"),
    ], width=8),
    Panel("Requests shed per second (overload, 503), by reason", "reqps", [
        (rate(names.SHED, by="reason"), "{{reason}}"),
        (rate(names.BODY_TIMEOUTS), "slow upload (408)"),
    ], width=8),
    Panel("Queue delay p50 and p99 by backend, against the target", "s", [
        (quantile(0.5, names.QUEUE_DELAY), "p50 {{backend}}"),
        (quantile(0.99, names.QUEUE_DELAY), "p99 {{backend}}"),
        (gauge(names.QUEUE_TARGET), "target (overload.max_queue_ms)"),
    ], width=8),
    Panel("Requests held and the memory bound", "none", [
        (gauge(names.INFLIGHT, by="instance"), "held {{instance}}"),
        (gauge(names.MAX_INFLIGHT), "bound (overload.max_inflight)"),
    ], width=8),
    Panel("Fleet: live replicas, state store up, store errors per second", "none", [
        (gauge(names.FLEET_REPLICAS), "replicas in the registry"),
        (gauge(names.STATE_STORE_UP, agg="min", by="instance"), "store up {{instance}}"),
        (rate(names.STATE_STORE_ERRORS, by="op"), "errors: {{op}}"),
    ], width=8),
    Panel("Event-loop lag p99 (what every request waited for the loop)", "s", [
        (quantile(0.99, names.EVENT_LOOP_LAG, "instance"), "{{instance}}"),
    ], width=8),
    row(QUALITY_ROW),
    Panel("Accuracy by backend (ground-truth feedback)", "percentunit", [
        (ratio(rate(names.FEEDBACK_CORRECT, by="backend"), rate(names.FEEDBACK, by="backend")),
         "{{backend}}"),
    ]),
    Panel("Accuracy drop by true class (teacher - student, live labels)", "percentunit", [
        ("(" + ratio(rate(names.FEEDBACK_CORRECT, TEACHER, "class"),
                     rate(names.FEEDBACK, TEACHER, "class"))
         + ") - (" + ratio(rate(names.FEEDBACK_CORRECT, STUDENT, "class"),
                           rate(names.FEEDBACK, STUDENT, "class"))
         + ")", "class {{class}}"),
    ]),
    Panel("Cost per 1,000 requests by backend", "currencyUSD", [
        ("1000 * " + ratio(rate(names.COST, by="backend"),
                           rate(names.REQUESTS, SERVED, "backend")), "{{backend}}"),
    ]),
    Panel("CPU per request by backend (in-process backends)", "s", [
        (ratio(rate(names.CPU, f'path="{names.LIVE}"', "backend"),
               rate(names.REQUESTS, SERVED, "backend")), "{{backend}}"),
    ]),
    Panel("Memory each backend's model holds (in process)", "bytes", [
        (gauge(names.BACKEND_MEMORY, by="backend"), "{{backend}}"),
    ], width=8),
    # A process's memory and files are its models' together: shown for the gateways serving it.
    Panel("Resident memory of the gateways serving this model", "bytes", [
        (process_of_model("process_resident_memory_bytes"), "{{instance}}"),
    ], width=8),
    Panel("Open file descriptors of the gateways serving this model", "none", [
        (process_of_model("process_open_fds"), "{{instance}}"),
    ], width=8),
    Panel("Projected monthly saving with all current traffic on the student", "currencyUSD", [
        (f"({cost_per_request(names.TEACHER, '1d')} - {cost_per_request(names.STUDENT, '1d')})"
         f" * {rate(names.REQUESTS, SERVED)} * {SECONDS_PER_MONTH}", "saving"),
    ], "stat"),
    # Per task (gateway/tasks.py): each panel has data only for a model of its task.
    row(TASK_ROW),
    Panel("Regression: mean error, student vs teacher (shadow) and against labels", "none", [
        (mean(names.SHADOW_ABS_ERROR), "|student - teacher|"),
        (mean(names.SHADOW_RELATIVE_ERROR), "relative to the teacher"),
        (mean(names.FEEDBACK_ABS_ERROR, by="backend"), "|{{backend}} - label|"),
    ], width=8),
    Panel("Embedding: mean cosine similarity, student vs teacher (shadow)", "none", [
        ("1 - " + mean(names.SHADOW_COSINE_DISTANCE), "cosine"),
    ], width=8),
    Panel("Multilabel: Hamming agreement (shadow) and accuracy by backend (labels)",
          "percentunit", [
        ("1 - " + mean(names.SHADOW_HAMMING_LOSS), "agreement"),
        ("1 - " + mean(names.FEEDBACK_HAMMING_LOSS, by="backend"), "accuracy {{backend}}"),
    ], width=8),
    # The cascade (traffic.mode: cascade, gateway/cascade.py): data only for a model in that mode.
    row(CASCADE_ROW),
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
        (gauge(names.CASCADE_THRESHOLD), "threshold"),
        (gauge(names.CASCADE_DISAGREEMENT_BOUND), "disagreement bound"),
        (f"{gauge(names.CASCADE_THRESHOLD_SOURCE, by='source')} == 1", "source: {{source}}"),
    ]),
    Panel("Cascade: dollars per 1,000 requests, against the teacher alone", "currencyUSD", [
        (f"1000 * {rate(names.COST)} / {rate(names.REQUESTS, SERVED)}", "cascade"),
        (f"1000 * {rate(names.COST, TEACHER)} / "
         f"{rate(names.BACKEND_DURATION + '_count', TEACHER_LIVE)}",
         "teacher only"),
    ]),
    # Drift (issue 31, gateway/drift.py): the student's predictions against the last day, from
    # the recording rules the DistillStudentDrift alert reads; the watch judges inputs too.
    row(DRIFT_ROW),
    Panel("Drift: PSI of the student's predicted classes, last hour against the last day", "none", [
        (gauge(DRIFT_PSI, by="output, block"), "{{output}} {{block}}"),
    ], width=8),
    Panel("Drift: the student's predicted-class shares over the last hour", "percentunit", [
        (gauge(DRIFT_SHARE, by="bin"), "class {{bin}}"),
    ], width=8),
    Panel("Drift: rows summarised per second (every answer's inputs, the student's answers)",
          "none", [
        (rate(names.DRIFT_ROWS), "inputs"),
        (rate(names.DRIFT_STUDENT_ROWS), "student answers"),
    ], width=8),
    # The gates' row. A value is never shown without its interval and verdict: it may be far
    # from passing. The second panel puts every gate on one scale: its threshold is 1.
    row(GATES_ROW),
    Panel("Canary gates: value, interval and threshold", "none", [
        (gauge(gm.GATE_VALUE, by=f"gate, {gm.BOUND_LABEL}"), "{{gate}} {{bound}}"),
        (gauge(gm.GATE_THRESHOLD, by="gate"), "{{gate}} threshold"),
    ]),
    Panel("Canary gates against their thresholds (1 = the threshold)", "none", [
        (f"{gauge(gm.GATE_VALUE, by=f'gate, {gm.BOUND_LABEL}')} / on (gate) group_left "
         f"{gauge(gm.GATE_THRESHOLD, by='gate')}", "{{gate}} {{bound}}"),
    ]),
    Panel("Canary gate verdicts: 1 pass, 0 inconclusive, -1 fail", "none", [
        (gauge(gm.GATE_VERDICT, by="gate"), "{{gate}}"),
        (gauge(gm.GATE_DRY_RUN, by="gate"), "{{gate}} dry run (1: never decides)"),
    ]),
    Panel("Canary step: bake elapsed, failures in a row, share drifts", "none", [
        (gauge(CANARY_BAKE), "bake elapsed (s)"),
        (gauge(CANARY_FAILURES), "failed analyses in a row"),
        (f"sum(increase({CANARY_SHARE_DRIFTS}{{{M}}}[5m]))", "share drifts (5m)"),
    ]),
    Panel("Seconds since the controller's last heartbeat", "s", [
        (f"time() - {gauge(CANARY_HEARTBEAT)}", "heartbeat age"),
    ], "stat", 6),
    # Which student the gateways serve, by model registry id (two ids: a swap in progress).
    Panel("Student served (registry id)", "none", [
        (f"{gauge(names.STUDENT_INFO, by='student_id')} == 1", "{{student_id}}"),
    ], "stat", 6, shows_name=True),
]  # fmt: skip

# Not inside a row: over every chosen model at once, each marker naming its model.
ANNOTATIONS = [
    ("Rollbacks", "red",
     f"sum by ({names.MODEL}, reason) (increase({CANARY_ROLLBACKS}{{{CHOSEN}}}[1m])) > 0",
     "{{model}} rolled back: {{reason}}"),
    ("Promotions", "green",
     f"sum by ({names.MODEL}) (increase({CANARY_PROMOTIONS}{{{CHOSEN}}}[1m])) > 0",
     "{{model}} promoted"),
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
        # Grafana repeats the row, and the panels up to the next row, once per chosen model.
        result.update(collapsed=False, panels=[], repeat=VARIABLE)
    if spec.kind == "stat":
        text_mode = "name" if spec.shows_name else "value"
        result["options"] = {"reduceOptions": {"calcs": ["lastNotNull"]}, "textMode": text_mode}
    return result


MODELS_QUERY = f"label_values({names.REQUESTS}, {names.MODEL})"
"""The ``model`` variable's values: every model a scraped gateway has answered for."""


def dashboard() -> dict[str, Any]:
    panels, x, y, row_height = [], 0, 0, 0
    for index, spec in enumerate(PANELS):
        width = spec.width
        if x + width > 24 or spec.kind == "row":
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
                    "name": VARIABLE,
                    "type": "query",
                    "datasource": DS,
                    "label": "model",
                    "query": {"query": MODELS_QUERY, "refId": VARIABLE},
                    "definition": MODELS_QUERY,
                    "refresh": 2,  # on a time range change: a model that starts serving shows
                    "multi": True,
                    "includeAll": True,
                    "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
                    "sort": 1,
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
                    "tagKeys": names.MODEL,
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

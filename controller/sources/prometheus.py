"""PromQL against a Prometheus HTTP API: ``increase()`` over the window, summed over replicas.

The queries are the ones the README lists and the Grafana panels use (with a fixed range there).
"""

from __future__ import annotations

import math
import re
import time
from typing import Any

import httpx

from controller.promtext import Snapshot
from controller.sources.base import Mark, MetricsSource, MetricsUnavailable
from gateway import metric_names as names

# Every counter the analysis reads; histograms by their _bucket, _sum and _count series.
COUNTERS = (
    names.REQUESTS,
    f"{names.BACKEND_DURATION}_bucket",
    names.FEEDBACK,
    names.FEEDBACK_CORRECT,
    names.FEEDBACK_PAIRED,
    names.COST,
    names.CPU,
    names.SHADOW_COMPARISONS,
    names.SHADOW_AGREEMENTS,
    f"{names.SHADOW_KL}_bucket",
    f"{names.SHADOW_KL}_sum",
    f"{names.SHADOW_KL}_count",
    names.FALLBACKS,
    *(f"{histogram}_{part}"
      for histogram in (names.SHADOW_ABS_ERROR, names.SHADOW_RELATIVE_ERROR,
                        names.SHADOW_COSINE_DISTANCE, names.SHADOW_HAMMING_LOSS,
                        names.FEEDBACK_ABS_ERROR, names.FEEDBACK_RELATIVE_ERROR,
                        names.FEEDBACK_HAMMING_LOSS)
      for part in ("bucket", "sum", "count")),  # the task's comparisons (gateway.tasks)
    # the post-promotion watch's drift summaries (gateway.drift, controller.drift.DriftCounts)
    names.DRIFT_ROWS,
    names.DRIFT_STUDENT_ROWS,
    names.DRIFT_INPUT_VALUES,
    names.DRIFT_SEQUENCE_LENGTH,
    names.DRIFT_TOKEN_IDS,
    names.DRIFT_PREDICTIONS,
    names.DRIFT_CONFIDENCE,
    names.DRIFT_CONFIDENCE_SUM,
)  # fmt: skip
GROUP_BY = "model, backend, code, le, from_backend, path, outcome, class, input, output, block, bin"
# Extra label matchers, e.g. namespace="ml",job="distill-gateway": one Prometheus often scrapes
# several namespaces and copies of the gateway, and a rollout must read its own fleet only.
_MATCHER = r'\s*[A-Za-z_][A-Za-z0-9_]*\s*(=|!=|=~|!~)\s*"(?:[^"\\]|\\.)*"\s*'
SELECTOR = re.compile(rf"^(?:{_MATCHER}(?:,{_MATCHER})*)?$")


class BadSelector(ValueError):
    """The extra label matchers are not PromQL matchers."""


def label_value(value: str) -> str:
    """A PromQL string literal: a model name with a quote or backslash cannot break the query."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def window_query(counter: str, model: str, seconds: int, selector: str = "") -> str:
    matchers = f"model={label_value(model)}" + (f",{selector.strip()}" if selector.strip() else "")
    return f"sum by ({GROUP_BY}) (increase({counter}{{{matchers}}}[{seconds}s]))"


class PrometheusSource(MetricsSource):
    def __init__(
        self, prometheus_url: str, model: str, client: httpx.Client, selector: str = ""
    ) -> None:
        if not SELECTOR.match(selector):
            raise BadSelector(
                f"--prometheus-selector {selector!r} is not a list of label matchers like "
                'namespace="ml",job="distill-gateway"'
            )
        self._url = prometheus_url.rstrip("/")
        self._model = model
        self._client = client
        self._selector = selector

    def mark(self) -> Mark:
        return Mark(at=time.time())

    def increase_since(self, mark: Mark) -> Snapshot:
        seconds = max(1, math.ceil(time.time() - mark.at))
        snapshot: Snapshot = {}
        for counter in COUNTERS:
            query = window_query(counter, self._model, seconds, self._selector)
            for series in self._query(query):
                labels = tuple(sorted(series["metric"].items()))
                snapshot[(counter, labels)] = float(series["value"][1])
        return snapshot

    def _query(self, promql: str) -> list[dict[str, Any]]:
        try:
            response = self._client.get(f"{self._url}/api/v1/query", params={"query": promql})
            response.raise_for_status()
            body = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise MetricsUnavailable(f"Prometheus at {self._url}: {exc}") from exc
        if body.get("status") != "success":
            raise MetricsUnavailable(f"Prometheus rejected {promql!r}: {body.get('error')}")
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

"""PromQL against a Prometheus HTTP API: ``increase()`` over the window, summed over replicas.

The queries are the ones the README lists and the Grafana panels use (with a fixed range there).
"""

from __future__ import annotations

import math
import time
from typing import Any

import httpx

from controller.promtext import Snapshot
from controller.sources.base import Mark, MetricsSource, MetricsUnavailable

# Every counter the analysis reads; histograms by their _bucket, _sum and _count series.
COUNTERS = (
    "gateway_requests_total",
    "gateway_backend_duration_seconds_bucket",
    "gateway_feedback_total",
    "gateway_feedback_correct_total",
    "gateway_inference_cost_dollars_total",
    "gateway_shadow_comparisons_total",
    "gateway_shadow_agreements_total",
    "gateway_shadow_kl_divergence_bucket",
    "gateway_shadow_kl_divergence_sum",
    "gateway_shadow_kl_divergence_count",
    "gateway_fallbacks_total",
)
GROUP_BY = "model, backend, code, le, from_backend"


def window_query(counter: str, model: str, seconds: int) -> str:
    return f'sum by ({GROUP_BY}) (increase({counter}{{model="{model}"}}[{seconds}s]))'


class PrometheusSource(MetricsSource):
    def __init__(self, prometheus_url: str, model: str, client: httpx.Client) -> None:
        self._url = prometheus_url.rstrip("/")
        self._model = model
        self._client = client

    def mark(self) -> Mark:
        return Mark(at=time.time())

    def increase_since(self, mark: Mark) -> Snapshot:
        seconds = max(1, math.ceil(time.time() - mark.at))
        snapshot: Snapshot = {}
        for counter in COUNTERS:
            for series in self._query(window_query(counter, self._model, seconds)):
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

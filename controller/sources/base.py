"""The metrics-source interface, and the one place that turns counter increases into the
analysis's ``WindowMetrics`` (so both sources are judged identically)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

from controller.analysis import BackendWindow, WindowMetrics
from controller.promtext import Snapshot, buckets, select, select_codes


class MetricsUnavailable(Exception):
    """A source could not be read (a gateway or Prometheus did not answer)."""


@dataclass
class Mark:
    """The start of a window: a time, and for the scrape source the counters at that time.

    Persisted with the rollout's state, so a restarted controller keeps its windows.
    """

    at: float
    counters: dict[str, Snapshot] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "counters": {
                url: [
                    [name, [list(pair) for pair in labels], value]
                    for (name, labels), value in snapshot.items()
                ]
                for url, snapshot in self.counters.items()
            },
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Mark:
        counters = {
            url: {(name, tuple(tuple(pair) for pair in labels)): value
                  for name, labels, value in rows}
            for url, rows in data.get("counters", {}).items()
        }  # fmt: skip
        return cls(at=float(data["at"]), counters=counters)


class MetricsSource(ABC):
    @abstractmethod
    def mark(self) -> Mark:
        """Remember now as the start of a window."""

    @abstractmethod
    def increase_since(self, mark: Mark) -> Snapshot:
        """Counter increases (summed over gateways) from ``mark`` to now."""

    def window_since(self, mark: Mark, model: str) -> WindowMetrics:
        return window_metrics(self.increase_since(mark), model)


def window_metrics(increase: Snapshot, model: str) -> WindowMetrics:
    def backend(name: str) -> BackendWindow:
        labels = {"model": model, "backend": name}
        # A request that fell back from this backend failed here, though a client never saw it.
        fell_back = select(increase, "gateway_fallbacks_total", model=model, from_backend=name)
        requests = select(increase, "gateway_requests_total", **labels)
        # A client's bad request (4xx) is not the backend's failure: only 5xx count.
        failed = select_codes(increase, "gateway_requests_total", "5", **labels)
        return BackendWindow(
            requests=requests + fell_back,
            errors=failed + fell_back,
            latency=buckets(increase, "gateway_backend_duration_seconds", **labels),
            feedback_total=select(increase, "gateway_feedback_total", **labels),
            feedback_correct=select(increase, "gateway_feedback_correct_total", **labels),
            cost_dollars=select(increase, "gateway_inference_cost_dollars_total", **labels),
        )

    return WindowMetrics(
        teacher=backend("teacher"),
        student=backend("student"),
        comparisons=select(increase, "gateway_shadow_comparisons_total", model=model),
        agreements=select(increase, "gateway_shadow_agreements_total", model=model),
        kl_sum=select(increase, "gateway_shadow_kl_divergence_sum", model=model),
        kl_count=select(increase, "gateway_shadow_kl_divergence_count", model=model),
        kl_buckets=buckets(increase, "gateway_shadow_kl_divergence", model=model),
    )

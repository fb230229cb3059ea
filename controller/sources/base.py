"""The metrics-source interface, and the one place that turns counter increases into the
analysis's ``WindowMetrics`` (so both sources are judged identically)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

from controller.analysis import BackendWindow, PairedLabels, WindowMetrics
from controller.promtext import Snapshot, buckets, select, select_codes
from gateway import metric_names as names


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
        fell_back = select(increase, names.FALLBACKS, model=model, from_backend=name)
        requests = select(increase, names.REQUESTS, **labels)
        # A client's bad request (4xx) is not the backend's failure: only 5xx count.
        failed = select_codes(increase, names.REQUESTS, "5", **labels)
        return BackendWindow(
            requests=requests + fell_back,
            errors=failed + fell_back,
            latency=buckets(increase, names.BACKEND_DURATION, **labels),
            feedback_total=select(increase, names.FEEDBACK, **labels),
            feedback_correct=select(increase, names.FEEDBACK_CORRECT, **labels),
            cost_dollars=select(increase, names.COST, **labels),
            cpu_seconds=select(increase, names.CPU, path="live", **labels),
        )

    def paired(outcome: str) -> float:
        return select(increase, names.FEEDBACK_PAIRED, model=model, outcome=outcome)

    return WindowMetrics(
        teacher=backend("teacher"),
        student=backend("student"),
        paired=PairedLabels(*(paired(outcome) for outcome in names.PAIRED_OUTCOMES)),
        comparisons=select(increase, names.SHADOW_COMPARISONS, model=model),
        agreements=select(increase, names.SHADOW_AGREEMENTS, model=model),
        kl_sum=select(increase, f"{names.SHADOW_KL}_sum", model=model),
        kl_count=select(increase, f"{names.SHADOW_KL}_count", model=model),
        kl_buckets=buckets(increase, names.SHADOW_KL, model=model),
    )

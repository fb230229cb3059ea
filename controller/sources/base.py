"""The metrics-source interface, and the one place that turns counter increases into the
analysis's ``WindowMetrics`` (so both sources are judged identically)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

from controller import error_rate
from controller.analysis import BackendWindow, Mean, TaskWindow, WindowMetrics
from controller.cascade_window import cascade_window
from controller.labels import Labels, PairedLabels
from controller.promtext import Snapshot, buckets, select
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
        return BackendWindow(
            # the error rate's one definition, shared with the rule, the alert and the dashboard
            requests=error_rate.count(error_rate.ROUTED, increase, model, name),
            errors=error_rate.count(error_rate.FAILED, increase, model, name),
            latency=buckets(increase, names.BACKEND_DURATION, **labels),
            feedback_total=select(increase, names.FEEDBACK, **labels),
            feedback_correct=select(increase, names.FEEDBACK_CORRECT, **labels),
            cost_dollars=select(increase, names.COST, **labels),
            cpu_seconds=select(increase, names.CPU, path="live", **labels),
            feedback_by_class={
                c: Labels(select(increase, names.FEEDBACK, **labels, **{"class": c}),
                          select(increase, names.FEEDBACK_CORRECT, **labels, **{"class": c}))
                for c in _classes(increase, names.FEEDBACK, **labels)
            },
        )  # fmt: skip

    def paired(**labels: str) -> PairedLabels:
        return PairedLabels(*(select(increase, names.FEEDBACK_PAIRED, model=model,
                                     outcome=outcome, **labels)
                              for outcome in names.PAIRED_OUTCOMES))  # fmt: skip

    return WindowMetrics(
        teacher=backend("teacher"),
        student=backend("student"),
        paired=paired(),
        paired_by_class={
            c: paired(**{"class": c})
            for c in _classes(increase, names.FEEDBACK_PAIRED, model=model)
        },
        comparisons=select(increase, names.SHADOW_COMPARISONS, model=model),
        agreements=select(increase, names.SHADOW_AGREEMENTS, model=model),
        kl_sum=select(increase, f"{names.SHADOW_KL}_sum", model=model),
        kl_count=select(increase, f"{names.SHADOW_KL}_count", model=model),
        kl_buckets=buckets(increase, names.SHADOW_KL, model=model),
        task=task_window(increase, model),
        cascade=cascade_window(increase, model),
    )


def task_window(increase: Snapshot, model: str) -> TaskWindow:
    """The task's comparison histograms (``gateway.tasks``); empty where the task has none."""

    def mean(name: str, **labels: str) -> Mean:
        return Mean(select(increase, f"{name}_sum", model=model, **labels),
                    select(increase, f"{name}_count", model=model, **labels),
                    buckets(increase, name, model=model, **labels))  # fmt: skip

    roles = ("teacher", "student")
    return TaskWindow(
        abs_error=mean(names.SHADOW_ABS_ERROR),
        relative_error=mean(names.SHADOW_RELATIVE_ERROR),
        cosine_distance=mean(names.SHADOW_COSINE_DISTANCE),
        hamming_loss=mean(names.SHADOW_HAMMING_LOSS),
        label_abs_error={role: mean(names.FEEDBACK_ABS_ERROR, backend=role) for role in roles},
        label_relative_error={
            role: mean(names.FEEDBACK_RELATIVE_ERROR, backend=role) for role in roles
        },
        label_hamming_loss={
            role: mean(names.FEEDBACK_HAMMING_LOSS, backend=role) for role in roles
        },
    )


def _classes(increase: Snapshot, name: str, **labels: str) -> list[str]:
    """The true classes that have labels in the window, in ``name``'s series."""
    wanted = labels.items()
    found = set()
    for (sample, pairs), value in increase.items():
        series = dict(pairs)
        if sample == name and "class" in series and value > 0 and wanted <= series.items():
            found.add(series["class"])
    return sorted(found)

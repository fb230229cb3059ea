"""One family per metric name and registry, however many models make it.

A gateway serving several models builds one set of metrics objects per model (``GatewayMetrics``,
``TaskMetrics``, the cascade's), each bound to its own ``model`` label. prometheus-client refuses
a second family of the same name in a registry, and a text exposition with two ``# TYPE`` lines
for one name is refused by Prometheus: so families are made here, once per registry, and
read-at-scrape-time collectors are gathered into one collector whose families are merged by name.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import Metric
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.registry import Collector

_Family = TypeVar("_Family", bound=MetricWrapperBase)
_FAMILIES: weakref.WeakKeyDictionary[CollectorRegistry, dict[str, MetricWrapperBase]] = (
    weakref.WeakKeyDictionary()
)
_COLLECTORS: weakref.WeakKeyDictionary[CollectorRegistry, MergedCollector] = (
    weakref.WeakKeyDictionary()
)


def _family(
    kind: type[_Family], name: str, documentation: str, labelnames: list[str],
    registry: CollectorRegistry, **kwargs: Any,
) -> _Family:  # fmt: skip
    families = _FAMILIES.setdefault(registry, {})
    found = families.get(name)
    if found is None:
        found = families[name] = kind(name, documentation, labelnames, registry=registry, **kwargs)
    if not isinstance(found, kind) or list(found._labelnames) != list(labelnames):
        raise ValueError(f"metric {name} is made twice with different kinds or labels")
    return found


def shared_counter(
    name: str, documentation: str, labelnames: list[str], *, registry: CollectorRegistry,
    **kwargs: Any,
) -> Counter:  # fmt: skip
    return _family(Counter, name, documentation, labelnames, registry, **kwargs)


def shared_gauge(
    name: str, documentation: str, labelnames: list[str], *, registry: CollectorRegistry,
    **kwargs: Any,
) -> Gauge:  # fmt: skip
    return _family(Gauge, name, documentation, labelnames, registry, **kwargs)


def shared_histogram(
    name: str, documentation: str, labelnames: list[str], *, registry: CollectorRegistry,
    **kwargs: Any,
) -> Histogram:  # fmt: skip
    return _family(Histogram, name, documentation, labelnames, registry, **kwargs)


class MergedCollector(Collector):
    """Every model's read-at-scrape-time collector, exposed as one family per name."""

    def __init__(self) -> None:
        self._collectors: list[Collector] = []

    def add(self, collector: Collector) -> None:
        self._collectors.append(collector)

    def collect(self) -> Iterator[Metric]:
        merged: dict[str, Metric] = {}
        for collector in self._collectors:
            for family in collector.collect():
                into = merged.get(family.name)
                if into is None:
                    merged[family.name] = family
                else:
                    into.samples.extend(family.samples)
        return iter(merged.values())


def register_collector(registry: CollectorRegistry, collector: Collector) -> None:
    merged = _COLLECTORS.get(registry)
    if merged is None:
        merged = _COLLECTORS[registry] = MergedCollector()
        registry.register(merged)
    merged.add(collector)

"""Prometheus text exposition, read into plain numbers: summed across gateways, differenced across
time, and histogram quantiles computed the way PromQL's ``histogram_quantile`` does.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping

from prometheus_client.parser import text_string_to_metric_families

# (sample name, sorted label pairs) -> value
SeriesKey = tuple[str, tuple[tuple[str, str], ...]]
Snapshot = dict[SeriesKey, float]


def parse(text: str, keep: tuple[str, ...] = ("gateway_",)) -> Snapshot:
    snapshot: Snapshot = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith(keep):
                key = (sample.name, tuple(sorted(sample.labels.items())))
                snapshot[key] = float(sample.value)
    return snapshot


def combine(snapshots: Iterable[Snapshot]) -> Snapshot:
    """Sums the same series over several gateways (replicas of one logical model)."""
    total: dict[SeriesKey, float] = defaultdict(float)
    for snapshot in snapshots:
        for key, value in snapshot.items():
            total[key] += value
    return dict(total)


def increase(after: Snapshot, before: Snapshot) -> Snapshot:
    """Counter increase between two snapshots; a value that went down means the counter reset
    (a gateway restarted), and then its whole new value is the increase, as in PromQL."""
    result: Snapshot = {}
    for key, value in after.items():
        previous = before.get(key, 0.0)
        result[key] = value - previous if value >= previous else value
    return result


def select(snapshot: Snapshot, name: str, **labels: str) -> float:
    """Sum of every series of ``name`` whose labels include ``labels``."""
    wanted = labels.items()
    return sum(
        value
        for (sample, pairs), value in snapshot.items()
        if sample == name and wanted <= dict(pairs).items()
    )


def select_codes(snapshot: Snapshot, name: str, code_class: str, **labels: str) -> float:
    """Like ``select``, for the series whose ``code`` starts with ``code_class`` ("5": 5xx)."""
    wanted = labels.items()
    return sum(
        value
        for (sample, pairs), value in snapshot.items()
        if sample == name
        and wanted <= dict(pairs).items()
        and dict(pairs).get("code", "").startswith(code_class)
    )


def buckets(snapshot: Snapshot, histogram: str, **labels: str) -> list[tuple[float, float]]:
    """Cumulative (upper bound, count) pairs of a histogram, summed over other labels."""
    by_bound: dict[float, float] = defaultdict(float)
    wanted = labels.items()
    for (sample, pairs), value in snapshot.items():
        if sample != f"{histogram}_bucket":
            continue
        label_map = dict(pairs)
        if wanted <= label_map.items():
            by_bound[float(label_map["le"])] += value
    return sorted(by_bound.items())


def histogram_quantile(
    quantile: float, cumulative: Mapping[float, float] | list[tuple[float, float]]
) -> float:
    """Linear interpolation inside the bucket holding the quantile, as PromQL does; NaN when empty.

    A quantile in the +Inf bucket returns the highest finite bound.
    """
    pairs = sorted(cumulative.items()) if isinstance(cumulative, Mapping) else list(cumulative)
    if not pairs or pairs[-1][1] <= 0:
        return math.nan
    total = pairs[-1][1]
    rank = quantile * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in pairs:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (
                count - lower_count
            )
        lower_bound, lower_count = bound, count
    return pairs[-1][0]

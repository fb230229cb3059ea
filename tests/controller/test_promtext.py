"""Reading Prometheus text: sums over gateways, counter resets, PromQL-style quantiles."""

from __future__ import annotations

import math

import pytest

from controller import promtext

TEXT = """\
# TYPE gateway_requests_total counter
gateway_requests_total{model="digits",backend="teacher",code="200"} 90
gateway_requests_total{model="digits",backend="student",code="200"} 10
gateway_requests_total{model="digits",backend="student",code="500"} 2
# TYPE gateway_request_duration_seconds histogram
gateway_request_duration_seconds_bucket{model="digits",backend="student",le="0.001"} 4
gateway_request_duration_seconds_bucket{model="digits",backend="student",le="0.002"} 8
gateway_request_duration_seconds_bucket{model="digits",backend="student",le="+Inf"} 10
gateway_request_duration_seconds_sum{model="digits",backend="student"} 0.015
gateway_request_duration_seconds_count{model="digits",backend="student"} 10
# TYPE other_total counter
other_total 5
"""


def test_parse_select_and_buckets() -> None:
    snapshot = promtext.parse(TEXT)
    assert promtext.select(snapshot, "gateway_requests_total", backend="student") == 12
    assert promtext.select(snapshot, "gateway_requests_total", code="200") == 100
    assert promtext.select(snapshot, "other_total") == 0  # not a gateway metric: not kept
    assert promtext.buckets(snapshot, "gateway_request_duration_seconds", backend="student") == [
        (0.001, 4.0), (0.002, 8.0), (math.inf, 10.0),
    ]  # fmt: skip


def test_combine_sums_replicas_and_increase_handles_resets() -> None:
    one = promtext.parse(TEXT)
    both = promtext.combine([one, one])
    assert promtext.select(both, "gateway_requests_total") == 204
    later = {key: value + 5 for key, value in one.items()}
    assert promtext.select(promtext.increase(later, one), "gateway_requests_total") == 15
    restarted = {key: 1.0 for key in one}  # the gateway restarted: counters started again
    assert promtext.select(promtext.increase(restarted, one), "gateway_requests_total") == 3


@pytest.mark.parametrize(
    ("quantile", "expected"),
    [(0.2, 0.0005), (0.4, 0.001), (0.6, 0.0015), (0.8, 0.002), (0.99, 0.002)],
)
def test_histogram_quantile_interpolates_like_promql(quantile: float, expected: float) -> None:
    cumulative = [(0.001, 4.0), (0.002, 8.0), (math.inf, 10.0)]
    assert promtext.histogram_quantile(quantile, cumulative) == pytest.approx(expected)


def test_histogram_quantile_of_nothing_is_nan() -> None:
    assert math.isnan(promtext.histogram_quantile(0.5, []))
    assert math.isnan(promtext.histogram_quantile(0.5, [(1.0, 0.0), (math.inf, 0.0)]))


def test_a_clients_4xx_is_not_the_students_error() -> None:
    from controller.sources.base import window_metrics

    def series(code: str, value: float) -> tuple[promtext.SeriesKey, float]:
        labels = (("backend", "student"), ("code", code), ("model", "digits"))
        return ("gateway_requests_total", labels), value

    fallback = ("gateway_fallbacks_total", (("from_backend", "student"), ("model", "digits")))
    increase = dict([series("200", 80), series("400", 12), series("503", 5), (fallback, 3)])
    student = window_metrics(increase, "digits").student
    assert student.requests == 80 + 12 + 5 + 3
    assert student.errors == 5 + 3  # the 503s and the fallbacks; not the 400s

"""Every metric the README promises, with values that match the traffic that was sent."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from gateway.metrics import LATENCY_BUCKETS
from models import STUDENT_PATH, TEACHER_PATH
from tests.servers import TestGateway, read_metric

BODY = {"inputs": [{"name": "pixels", "shape": [1, 64], "datatype": "FP32", "data": [1.0] * 64}]}
COST = {"teacher": 3.6, "student": 0.36}  # dollars per hour, so 0.001 and 0.0001 $ per second

PROMISED = [
    "gateway_requests_total",
    "gateway_request_duration_seconds_bucket",
    "gateway_backend_duration_seconds_bucket",
    "gateway_traffic_share",
    "gateway_traffic_generation",
    "gateway_shadow_comparisons_total",
    "gateway_shadow_agreements_total",
    "gateway_shadow_dropped_total",
    "gateway_shadow_kl_divergence_bucket",
    "gateway_feedback_total",
    "gateway_feedback_correct_total",
    "gateway_inference_cost_dollars_total",
]


@pytest.fixture(scope="module")
def measured(start_gateway: Callable[..., TestGateway]) -> tuple[TestGateway, str]:
    """A gateway that served exactly: 40 teacher, 25 student, 3 refused, 10 labelled."""
    gateway = start_gateway(
        {
            "shadow": {"sample_rate": 0.0},
            "teacher": {"path": str(TEACHER_PATH), "cost_per_hour": COST["teacher"]},
            "student": {"path": str(STUDENT_PATH), "cost_per_hour": COST["student"]},
        }
    )
    gateway.set_share(0.25)
    with httpx.Client(base_url=gateway.url) as client:
        ids = []
        for backend, count in (("teacher", 40), ("student", 25)):
            for _ in range(count):
                r = client.post("/v2/models/digits/infer", json=BODY, headers={"x-canary": backend})
                ids.append(r.headers["x-request-id"])
        for _ in range(3):
            client.post("/v2/models/digits/infer", content=b"{")
        for request_id in ids[:10]:
            client.post("/v2/models/digits/feedback", json={"id": request_id, "label": 0})
    return gateway, gateway.metrics_text()


def test_every_promised_metric_is_exported(measured: tuple[TestGateway, str]) -> None:
    _, text = measured
    for name in PROMISED:
        assert f"\n{name}{{" in text, f"{name} missing"


def test_request_counts_and_histograms_match_the_traffic(
    measured: tuple[TestGateway, str],
) -> None:
    _, text = measured
    for backend, count in (("teacher", 40), ("student", 25)):
        assert read_metric(text, "gateway_requests_total", backend=backend, code="200") == count
        assert read_metric(text, "gateway_request_duration_seconds_count", backend=backend) == count
        assert (
            read_metric(
                text, "gateway_backend_duration_seconds_count", backend=backend, path="live"
            )
            == count
        )
        assert (
            read_metric(
                text, "gateway_backend_duration_seconds_count", backend=backend, path="shadow"
            )
            == 0
        )
    assert read_metric(text, "gateway_requests_total", backend="none", code="400") == 3


def test_time_in_gateway_covers_time_in_backend(measured: tuple[TestGateway, str]) -> None:
    _, text = measured
    for backend in ("teacher", "student"):
        in_gateway = read_metric(text, "gateway_request_duration_seconds_sum", backend=backend)
        in_backend = read_metric(
            text, "gateway_backend_duration_seconds_sum", backend=backend, path="live"
        )
        assert 0 < in_backend <= in_gateway


def test_latency_buckets_span_a_quarter_millisecond_to_ten_seconds(
    measured: tuple[TestGateway, str],
) -> None:
    _, text = measured
    assert LATENCY_BUCKETS[0] == 0.00025 and LATENCY_BUCKETS[-1] == 10.0
    for bound in ("0.00025", "0.001", "0.01", "10.0", "+Inf"):
        assert f'le="{bound}"' in text


def test_share_gauges_and_generation(measured: tuple[TestGateway, str]) -> None:
    _, text = measured
    assert read_metric(text, "gateway_traffic_share", backend="student") == 0.25
    assert read_metric(text, "gateway_traffic_share", backend="teacher") == 0.75
    assert read_metric(text, "gateway_traffic_generation") == 1


def test_cost_is_backend_seconds_times_the_hourly_price(
    measured: tuple[TestGateway, str],
) -> None:
    _, text = measured
    for backend, per_hour in COST.items():
        seconds = read_metric(
            text, "gateway_backend_duration_seconds_sum", backend=backend, path="live"
        )
        cost = read_metric(text, "gateway_inference_cost_dollars_total", backend=backend)
        assert cost == pytest.approx(seconds * per_hour / 3600, rel=1e-9)
        assert cost > 0


def test_feedback_counters(measured: tuple[TestGateway, str]) -> None:
    _, text = measured
    assert read_metric(text, "gateway_feedback_total", backend="teacher") == 10
    assert read_metric(text, "gateway_feedback_total", backend="student") == 0
    correct = read_metric(text, "gateway_feedback_correct_total", backend="teacher")
    assert correct in (0, 10)  # the same input ten times: all right or all wrong


def test_no_shadow_metrics_without_sampling(measured: tuple[TestGateway, str]) -> None:
    _, text = measured
    assert read_metric(text, "gateway_shadow_comparisons_total") == 0
    assert read_metric(text, "gateway_shadow_dropped_total") == 0

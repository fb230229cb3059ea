"""Every metric the README promises, with values that match the traffic that was sent."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest

from gateway.metrics import LATENCY_BUCKETS
from models import STUDENT_PATH, TEACHER_PATH
from tests.servers import LABELLER, TestGateway, free_port, read_metric, read_total, wait_until

BODY = {"inputs": [{"name": "pixels", "shape": [1, 64], "datatype": "FP32", "data": [1.0] * 64}]}
COST = {"teacher": 3.6, "student": 0.36}  # dollars per hour, so 0.001 and 0.0001 $ per second
LABEL = 0


def promised_metrics() -> list[str]:
    """Every metric in docs/metrics.md's table of gateway metrics (histograms by their _bucket)."""
    readme = (Path(__file__).resolve().parents[1] / "docs" / "metrics.md").read_text()
    rows = re.findall(r"^\| `(gateway_[a-z_]+)` \| (counter|gauge|histogram) \|", readme, re.M)
    assert len(rows) >= 17, "docs/metrics.md's metrics table moved or shrank"
    return [f"{name}_bucket" if kind == "histogram" else name for name, kind in rows]


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
            client.post("/v2/models/digits/feedback", json={"id": request_id, "label": LABEL},
                        headers=LABELLER)  # fmt: skip
    return gateway, gateway.metrics_text()


EXPORTED_ELSEWHERE = {
    "gateway_backend_remote_compute_seconds_total": "tests/test_triton.py",
    "gateway_batch_size_bucket": "tests/test_batching.py",
    "gateway_batch_padding_elements_total": "tests/test_signatures_e2e.py",
    "gateway_batch_padded_call_elements_total": "tests/test_signatures_e2e.py",
    "gateway_shadow_batch_size_bucket": "tests/test_shadow.py",
    "gateway_shadow_batch_duration_seconds_bucket": "tests/test_shadow.py",
}
"""Promised metrics that exist only beside a Triton backend or with dynamic batching on, and the
test that checks them."""


@pytest.mark.parametrize("name", promised_metrics())
def test_every_metric_the_readme_promises_is_exported(
    measured: tuple[TestGateway, str], name: str
) -> None:
    _, text = measured
    if name in EXPORTED_ELSEWHERE:
        checked_by = Path(__file__).resolve().parents[1] / EXPORTED_ELSEWHERE[name]
        assert name in checked_by.read_text()
        return
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


def test_feedback_counters(
    measured: tuple[TestGateway, str], teacher_direct: Callable[[np.ndarray], np.ndarray]
) -> None:
    _, text = measured
    assert read_total(text, "gateway_feedback_total", backend="teacher") == 10
    assert (
        read_metric(text, "gateway_feedback_total", backend="teacher", **{"class": str(LABEL)})
        == 10
    )
    assert read_total(text, "gateway_feedback_total", backend="student") == 0
    pixels = np.array(BODY["inputs"][0]["data"], dtype=np.float32)[None]
    right = int(teacher_direct(pixels).argmax()) == LABEL  # the same input, labelled 10 times
    assert read_total(text, "gateway_feedback_correct_total", backend="teacher") == 10 * right


def test_no_shadow_metrics_without_sampling(measured: tuple[TestGateway, str]) -> None:
    _, text = measured
    assert read_metric(text, "gateway_shadow_comparisons_total") == 0
    assert read_metric(text, "gateway_shadow_dropped_total") == 0


def test_cost_counts_live_calls_only_when_shadow_is_on(
    fresh_gateway: Callable[..., TestGateway],
) -> None:
    """The student runs in the shadow of every teacher request, yet costs nothing: shadow calls
    would inflate a backend's cost per request."""
    gateway = fresh_gateway({
        "shadow": {"sample_rate": 1.0},
        "teacher": {"path": str(TEACHER_PATH), "cost_per_hour": COST["teacher"]},
        "student": {"path": str(STUDENT_PATH), "cost_per_hour": COST["student"]},
    })  # fmt: skip
    with httpx.Client(base_url=gateway.url) as client:
        for _ in range(20):
            assert client.post("/v2/models/digits/infer", json=BODY).is_success
    shadow = ("gateway_backend_duration_seconds_count", {"backend": "student", "path": "shadow"})
    wait_until(lambda: gateway.metric(shadow[0], **shadow[1]) == 20, 20, "20 shadow calls")
    assert gateway.metric("gateway_inference_cost_dollars_total", backend="student") == 0
    live = gateway.metric("gateway_backend_duration_seconds_sum", backend="teacher", path="live")
    assert gateway.metric("gateway_inference_cost_dollars_total", backend="teacher") == (
        pytest.approx(live * COST["teacher"] / 3600, rel=1e-9)
    )


def test_failed_shadow_calls_are_counted(
    fresh_gateway: Callable[..., TestGateway],
) -> None:
    """A student on a Triton that is not there: every shadow call to it fails and is counted,
    and the clients, served by the teacher, notice nothing."""
    gateway = fresh_gateway({
        "shadow": {"sample_rate": 1.0},
        "student": {"kind": "triton", "url": f"127.0.0.1:{free_port()}", "model_name": "student",
                    "protocol": "http", "timeout_ms": 200, "ready_poll_seconds": 60},
    })  # fmt: skip
    with httpx.Client(base_url=gateway.url) as client:
        for _ in range(5):
            answer = client.post("/v2/models/digits/infer", json=BODY)
            assert answer.status_code == 200 and answer.headers["x-served-by"] == "teacher"
    errors = ("gateway_shadow_errors_total", {"backend": "student"})
    wait_until(lambda: gateway.metric(errors[0], **errors[1]) == 5, 20, "5 shadow errors")
    assert gateway.metric("gateway_shadow_errors_total", backend="teacher") == 0
    assert gateway.metric("gateway_shadow_comparisons_total") == 0

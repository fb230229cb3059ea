"""Resources from measurement: the standard process collectors, CPU time and memory per backend,
and cost that follows measured CPU, on real gateways with the shipped ONNX pair."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest
from prometheus_client import CollectorRegistry

from controller.exporter import ControllerMetrics
from tests.servers import TestGateway, read_metric

pytestmark = pytest.mark.e2e

BODY = {"inputs": [{"name": "pixels", "shape": [1, 64], "datatype": "FP32", "data": [3.0] * 64}]}
STANDARD = ("process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds",
            "python_gc_collections_total", "python_info")  # fmt: skip


def _send(gateway: TestGateway, backend: str, count: int) -> None:
    with httpx.Client(base_url=gateway.url) as client:
        for _ in range(count):
            answer = client.post("/v2/models/digits/infer", json=BODY,
                                 headers={"x-canary": backend})  # fmt: skip
            assert answer.status_code == 200


def test_the_standard_collectors_are_there_and_move(
    start_gateway: Callable[..., TestGateway],
) -> None:
    gateway = start_gateway({"shadow": {"sample_rate": 0.0}})
    before = gateway.metrics_text()
    for name in STANDARD:
        assert f"\n{name}" in before, name
    _send(gateway, "teacher", 300)
    after = gateway.metrics_text()
    assert read_metric(after, "process_cpu_seconds_total") > read_metric(
        before, "process_cpu_seconds_total"
    )
    registry = CollectorRegistry()
    ControllerMetrics(registry, "digits")
    assert registry.get_sample_value("process_resident_memory_bytes") is not None


def test_cpu_time_per_request_tells_teacher_from_student(
    start_gateway: Callable[..., TestGateway],
) -> None:
    """The shipped teacher is a 4.5 MB MLP, the student a 10 KB one: per request, the teacher's
    measured CPU is several times the student's; and what the backends measured is within what
    the whole process spent."""
    gateway = start_gateway({"shadow": {"sample_rate": 0.0}})
    process_before = gateway.metric("process_cpu_seconds_total")
    requests = 400
    _send(gateway, "teacher", requests)
    _send(gateway, "student", requests)
    text = gateway.metrics_text()
    cpu = {backend: read_metric(text, "gateway_backend_cpu_seconds_total", backend=backend,
                                path="live") for backend in ("teacher", "student")}  # fmt: skip
    assert cpu["student"] > 0
    assert cpu["teacher"] >= 3 * cpu["student"], cpu  # same number of requests each
    spent = read_metric(text, "process_cpu_seconds_total") - process_before
    assert cpu["teacher"] + cpu["student"] <= spent
    memory = {backend: read_metric(text, "gateway_backend_memory_bytes", backend=backend)
              for backend in ("teacher", "student")}  # fmt: skip
    assert memory["teacher"] > memory["student"] >= 0
    assert memory["teacher"] > 4_000_000  # its weights alone are 4.5 MB


def test_cost_can_follow_measured_cpu(start_gateway: Callable[..., TestGateway]) -> None:
    cost = {"model": "cpu_seconds", "price_per_core_hour": 36.0}
    gateway = start_gateway({"shadow": {"sample_rate": 0.0}, "cost": cost})
    _send(gateway, "teacher", 200)
    text = gateway.metrics_text()
    cpu = read_metric(text, "gateway_backend_cpu_seconds_total", backend="teacher", path="live")
    dollars = read_metric(text, "gateway_inference_cost_dollars_total", backend="teacher",
                          basis="cpu_seconds")  # fmt: skip
    assert cpu > 0
    assert dollars == pytest.approx(cpu * 36.0 / 3600, rel=1e-9)
    assert 'basis="wall_seconds"' not in text.split("gateway_inference_cost_dollars_total")[-1]

"""The gateway in front of a real Triton Inference Server, over gRPC and HTTP."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from prometheus_client.parser import text_string_to_metric_families

from gateway.backends.triton_metrics import compute_seconds_in
from models.data import Split
from tests.servers import TestGateway, TritonProcess, free_port, wait_until

Model = Callable[[np.ndarray], np.ndarray]


@pytest.fixture(scope="module")
def triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonProcess]:
    server = TritonProcess(tmp_path_factory.mktemp("triton")).start()
    yield server
    server.stop()


def triton_backend(
    server: TritonProcess, model: str, protocol: str, **extra: Any
) -> dict[str, Any]:
    url = server.grpc_url if protocol == "grpc" else server.http_url
    return {"kind": "triton", "url": url, "model_name": model, "protocol": protocol, **extra}


@pytest.fixture(scope="module", params=["grpc", "http"])
def triton_gateway(
    request: pytest.FixtureRequest, triton: TritonProcess, start_gateway: Callable[..., TestGateway]
) -> TestGateway:
    protocol = request.param
    return start_gateway({
        "shadow": {"sample_rate": 0.0},
        "teacher": triton_backend(triton, "teacher", protocol),
        "student": triton_backend(triton, "student", protocol),
    })  # fmt: skip


@pytest.mark.parametrize("batch", [1, 64, 256])
@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("backend", ["teacher", "student"])
def test_inference_through_triton_equals_direct_onnx_runtime(
    triton_gateway: TestGateway,
    test_split: Split,
    teacher_direct: Model,
    student_direct: Model,
    batch: int,
    binary: bool,
    backend: str,
) -> None:
    client = triton_http.InferenceServerClient(triton_gateway.address)
    x = np.resize(test_split.x, (batch, 64)).astype(np.float32)
    pixels = triton_http.InferInput("pixels", [batch, 64], "FP32")
    pixels.set_data_from_numpy(x, binary_data=binary)
    wanted = [triton_http.InferRequestedOutput("logits", binary_data=binary)]
    result = client.infer("digits", [pixels], outputs=wanted, headers={"x-canary": backend})
    direct = teacher_direct if backend == "teacher" else student_direct
    np.testing.assert_allclose(result.as_numpy("logits"), direct(x), rtol=1e-5, atol=1e-5)


def test_a_mixed_configuration_serves_both(
    triton: TritonProcess,
    start_gateway: Callable[..., TestGateway],
    test_split: Split,
    student_direct: Model,
) -> None:
    grpc_port = free_port()
    gateway = start_gateway({
        "shadow": {"sample_rate": 1.0},
        "student": triton_backend(triton, "student", "grpc"),  # the teacher stays in process
        "grpc": {"port": grpc_port},
    })  # fmt: skip
    client = triton_http.InferenceServerClient(gateway.address)
    x = test_split.x[:8]
    pixels = triton_http.InferInput("pixels", [8, 64], "FP32")
    pixels.set_data_from_numpy(x)
    for backend in ("teacher", "student"):
        result = client.infer("digits", [pixels], headers={"x-canary": backend})
        assert result.as_numpy("logits").shape == (8, 10)
    student = client.infer("digits", [pixels], headers={"x-canary": "student"})
    np.testing.assert_allclose(student.as_numpy("logits"), student_direct(x), rtol=1e-5, atol=1e-5)
    # gRPC in, gRPC out: tritonclient.grpc to the gateway, the gateway to Triton
    grpc_client = triton_grpc.InferenceServerClient(f"127.0.0.1:{grpc_port}")
    grpc_pixels = triton_grpc.InferInput("pixels", [8, 64], "FP32")
    grpc_pixels.set_data_from_numpy(x)
    through_grpc = grpc_client.infer("digits", [grpc_pixels], headers={"x-canary": "student"})
    np.testing.assert_allclose(through_grpc.as_numpy("logits"), student_direct(x), rtol=1e-5,
                               atol=1e-5)  # fmt: skip
    assert gateway.metric("gateway_requests_total", backend="student", code="200",
                          protocol="grpc") == 1  # fmt: skip


def _served_by(gateway: TestGateway, backend: str) -> str:
    body = {"inputs": [{"name": "pixels", "shape": [1, 64], "datatype": "FP32", "data": [1] * 64}]}
    response = httpx.post(f"{gateway.url}/v2/models/digits/infer", json=body,
                          headers={"x-canary": backend}, timeout=10)  # fmt: skip
    assert response.status_code == 200, response.text
    return response.headers["x-served-by"]


def test_a_triton_student_with_another_signature_is_refused_loudly(
    triton: TritonProcess, start_gateway: Callable[..., TestGateway]
) -> None:
    student = triton_backend(triton, "student_five", "grpc")
    gateway = start_gateway({"shadow": {"sample_rate": 0.0}, "student": student})
    assert httpx.get(f"{gateway.url}/v2/health/ready").status_code == 200  # teacher serves
    assert gateway.metric("gateway_backend_signature_mismatch", backend="student") == 1
    assert gateway.metric("gateway_backend_up", backend="student") == 0
    assert _served_by(gateway, "student") == "teacher"
    assert gateway.metric("gateway_fallbacks_total", reason="not_loaded") == 1
    log = gateway.log()
    assert "student REFUSED: its signature differs" in log and "[-1, 5]" in log
    assert log.count("student REFUSED") == 1  # once, not once per poll


def test_a_gateway_starts_before_its_triton_student_and_picks_it_up(
    start_gateway: Callable[..., TestGateway], tmp_path: Path
) -> None:
    """A first install or a Triton outage: the gateway must not crash-loop while Triton is
    away; it serves the teacher and takes the student once Triton answers."""
    later = TritonProcess(tmp_path)  # its ports are chosen; nothing listens on them yet
    gateway = start_gateway({
        "shadow": {"sample_rate": 0.0},
        "student": triton_backend(later, "student", "grpc", ready_poll_seconds=0.5),
    })  # fmt: skip
    assert httpx.get(f"{gateway.url}/v2/health/ready").status_code == 200
    assert _served_by(gateway, "student") == "teacher"
    assert gateway.metric("gateway_backend_up", backend="student") == 0
    assert f"cannot read model 'student' from Triton at {later.grpc_url}" in gateway.log()
    later.start()
    try:
        wait_until(lambda: _served_by(gateway, "student") == "student", 60,
                   "the student to be served once Triton is up")  # fmt: skip
        assert gateway.metric("gateway_backend_up", backend="student") == 1
        assert gateway.metric("gateway_backend_signature_mismatch", backend="student") == 0
    finally:
        later.stop()


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_tritons_400_stays_a_400_and_is_not_a_fallback(
    triton: TritonProcess, start_gateway: Callable[..., TestGateway], protocol: str
) -> None:
    # The gateway accepts larger batches than Triton's max_batch_size (1024), so Triton itself
    # refuses this one: a bad request, not a failing student. gRPC says INVALID_ARGUMENT, HTTP 400.
    gateway = start_gateway({
        "shadow": {"sample_rate": 0.0}, "max_batch_size": 4096,
        "student": triton_backend(triton, "student", protocol),
    })  # fmt: skip
    body = {"inputs": [{"name": "pixels", "shape": [1500, 64], "datatype": "FP32",
                        "data": [0.0] * (1500 * 64)}]}  # fmt: skip
    response = httpx.post(
        f"{gateway.url}/v2/models/digits/infer", json=body, headers={"x-canary": "student"},
        timeout=30,
    )  # fmt: skip
    assert response.status_code == 400
    assert "rejected the request" in response.json()["error"]
    assert gateway.metric("gateway_fallbacks_total", reason="error") == 0
    assert gateway.metric("gateway_circuit_state", backend="student", state="closed") == 1


def test_a_request_that_runs_out_of_its_deadline_is_a_clear_504(
    triton: TritonProcess, start_gateway: Callable[..., TestGateway]
) -> None:
    """The slow student (300 ms) times out at 200 ms, leaving 50 ms of the 250 ms deadline to
    fall back on a teacher that is slow too: the client gets 504 at the deadline, not an answer
    late, and the teacher, which had only those 50 ms, is not blamed for it. (A student timeout
    at or over the deadline is refused at start.)"""
    gateway = start_gateway({
        "shadow": {"sample_rate": 0.0},
        "teacher": triton_backend(triton, "student_slow", "grpc", timeout_ms=1000),
        "student": triton_backend(triton, "student_slow", "grpc", timeout_ms=200),
        "resilience": {"request_timeout_ms": 250, "failure_threshold": 100},
    })  # fmt: skip
    body = {"inputs": [{"name": "pixels", "shape": [1, 64], "datatype": "FP32", "data": [1] * 64}]}
    started = time.perf_counter()
    response = httpx.post(f"{gateway.url}/v2/models/digits/infer", json=body,
                          headers={"x-canary": "student"}, timeout=10)  # fmt: skip
    assert time.perf_counter() - started < 1.0
    assert response.status_code == 504
    assert response.json()["error"].startswith(
        "the request's deadline passed while the teacher backend ran"
    )
    assert gateway.metric("gateway_fallbacks_total", reason="timeout") == 1
    # Counted once, with no backend: the student's part is its fallback, and the teacher's 50 ms
    # are no verdict on the teacher.
    assert gateway.metric("gateway_requests_total", backend="none", code="504") == 1
    assert gateway.metric("gateway_requests_total", backend="teacher", code="503") == 0
    assert gateway.metric("gateway_requests_total", backend="student", code="503") == 0


def test_tritons_own_compute_time_is_re_exported_per_backend(
    triton: TritonProcess, start_gateway: Callable[..., TestGateway]
) -> None:
    """Triton reports no CPU time per model; its compute time for the student's model is read
    from its metrics endpoint and exported beside the in-process teacher's measured CPU."""
    gateway = start_gateway({
        "shadow": {"sample_rate": 0.0},
        "student": triton_backend(triton, "student", "grpc", metrics_poll_seconds=0.2,
                                  metrics_url=f"http://127.0.0.1:{triton.metrics_port}/metrics"),
    })  # fmt: skip
    body = {"inputs": [{"name": "pixels", "shape": [1, 64], "datatype": "FP32",
                        "data": [1.0] * 64}]}  # fmt: skip
    with httpx.Client(base_url=gateway.url) as client:
        for _ in range(20):
            answer = client.post("/v2/models/digits/infer", json=body,
                                 headers={"x-canary": "student"})  # fmt: skip
            assert answer.headers["x-served-by"] == "student"

    def tritons_own() -> float:  # Triton refreshes its metrics every 2 s
        text = httpx.get(f"http://127.0.0.1:{triton.metrics_port}/metrics").text
        return compute_seconds_in(text, "student") or 0.0

    wait_until(lambda: tritons_own() > 0, 10, "Triton to report the student's compute time")
    reported = tritons_own()

    def re_exported() -> bool:
        seconds = gateway.metric("gateway_backend_remote_compute_seconds_total", backend="student")
        return seconds >= reported

    wait_until(re_exported, 10, "Triton's compute time re-exported")
    assert gateway.metric("gateway_backend_cpu_seconds_total", backend="student", path="live") == 0
    memory = [sample.labels["backend"] for family in text_string_to_metric_families(
        gateway.metrics_text()) for sample in family.samples
        if sample.name == "gateway_backend_memory_bytes"]  # fmt: skip
    assert memory == ["teacher"]  # the student's model is held by Triton, not here


def test_dynamic_batching_in_front_of_triton_answers_each_request_with_its_own_rows(
    triton: TritonProcess,
    start_gateway: Callable[..., TestGateway],
    test_split: Split,
    teacher_direct: Model,
) -> None:
    """The gateway's batcher with a remote backend: one Triton call per batch."""
    from tests.test_batching import concurrently

    batching = {"batching": {"max_batch_size": 64, "max_delay_us": 20_000}}
    gateway = start_gateway({
        "shadow": {"sample_rate": 0.0}, "overload": {"max_queue_ms": 60_000},
        "teacher": triton_backend(triton, "teacher", "grpc", **batching),
    })  # fmt: skip
    x = test_split.x[:64].astype(np.float32)
    answers = concurrently(gateway.url, x, "teacher")
    for row, answer in enumerate(answers):
        logits = np.array(answer["outputs"][0]["data"], dtype=np.float32)
        np.testing.assert_allclose(logits, teacher_direct(x[row : row + 1])[0], rtol=1e-5,
                                   atol=1e-5)  # fmt: skip
    assert gateway.metric("gateway_batch_size_sum", backend="teacher") == len(x)
    assert 1 <= gateway.metric("gateway_batch_size_count", backend="teacher") < len(x)

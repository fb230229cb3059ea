"""The gateway in front of a real Triton Inference Server, over gRPC and HTTP."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as triton_http
import yaml

from models.data import Split
from tests.servers import BIN, TestGateway, TritonProcess, free_port

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
    gateway = start_gateway({
        "shadow": {"sample_rate": 1.0},
        "student": triton_backend(triton, "student", "grpc"),  # the teacher stays in process
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


def _start_fails(config: dict[str, Any], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    return subprocess.run(
        [str(BIN / "distill-gateway"), "--config", str(path), "--port", str(free_port())],
        capture_output=True, text=True, timeout=60, env=dict(os.environ),
    )  # fmt: skip


def test_a_triton_model_with_another_signature_stops_the_gateway(
    triton: TritonProcess, tmp_path: Path
) -> None:
    result = _start_fails({"student": triton_backend(triton, "student_five", "grpc")}, tmp_path)
    assert result.returncode == 2
    assert "signatures differ" in result.stderr and "[-1, 5]" in result.stderr


def test_an_unreachable_triton_stops_the_gateway_with_its_address(tmp_path: Path) -> None:
    dead = f"127.0.0.1:{free_port()}"
    config = {"student": {"kind": "triton", "url": dead, "model_name": "student",
                          "protocol": "http", "timeout_ms": 500}}  # fmt: skip
    result = _start_fails(config, tmp_path)
    assert result.returncode == 2
    assert dead in result.stderr and "cannot read model 'student'" in result.stderr


def test_tritons_400_stays_a_400_and_is_not_a_fallback(
    triton: TritonProcess, start_gateway: Callable[..., TestGateway]
) -> None:
    # The gateway accepts larger batches than Triton's max_batch_size (1024), so Triton itself
    # refuses this one: a bad request, not a failing student.
    gateway = start_gateway({
        "shadow": {"sample_rate": 0.0}, "max_batch_size": 4096,
        "student": triton_backend(triton, "student", "grpc"),
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

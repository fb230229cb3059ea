"""Other signatures on a real Triton server (``tests/triton/serve.py --extra``): a two-input INT64
text classifier and a BYTES string model behind the gateway's Triton backend, over gRPC and HTTP.
The gateway starts (warm-up built from the signature), answers as ONNX Runtime does on the same
file, and pads requests of mixed lengths into one Triton call, each answer as the model alone
(1e-5 relative, 1e-6 absolute)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as triton_http

from gateway.backends.triton import TritonBackend
from gateway.config import TritonBackendConfig
from gateway.errors import BackendUnavailable
from tests import model_shapes
from tests.servers import TestGateway, TritonProcess

pytestmark = pytest.mark.e2e
RTOL, ATOL = 1e-5, 1e-6
BATCH = 6


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("triton-shapes")
    return {
        "text": model_shapes.write_text_classifier(tmp / "text.onnx", token_output=True),
        "strings": model_shapes.write_string_model(tmp / "strings.onnx"),
        "bf16": model_shapes.write_bf16_model(tmp / "bf16.onnx"),
    }


@pytest.fixture(scope="module")
def triton(
    tmp_path_factory: pytest.TempPathFactory, models: dict[str, Path]
) -> Iterator[TritonProcess]:
    server = TritonProcess(tmp_path_factory.mktemp("triton"), extra=models).start()
    yield server
    server.stop()


def _backend(triton: TritonProcess, model: str, protocol: str, **extra: Any) -> dict[str, Any]:
    url = triton.grpc_url if protocol == "grpc" else triton.http_url
    return {"kind": "triton", "url": url, "model_name": model, "protocol": protocol, **extra}


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_a_text_model_on_triton_pads_mixed_lengths_into_one_call(
    triton: TritonProcess, start_gateway: Callable[..., TestGateway], models: dict[str, Path],
    protocol: str,
) -> None:  # fmt: skip
    batching = {"max_batch_size": BATCH, "max_delay_us": 1_000_000, "pad": True}
    gateway = start_gateway({
        "teacher": _backend(triton, "text", protocol, batching=batching),
        "student": _backend(triton, "text", protocol), "shadow": {"sample_rate": 0.0},
        "overload": {"max_queue_ms": 60_000}, "resilience": {"request_timeout_ms": 60_000},
        # Triton names no axis: each padded input needs its maximum, and the output carrying
        # the sequence its tie to the input (else the gateway refuses to start)
        "inputs": {name: {"max_shape": [-1, 64]} for name in ("input_ids", "attention_mask")},
        "outputs": {"token_scores": {"padded_axes": {1: ["input_ids", 1]}}},
    })  # fmt: skip
    rng = np.random.default_rng(9)
    requests = [model_shapes.text_rows(rng, [n]) for n in (4, 21, 9, 1, 30, 12)]

    def infer(rows: dict[str, np.ndarray]) -> Any:
        client = triton_http.InferenceServerClient(gateway.address)
        inputs = []
        for name, array in rows.items():
            tensor = triton_http.InferInput(name, list(array.shape), "INT64")
            tensor.set_data_from_numpy(array, binary_data=True)
            inputs.append(tensor)
        return client.infer("digits", inputs)

    with ThreadPoolExecutor(BATCH) as pool:
        answers = list(pool.map(infer, requests))
    for rows, answer in zip(requests, answers, strict=True):
        alone = model_shapes.run_onnx(models["text"], rows)
        for name, reference in alone.items():
            got = answer.as_numpy(name)
            assert got is not None and got.shape == reference.shape, name
            np.testing.assert_allclose(got, reference, rtol=RTOL, atol=ATOL)
    assert gateway.metric("gateway_batch_size_count", backend="teacher") == 1
    padded = gateway.metric("gateway_batch_padding_elements_total", backend="teacher")
    assert padded == 2 * (BATCH * 30 - sum(r["input_ids"].size for r in requests))


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_bytes_through_the_gateway_and_triton_both_ways(
    triton: TritonProcess, start_gateway: Callable[..., TestGateway], protocol: str
) -> None:
    gateway = start_gateway({
        "teacher": _backend(triton, "strings", protocol),
        "student": _backend(triton, "strings", protocol), "shadow": {"sample_rate": 0.0},
        "task": {"kind": "regression", "output": "score"},
    })  # fmt: skip
    words = ["hello", "naïve", ""]
    # Triton needs dims for strings: serve.py puts a [batch] tensor there as [batch, 1]
    text = {"name": "text", "shape": [3, 1], "datatype": "BYTES", "data": words}
    response = httpx.post(f"{gateway.url}/v2/models/digits/infer", json={"inputs": [text]})
    assert response.status_code == 200, response.text
    outputs = {o["name"]: o for o in response.json()["outputs"]}
    assert outputs["echo"]["datatype"] == "BYTES" and outputs["echo"]["data"] == words
    assert outputs["is_hello"]["data"] == [True, False, False]
    client = triton_http.InferenceServerClient(gateway.address)
    tensor = triton_http.InferInput("text", [2, 1], "BYTES")
    sent = np.array([[b"hello"], ["naïve".encode()]], dtype=object)
    tensor.set_data_from_numpy(sent, binary_data=True)  # length-prefixed, both hops
    answer = client.infer("digits", [tensor])
    assert answer.as_numpy("echo").tolist() == sent.tolist()


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_a_bf16_model_on_triton_fails_start_up_naming_the_tensor(
    triton: TritonProcess, protocol: str
) -> None:
    """Triton declares the BF16 model (metadata BF16) but this Triton cannot run it, so the
    Triton backend refuses BF16 at start-up rather than serve what no test has seen answer."""
    config = TritonBackendConfig.model_validate(_backend(triton, "bf16", protocol))
    backend = TritonBackend("teacher", config)
    with pytest.raises(
        BackendUnavailable,
        match=r"model 'bf16' on Triton at .* cannot be "
        r"served: tensor 'x' is BF16, which the Triton backend does not serve",
    ):
        asyncio.run(backend.load())
    assert not backend.is_ready()

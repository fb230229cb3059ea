"""The Open Inference Protocol endpoints, driven over loopback with httpx."""

from __future__ import annotations

import zlib
from collections.abc import Callable

import httpx
import numpy as np
import orjson
import pytest

from models.data import Split
from tests.servers import TestGateway


def test_health_endpoints(gateway: TestGateway) -> None:
    assert httpx.get(f"{gateway.url}/v2/health/live").json() == {"live": True}
    assert httpx.get(f"{gateway.url}/v2/health/ready").json() == {"ready": True}
    ready = httpx.get(f"{gateway.url}/v2/models/digits/ready")
    assert ready.status_code == 200 and ready.json()["ready"] is True


def test_server_metadata_names_the_binary_extension(gateway: TestGateway) -> None:
    metadata = httpx.get(f"{gateway.url}/v2").json()
    assert metadata["name"] == "distill-gateway"
    assert "binary_tensor_data" in metadata["extensions"]


def test_model_metadata_is_the_shared_signature(gateway: TestGateway) -> None:
    metadata = httpx.get(f"{gateway.url}/v2/models/digits").json()
    assert metadata["name"] == "digits"
    assert metadata["inputs"] == [{"name": "pixels", "datatype": "FP32", "shape": [-1, 64]}]
    assert metadata["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v2/models/nope"),
        ("GET", "/v2/models/nope/ready"),
        ("POST", "/v2/models/nope/infer"),
        ("POST", "/v2/models/nope/feedback"),
    ],
)
def test_unknown_model_is_404_with_a_v2_error(gateway: TestGateway, method: str, path: str) -> None:
    body = {"inputs": [{"name": "pixels", "shape": [1, 64], "datatype": "FP32", "data": [0] * 64}]}
    response = httpx.request(method, f"{gateway.url}{path}", json=body)
    assert response.status_code == 404
    assert "unknown model 'nope'" in response.json()["error"]


def test_unknown_route_is_404_with_a_v2_error(gateway: TestGateway) -> None:
    response = httpx.get(f"{gateway.url}/v3/whatever")
    assert response.status_code == 404
    assert "error" in response.json()


@pytest.mark.parametrize("nested", [False, True], ids=["flat", "nested"])
def test_json_inference_equals_direct_onnx_runtime(
    gateway: TestGateway,
    test_split: Split,
    teacher_direct: Callable[[np.ndarray], np.ndarray],
    nested: bool,
) -> None:
    x = test_split.x[:3]
    data = x.tolist() if nested else x.reshape(-1).tolist()
    body = {
        "id": "my-request-1",
        "inputs": [{"name": "pixels", "shape": [3, 64], "datatype": "FP32", "data": data}],
    }
    response = httpx.post(f"{gateway.url}/v2/models/digits/infer", json=body)
    assert response.status_code == 200, response.text
    assert response.headers["x-served-by"] == "teacher"
    assert response.headers["x-request-id"] == "my-request-1"
    payload = response.json()
    assert payload["id"] == "my-request-1"
    (output,) = payload["outputs"]
    assert output["name"] == "logits" and output["shape"] == [3, 10]
    assert output["datatype"] == "FP32"
    logits = np.array(output["data"], dtype=np.float32).reshape(3, 10)
    np.testing.assert_allclose(logits, teacher_direct(x), rtol=1e-5, atol=1e-5)


def test_a_request_without_id_gets_a_generated_one(gateway: TestGateway) -> None:
    body = {"inputs": [{"name": "pixels", "shape": [1, 64], "datatype": "FP32", "data": [1] * 64}]}
    first = httpx.post(f"{gateway.url}/v2/models/digits/infer", json=body)
    second = httpx.post(f"{gateway.url}/v2/models/digits/infer", json=body)
    assert first.headers["x-request-id"] == first.json()["id"]
    assert len(first.headers["x-request-id"]) >= 16
    assert first.headers["x-request-id"] != second.headers["x-request-id"]


def test_gzip_compressed_request_from_tritonclient(
    gateway: TestGateway, test_split: Split, teacher_direct: Callable[[np.ndarray], np.ndarray]
) -> None:
    import tritonclient.http as triton_http

    client = triton_http.InferenceServerClient(gateway.address)
    pixels = triton_http.InferInput("pixels", [4, 64], "FP32")
    pixels.set_data_from_numpy(test_split.x[:4])
    result = client.infer("digits", [pixels], request_compression_algorithm="gzip")
    np.testing.assert_allclose(
        result.as_numpy("logits"), teacher_direct(test_split.x[:4]), rtol=1e-5, atol=1e-5
    )


def test_deflate_compressed_request(
    gateway: TestGateway, test_split: Split, teacher_direct: Callable[[np.ndarray], np.ndarray]
) -> None:
    x = test_split.x[:3]
    body = {"inputs": [{"name": "pixels", "shape": [3, 64], "datatype": "FP32",
                        "data": x.reshape(-1).tolist()}]}  # fmt: skip
    response = httpx.post(
        f"{gateway.url}/v2/models/digits/infer",
        content=zlib.compress(orjson.dumps(body)),
        headers={"content-encoding": "deflate", "content-type": "application/json"},
    )
    assert response.status_code == 200, response.text
    logits = np.array(response.json()["outputs"][0]["data"], dtype=np.float32).reshape(3, 10)
    np.testing.assert_allclose(logits, teacher_direct(x), rtol=1e-5, atol=1e-5)

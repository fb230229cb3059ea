"""The gateway held against the Open Inference Protocol's REST specification.

The schemas below are written from the spec's object definitions (server metadata, model metadata,
model ready, inference response, error), each response of every route is validated against the
one the spec names for it, and every route is tried unversioned and with the model's version.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import jsonschema
import numpy as np
import pytest
import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException

from models.data import Split
from tests.servers import LABELLER, TestGateway

_STRINGS = {"type": "array", "items": {"type": "string"}}
_TENSOR_METADATA = {
    "type": "object",
    "required": ["name", "datatype", "shape"],
    "properties": {
        "name": {"type": "string"},
        "datatype": {"type": "string"},
        "shape": {"type": "array", "items": {"type": "integer"}},
    },
}
SERVER_METADATA = {
    "type": "object",
    "required": ["name", "version", "extensions"],
    "properties": {
        "name": {"type": "string"},
        "version": {"type": "string"},
        "extensions": _STRINGS,
    },
}
MODEL_METADATA = {
    "type": "object",
    "required": ["name", "platform", "inputs", "outputs"],
    "properties": {
        "name": {"type": "string"},
        "versions": _STRINGS,
        "platform": {"type": "string"},
        "inputs": {"type": "array", "items": _TENSOR_METADATA},
        "outputs": {"type": "array", "items": _TENSOR_METADATA},
    },
}
MODEL_READY = {
    "type": "object",
    "required": ["name", "ready"],
    "properties": {"name": {"type": "string"}, "ready": {"type": "boolean"}},
}
_TENSOR_DATA = {"type": "array"}  # flat or nested numbers, strings or booleans
INFERENCE_RESPONSE = {
    "type": "object",
    "required": ["model_name", "id", "outputs"],
    "properties": {
        "model_name": {"type": "string"},
        "model_version": {"type": "string"},
        "id": {"type": "string"},
        "parameters": {"type": "object"},
        "outputs": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name", "shape", "datatype"],
                "properties": {
                    "name": {"type": "string"},
                    "shape": {"type": "array", "items": {"type": "integer"}},
                    "datatype": {"type": "string"},
                    "parameters": {"type": "object"},
                    "data": _TENSOR_DATA,
                },
            },
        },
    },
}
# Every error object of the spec (server metadata, model metadata, inference) has this shape.
ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {"type": "string", "minLength": 1}},
}

PIXELS = {"name": "pixels", "shape": [1, 64], "datatype": "FP32", "data": [1.0] * 64}
INFER = {"json": {"inputs": [PIXELS]}}
MODEL_PATHS = {"unversioned": "/v2/models/digits", "versioned": "/v2/models/digits/versions/1"}


def _valid(payload: Any, schema: dict[str, Any]) -> Any:
    jsonschema.validate(payload, schema)
    return payload


@pytest.mark.parametrize("path", ["/v2", "/v2/"])
def test_server_metadata_answers_on_both_spellings_without_a_redirect(
    gateway: TestGateway, path: str
) -> None:
    response = httpx.get(f"{gateway.url}{path}", follow_redirects=False)
    assert response.status_code == 200
    metadata = _valid(response.json(), SERVER_METADATA)
    assert metadata["name"] == "distill-gateway"
    assert metadata["extensions"] == ["binary_tensor_data"]


@pytest.mark.parametrize("path", ["/v2/health/live", "/v2/health/ready"])
def test_health_is_200_when_healthy(gateway: TestGateway, path: str) -> None:
    assert httpx.get(f"{gateway.url}{path}").status_code == 200


@pytest.mark.parametrize("form", MODEL_PATHS)
def test_model_metadata_lists_the_version_it_answers_on(gateway: TestGateway, form: str) -> None:
    response = httpx.get(f"{gateway.url}{MODEL_PATHS[form]}")
    assert response.status_code == 200
    metadata = _valid(response.json(), MODEL_METADATA)
    assert metadata["name"] == "digits"
    assert metadata["versions"] == ["1"]


@pytest.mark.parametrize("form", MODEL_PATHS)
def test_model_ready(gateway: TestGateway, form: str) -> None:
    response = httpx.get(f"{gateway.url}{MODEL_PATHS[form]}/ready")
    assert response.status_code == 200
    assert _valid(response.json(), MODEL_READY) == {"name": "digits", "ready": True}


@pytest.mark.parametrize("form", MODEL_PATHS)
def test_json_inference_response_names_model_and_version(gateway: TestGateway, form: str) -> None:
    body = {"id": f"conformance-{form}", "inputs": [PIXELS]}
    response = httpx.post(f"{gateway.url}{MODEL_PATHS[form]}/infer", json=body)
    assert response.status_code == 200, response.text
    payload = _valid(response.json(), INFERENCE_RESPONSE)
    assert payload["model_name"] == "digits"
    assert payload["model_version"] == "1"
    assert payload["id"] == f"conformance-{form}"
    assert [output["name"] for output in payload["outputs"]] == ["logits"]


def test_binary_inference_response_header_names_model_and_version(gateway: TestGateway) -> None:
    body = {
        "inputs": [PIXELS],
        "outputs": [{"name": "logits", "parameters": {"binary_data": True}}],
    }
    response = httpx.post(f"{gateway.url}{MODEL_PATHS['versioned']}/infer", json=body)
    assert response.status_code == 200, response.text
    header_length = int(response.headers["inference-header-content-length"])
    header = _valid(json.loads(response.content[:header_length]), INFERENCE_RESPONSE)
    assert header["model_version"] == "1"
    assert len(response.content) - header_length == 10 * 4  # one row of FP32 logits


def test_feedback_works_on_the_versioned_route(gateway: TestGateway) -> None:
    infer = httpx.post(
        f"{gateway.url}{MODEL_PATHS['versioned']}/infer",
        json={"id": "conformance-feedback", "inputs": [PIXELS]},
    )
    assert infer.status_code == 200
    feedback = httpx.post(
        f"{gateway.url}{MODEL_PATHS['versioned']}/feedback",
        json={"id": "conformance-feedback", "label": 3},
        headers={"x-feedback-ticket": infer.headers["x-feedback-ticket"]},
    )
    assert feedback.status_code == 200, feedback.text
    assert feedback.json()["total"] == 1


# (method, path, request, status, words the message must contain)
ERROR_CASES: list[tuple[str, str, dict[str, Any], int, str]] = [
    ("GET", "/v2/models/nope", {}, 404, "unknown model 'nope'"),
    ("GET", "/v2/models/nope/versions/1", {}, 404, "unknown model 'nope'"),
    ("GET", "/v2/models/digits/versions/2", {}, 404, "its versions are: 1"),
    ("GET", "/v2/models/digits/versions/2/ready", {}, 404, "its versions are: 1"),
    ("POST", "/v2/models/digits/versions/2/infer", INFER, 404, "its versions are: 1"),
    ("POST", "/v2/models/digits/versions/2/feedback", {"json": {"id": "x", "label": 1}}, 404,
     "its versions are: 1"),
    ("POST", "/v2/models/nope/versions/1/infer", INFER, 404, "unknown model 'nope'"),
    ("POST", "/v2/models/digits/versions/1/infer", {"content": b"{"}, 400, "not valid JSON"),
    ("POST", "/v2/models/digits/infer", {"json": {"inputs": [{**PIXELS, "datatype": "INT8"}]}},
     400, "datatype INT8"),
    ("POST", "/v2/models/digits/infer", {"content": b"x", "headers": {"content-encoding": "br"}},
     415, "br"),
    ("POST", "/v2/models/digits/feedback", {"json": {"id": "never-seen", "label": 1},
     "headers": LABELLER}, 404, "never-seen"),
    ("POST", "/v2/models/digits/feedback", {"json": {"id": "never-seen", "label": 1}}, 401,
     "x-feedback-ticket"),
    ("POST", "/v2/models/digits/feedback", {"json": {"id": "x", "label": "7"},
     "headers": LABELLER}, 400, "classification"),
    ("POST", "/v2/models/digits/feedback", {"json": {"id": "x", "label": "7"}}, 401,
     "x-feedback-ticket"),  # who asks is checked before what they sent
    ("GET", "/v2/models/digits/infer", {}, 405, "Method Not Allowed: GET /v2/models/digits/infer"),
    ("GET", "/v3/models", {}, 404, "Not Found: GET /v3/models"),
    ("PUT", "/admin/traffic", {"json": {"student_share": 0.5}}, 401, "bearer token"),
    ("GET", "/v2/models/stats", {}, 501, "statistics extension"),
    ("GET", "/v2/models/digits/stats", {}, 501, "/metrics"),
    ("GET", "/v2/models/digits/versions/1/stats", {}, 501, "statistics extension"),
    ("GET", "/v2/models/digits/config", {}, 501, "model configuration extension"),
    ("POST", "/v2/repository/index", {"json": {"ready": "maybe"}}, 422, "ready"),
    ("POST", "/v2/repository/models/digits/load", {}, 501, "fixed by the gateway's config"),
    ("GET", "/v2/systemsharedmemory/status", {}, 501, "system shared memory extension"),
    ("GET", "/v2/cudasharedmemory/status", {}, 501, "CUDA shared memory extension"),
    ("GET", "/v2/trace/setting", {}, 501, "trace extension"),
    ("GET", "/v2/logging", {}, 501, "--log-level"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("method", "path", "request_kwargs", "status", "words"),
    ERROR_CASES,
    ids=[f"{status}-{method}-{path}" for method, path, _, status, _ in ERROR_CASES],
)
def test_every_error_is_a_spec_error_object_that_says_what_was_wrong(
    gateway: TestGateway,
    method: str,
    path: str,
    request_kwargs: dict[str, Any],
    status: int,
    words: str,
) -> None:
    response = httpx.request(method, f"{gateway.url}{path}", **request_kwargs)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert words in _valid(response.json(), ERROR)["error"]


@pytest.fixture(scope="module")
def client(gateway: TestGateway) -> triton_http.InferenceServerClient:
    return triton_http.InferenceServerClient(gateway.address)


@pytest.mark.parametrize("version", ["", "1"], ids=["no-version", "version-1"])
def test_tritonclient_with_and_without_a_pinned_version(
    client: triton_http.InferenceServerClient, test_split: Split, version: str
) -> None:
    assert client.is_model_ready("digits", version)
    assert client.get_model_metadata("digits", version)["versions"] == ["1"]
    pixels = triton_http.InferInput("pixels", [2, 64], "FP32")
    pixels.set_data_from_numpy(test_split.x[:2])
    result = client.infer("digits", [pixels], model_version=version)
    assert result.get_response()["model_version"] == "1"
    assert result.as_numpy("logits").shape == (2, 10)


def test_tritonclient_pinned_to_an_unknown_version_is_told_which_exist(
    client: triton_http.InferenceServerClient, test_split: Split
) -> None:
    assert not client.is_model_ready("digits", "2")
    pixels = triton_http.InferInput("pixels", [1, 64], "FP32")
    pixels.set_data_from_numpy(test_split.x[:1])
    with pytest.raises(InferenceServerException, match="its versions are: 1"):
        client.infer("digits", [pixels], model_version="2")
    with pytest.raises(InferenceServerException, match="statistics extension"):
        client.get_inference_statistics("digits")


def test_a_configured_version_is_the_one_listed_and_accepted(
    fresh_gateway: Any, test_split: Split
) -> None:
    gateway = fresh_gateway({"model_version": "2026-11", "shadow": {"sample_rate": 0.0}})
    assert httpx.get(f"{gateway.url}/v2/models/digits").json()["versions"] == ["2026-11"]
    client = triton_http.InferenceServerClient(gateway.address)
    pixels = triton_http.InferInput("pixels", [1, 64], "FP32")
    pixels.set_data_from_numpy(test_split.x[:1])
    result = client.infer("digits", [pixels], model_version="2026-11")
    assert result.get_response()["model_version"] == "2026-11"
    assert np.isfinite(result.as_numpy("logits")).all()
    old = httpx.get(f"{gateway.url}/v2/models/digits/versions/1/ready")
    assert old.status_code == 404 and "its versions are: 2026-11" in old.json()["error"]


def test_bytes_tensors_follow_the_spec_in_json_and_in_the_binary_extension(
    start_gateway: Any, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """BYTES as the spec writes it: JSON strings in ``data``, and in the binary extension each
    element a 4-byte little-endian length and its bytes, ``binary_data_size`` counting both."""
    import struct

    from tests import model_shapes

    model = model_shapes.write_string_model(tmp_path_factory.mktemp("strings") / "strings.onnx")
    gateway = start_gateway({"teacher": {"path": str(model)}, "student": {"path": str(model)},
                             "shadow": {"sample_rate": 0.0},
                             "task": {"kind": "regression", "output": "score"}})  # fmt: skip
    metadata = _valid(httpx.get(f"{gateway.url}/v2/models/digits").json(), MODEL_METADATA)
    assert metadata["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    words = ["hello", "naïve"]
    text = {"name": "text", "shape": [2], "datatype": "BYTES", "data": words}
    response = httpx.post(f"{gateway.url}/v2/models/digits/infer", json={"inputs": [text]})
    payload = _valid(response.json(), INFERENCE_RESPONSE)
    echo = next(o for o in payload["outputs"] if o["name"] == "echo")
    assert echo == {"name": "echo", "datatype": "BYTES", "shape": [2], "data": words}
    raw = b"".join(struct.pack("<I", len(w.encode())) + w.encode() for w in words)
    binary_text = {"name": "text", "shape": [2], "datatype": "BYTES",
                   "parameters": {"binary_data_size": len(raw)}}  # fmt: skip
    echo_binary = {"name": "echo", "parameters": {"binary_data": True}}
    header = json.dumps({"inputs": [binary_text], "outputs": [echo_binary]}).encode()

    def post(tensors: bytes) -> httpx.Response:
        length = {"Inference-Header-Content-Length": str(len(header))}
        return httpx.post(f"{gateway.url}/v2/models/digits/infer", content=header + tensors,
                          headers=length)  # fmt: skip

    response = post(raw)
    length = int(response.headers["inference-header-content-length"])
    described = _valid(json.loads(response.content[:length]), INFERENCE_RESPONSE)["outputs"][0]
    assert described["parameters"]["binary_data_size"] == len(raw)
    assert response.content[length:] == raw
    response = post(raw[:-3])  # the last element's bytes cut short: its prefix lies
    assert response.status_code == 400
    assert "input 'text'" in _valid(response.json(), ERROR)["error"]


def test_bf16_tensors_follow_the_spec_in_json_and_in_the_binary_extension(
    start_gateway: Any, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """BF16 as the spec lists it: numbers in ``data`` (JSON has no BF16: each is rounded to the
    nearest BF16, and answered as that value), and in the binary extension 2-byte little-endian
    elements, ``binary_data_size`` twice the element count."""
    import ml_dtypes

    from tests import model_shapes

    model = model_shapes.write_bf16_model(tmp_path_factory.mktemp("bf16") / "bf16.onnx")
    gateway = start_gateway({"teacher": {"path": str(model)}, "student": {"path": str(model)},
                             "shadow": {"sample_rate": 0.0}, "task": {"output": "y"}})  # fmt: skip
    metadata = _valid(httpx.get(f"{gateway.url}/v2/models/digits").json(), MODEL_METADATA)
    assert metadata["inputs"] == [{"name": "x", "datatype": "BF16", "shape": [-1, 8]}]
    values = [0.5, -1.25, 3.0, 0.0, 1.0, 2.0, -0.75, 1.00390625]  # the last rounds to 1.0
    x = {"name": "x", "shape": [1, 8], "datatype": "BF16", "data": values}
    response = httpx.post(f"{gateway.url}/v2/models/digits/infer", json={"inputs": [x]})
    payload = _valid(response.json(), INFERENCE_RESPONSE)
    echo = next(o for o in payload["outputs"] if o["name"] == "echo")
    assert echo == {"name": "echo", "datatype": "BF16", "shape": [1, 8],
                    "data": [*values[:-1], 1.0]}  # fmt: skip
    bits = np.array([values], dtype=ml_dtypes.bfloat16).view(np.uint16)
    raw = bits.astype("<u2").tobytes()
    binary_x = {"name": "x", "shape": [1, 8], "datatype": "BF16",
                "parameters": {"binary_data_size": len(raw)}}  # fmt: skip
    header = json.dumps({"inputs": [binary_x], "outputs": [
        {"name": "echo", "parameters": {"binary_data": True}}]}).encode()  # fmt: skip
    length = {"Inference-Header-Content-Length": str(len(header))}
    response = httpx.post(f"{gateway.url}/v2/models/digits/infer", content=header + raw,
                          headers=length)  # fmt: skip
    size = int(response.headers["inference-header-content-length"])
    described = _valid(json.loads(response.content[:size]), INFERENCE_RESPONSE)["outputs"][0]
    assert described["datatype"] == "BF16" and described["parameters"]["binary_data_size"] == 16
    assert response.content[size:] == raw
    wrong = httpx.post(f"{gateway.url}/v2/models/digits/infer",
                       json={"inputs": [{**x, "data": ["half", *values[1:]]}]})  # fmt: skip
    assert wrong.status_code == 400
    assert "input 'x'" in _valid(wrong.json(), ERROR)["error"]

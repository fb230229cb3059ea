"""Every malformed request gets a 4xx whose message says what was wrong, and nothing breaks."""

from __future__ import annotations

import struct
from typing import Any

import httpx
import pytest

from tests.servers import TestGateway

GOOD_INPUT = {"name": "pixels", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}


def _binary(header: dict[str, Any], payload: bytes, declared: int | None = None) -> dict[str, Any]:
    import orjson

    head = orjson.dumps(header)
    length = len(head) if declared is None else declared
    return {
        "content": head + payload,
        "headers": {"Inference-Header-Content-Length": str(length)},
    }


def _with_input(**changes: Any) -> dict[str, Any]:
    return {"json": {"inputs": [{**GOOD_INPUT, **changes}]}}


FLOATS_64 = struct.pack("<64f", *range(64))

CASES: list[tuple[str, dict[str, Any], int, str]] = [
    ("bad json", {"content": b'{"inputs": [', "headers": {}}, 400, "not valid JSON"),
    # echoed in x-request-id, where uvicorn could not write it: a 400, not a 500
    ("control character in id", {"json": {"id": "a\nb", "inputs": [GOOD_INPUT]}}, 400, "id"),
    ("no inputs", {"json": {"inputs": []}}, 400, "inputs"),
    ("inputs not a list", {"json": {"inputs": 3}}, 400, "inputs"),
    ("unknown input", _with_input(name="image"), 400, "unknown input 'image'"),
    ("wrong datatype", _with_input(datatype="FP64"), 400, "datatype FP64; the model expects FP32"),
    ("wrong rank", _with_input(shape=[64]), 400, "has shape [64]"),
    ("wrong width", _with_input(shape=[1, 63], data=[0] * 63), 400, "has shape [1, 63]"),
    ("zero batch", _with_input(shape=[0, 64], data=[]), 400, "batch size 0"),
    ("batch too large", _with_input(shape=[5000, 64]), 400, "batch size 5000"),
    ("too few values", _with_input(data=[0.0] * 60), 400, "has 60 values in 'data'"),
    ("not numbers", _with_input(data=["a"] * 64), 400, "must be a flat or nested list"),
    ("ragged nested", _with_input(data=[[0.0] * 64, [1.0]]), 400, "must be a flat or nested"),
    ("no data", _with_input(data=None), 400, "has no data"),
    # an integer of 401 digits, and a float past FP32's 3.4e38: never a silent inf, nor a 500
    ("integer beyond FP32", _with_input(data=[10**400] + [0.0] * 63), 400,
     "input 'pixels' holds a number beyond the range of FP32"),
    ("float beyond FP32", _with_input(data=[0.0] * 63 + [1e39]), 400,
     "input 'pixels' holds a number beyond the range of FP32"),
    (
        "unknown output",
        {"json": {"inputs": [GOOD_INPUT], "outputs": [{"name": "probs"}]}},
        400,
        "unknown output 'probs'",
    ),
    (
        "input twice",
        {"json": {"inputs": [GOOD_INPUT, GOOD_INPUT]}},
        400,
        "given twice",
    ),
    (
        "binary size wrong for shape",
        _binary(
            {"inputs": [{"name": "pixels", "shape": [1, 64], "datatype": "FP32",
                         "parameters": {"binary_data_size": 128}}]},
            FLOATS_64[:128],
        ),
        400,
        "needs 256 bytes",
    ),
    (
        "binary sizes do not add up",
        _binary(
            {"inputs": [{"name": "pixels", "shape": [1, 64], "datatype": "FP32",
                         "parameters": {"binary_data_size": 256}}]},
            FLOATS_64 + b"extra",
        ),
        400,
        "binary sizes do not add up",
    ),
    (
        "binary data missing",
        _binary(
            {"inputs": [{"name": "pixels", "shape": [1, 64], "datatype": "FP32",
                         "parameters": {"binary_data_size": 256}}]},
            FLOATS_64[:100],
        ),
        400,
        "only 100 bytes",
    ),
    (
        "header length beyond body",
        _binary({"inputs": [GOOD_INPUT]}, b"", declared=10_000),
        400,
        "Inference-Header-Content-Length is 10000",
    ),
    (
        "header length not a number",
        {"json": {"inputs": [GOOD_INPUT]}, "headers": {"Inference-Header-Content-Length": "x"}},
        400,
        "must be an integer",
    ),
    (
        "bad x-canary",
        {"json": {"inputs": [GOOD_INPUT]}, "headers": {"x-canary": "both"}},
        400,
        "x-canary must be",
    ),
    (
        "unsupported encoding",
        {"json": {"inputs": [GOOD_INPUT]}, "headers": {"Content-Encoding": "br"}},
        415,
        "Content-Encoding 'br'",
    ),
    (
        "gzip that is not gzip",
        {"content": b"plain", "headers": {"Content-Encoding": "gzip"}},
        400,
        "not valid gzip",
    ),
]  # fmt: skip


@pytest.mark.parametrize(
    ("request_kwargs", "status", "message"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_bad_request_is_answered_clearly(
    gateway: TestGateway, request_kwargs: dict[str, Any], status: int, message: str
) -> None:
    response = httpx.post(f"{gateway.url}/v2/models/digits/infer", **request_kwargs)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]
    assert response.headers["x-request-id"]


def test_body_over_the_limit_is_413_and_the_gateway_keeps_serving(
    fresh_gateway: Any,
) -> None:
    gateway = fresh_gateway({"max_request_bytes": 4096, "shadow": {"sample_rate": 0}})
    big = {"inputs": [{**GOOD_INPUT, "shape": [100, 64], "data": [1.0] * 6400}]}
    response = httpx.post(f"{gateway.url}/v2/models/digits/infer", json=big)
    assert response.status_code == 413
    assert "limit is 4096" in response.json()["error"]
    ok = httpx.post(f"{gateway.url}/v2/models/digits/infer", json={"inputs": [GOOD_INPUT]})
    assert ok.status_code == 200
    metrics = gateway.metrics_text()
    counted = 'gateway_requests_total{backend="%s",code="%s",model="digits",protocol="http"} 1.0'
    assert counted % ("none", "413") in metrics and counted % ("teacher", "200") in metrics


def test_a_compressed_bomb_is_413_not_an_out_of_memory(fresh_gateway: Any) -> None:
    import gzip

    gateway = fresh_gateway({"max_request_bytes": 4096, "shadow": {"sample_rate": 0}})
    bomb = gzip.compress(b"0" * 3_000_000)
    assert len(bomb) < 4096
    response = httpx.post(
        f"{gateway.url}/v2/models/digits/infer",
        content=bomb,
        headers={"Content-Encoding": "gzip"},
    )
    assert response.status_code == 413
    assert "decompressed" in response.json()["error"]

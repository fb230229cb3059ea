"""Any signature: several named inputs, FP16 and BYTES, dynamic axes with configured maxima,
and warm-up built from the signature, on real ONNX models (``tests.model_shapes``) decoded by
the real codec and run by the real ONNX backend (no server: the end-to-end tests are in
``test_signatures_e2e``)."""

from __future__ import annotations

import asyncio
import json
import struct
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from gateway.backends.onnx import OnnxBackend
from gateway.codec import RequestedOutput, decode_request, encode_response
from gateway.config import InputConfig, OnnxBackendConfig, WarmupConfig
from gateway.errors import BackendUnavailable, BadRequest
from gateway.signature import Signature
from tests import model_shapes

TEXT_LIMITS = {"input_ids": InputConfig(max_shape=[-1, 32], warmup_range=(0, 63))}


def _loaded(path: Path, **kwargs: Any) -> OnnxBackend:
    backend = OnnxBackend("teacher", OnnxBackendConfig(path=path, device="cpu"), **kwargs)
    asyncio.run(backend.load())
    return backend


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("shapes")
    return {
        "text": model_shapes.write_text_classifier(tmp / "text.onnx", token_output=True),
        "strings": model_shapes.write_string_model(tmp / "strings.onnx"),
        "fp16": model_shapes.write_fp16_model(tmp / "fp16.onnx"),
        "multi": model_shapes.write_multi_output_model(tmp / "multi.onnx"),
    }


@pytest.fixture(scope="module")
def text_backend(shapes: dict[str, Path]) -> OnnxBackend:
    return _loaded(shapes["text"], inputs=TEXT_LIMITS)


def _body(inputs: list[dict[str, Any]], binary: bytes = b"") -> tuple[bytes, str | None]:
    header = json.dumps({"inputs": inputs}).encode()  # not orjson: it refuses ints past 64 bits
    return header + binary, (str(len(header)) if binary else None)


def _decode(signature: Signature, inputs: list[dict[str, Any]], binary: bytes = b"") -> Any:
    body, length = _body(inputs, binary)
    return decode_request(body, length, signature, 64)


def _length_prefixed(*elements: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(e)) + e for e in elements)


def test_a_two_input_model_warms_up_and_answers_as_onnx_runtime(
    text_backend: OnnxBackend, shapes: dict[str, Path]
) -> None:
    # Before: start-up failed with "Required inputs (['attention_mask']) are missing".
    rows = model_shapes.text_rows(np.random.default_rng(3), [5, 9])
    decoded = _decode(text_backend.signature, [
        {"name": name, "shape": list(a.shape), "datatype": "INT64", "data": a.ravel().tolist()}
        for name, a in rows.items()
    ])  # fmt: skip
    answer = asyncio.run(text_backend.infer(decoded.inputs, ["logits", "token_scores"]))
    expected = model_shapes.run_onnx(shapes["text"], rows)
    np.testing.assert_array_equal(answer["logits"], expected["logits"])
    np.testing.assert_array_equal(answer["token_scores"], expected["token_scores"])


def test_warm_up_gives_every_dynamic_axis_the_configured_length(shapes: dict[str, Path]) -> None:
    backend = _loaded(shapes["text"], inputs=TEXT_LIMITS,
                      warmup=WarmupConfig(length=40, batch_sizes=[3]))  # fmt: skip
    (call,) = backend.warmup_calls()
    # 40, held to the configured maximum of input_ids, which its mask must match
    assert call["input_ids"].shape == call["attention_mask"].shape == (3, 32)
    assert call["input_ids"].min() >= 0 and call["input_ids"].max() <= 63
    assert call["input_ids"].max() > 0  # drawn from the range, not all zeros


def test_warm_up_takes_example_tensors_and_names_a_bad_one(shapes: dict[str, Path]) -> None:
    good = WarmupConfig(examples={"input_ids": [[1, 2, 3]], "attention_mask": [[1, 1, 0]]})
    backend = OnnxBackend("teacher", OnnxBackendConfig(path=shapes["text"], device="cpu"),
                          warmup=good)  # fmt: skip
    asyncio.run(backend.load())
    assert [c["input_ids"].tolist() for c in backend.warmup_calls()] == [[[1, 2, 3]]] * 2
    missing = WarmupConfig(examples={"input_ids": [[1, 2, 3]]})
    with pytest.raises(BackendUnavailable, match=r"missing: \['attention_mask'\]"):
        _loaded(shapes["text"], warmup=missing)
    with pytest.raises(BackendUnavailable, match=r"inputs.token_ids: the model has no input"):
        _loaded(shapes["text"], inputs={"token_ids": InputConfig()})


def test_bytes_as_json_strings_and_length_prefixed_binary_reach_the_model_as_text(
    shapes: dict[str, Path],
) -> None:
    backend = _loaded(shapes["strings"])
    words = ["hello", "héllo", ""]
    by_json = _decode(backend.signature, [
        {"name": "text", "shape": [3], "datatype": "BYTES", "data": words}])  # fmt: skip
    raw = _length_prefixed(*(w.encode() for w in words))
    by_binary = _decode(backend.signature, [
        {"name": "text", "shape": [3], "datatype": "BYTES",
         "parameters": {"binary_data_size": len(raw)}}], raw)  # fmt: skip
    for decoded in (by_json, by_binary):
        assert decoded.inputs["text"].tolist() == words
        answer = asyncio.run(backend.infer(decoded.inputs, ["echo", "is_hello", "score"]))
        assert answer["echo"].tolist() == words
        assert answer["is_hello"].tolist() == [True, False, False]
    # JSON strings back; binary: length-prefixed elements
    json_body, _ = encode_response("m", "1", "r", answer, [RequestedOutput("echo", False)])
    assert orjson.loads(json_body)["outputs"][0]["data"] == words
    binary_body, length = encode_response("m", "1", "r", answer, [RequestedOutput("echo", True)])
    assert length is not None and binary_body[length:] == raw


def test_fp16_in_json_and_binary(shapes: dict[str, Path]) -> None:
    backend = _loaded(shapes["fp16"])
    x = np.random.default_rng(0).standard_normal((2, 8)).astype(np.float16)
    given = {"name": "x", "shape": [2, 8], "datatype": "FP16", "data": x.ravel().tolist()}
    by_json = _decode(backend.signature, [given])
    by_binary = _decode(backend.signature, [
        {"name": "x", "shape": [2, 8], "datatype": "FP16",
         "parameters": {"binary_data_size": x.nbytes}}], x.tobytes())  # fmt: skip
    expected = model_shapes.run_onnx(shapes["fp16"], {"x": x})["y"]
    for decoded in (by_json, by_binary):
        answer = asyncio.run(backend.infer(decoded.inputs, ["y"]))["y"]
        assert answer.dtype == np.float16
        np.testing.assert_array_equal(answer, expected)


def _text_input(name: str, rows: int, length: int, **changes: Any) -> dict[str, Any]:
    return {"name": name, "shape": [rows, length], "datatype": "INT64",
            "data": [1] * (rows * length), **changes}  # fmt: skip


BAD_TEXT: list[tuple[str, list[dict[str, Any]], str]] = [
    ("missing input", [_text_input("input_ids", 1, 4)],
     "missing input(s): 'attention_mask' (INT64 [-1, -1])"),
    ("extra input", [_text_input("input_ids", 1, 4), _text_input("attention_mask", 1, 4),
                     _text_input("token_type_ids", 1, 4)],
     "unknown input 'token_type_ids'; the model's inputs are: input_ids, attention_mask"),
    ("wrong datatype", [_text_input("input_ids", 1, 4, datatype="INT32"),
                        _text_input("attention_mask", 1, 4)],
     "input 'input_ids' has datatype INT32; the model expects INT64"),
    ("wrong rank", [_text_input("input_ids", 1, 4, shape=[4]), _text_input("attention_mask", 1, 4)],
     "input 'input_ids' has shape [4]; the model expects [-1, -1]"),
    ("over the configured maximum", [_text_input("input_ids", 1, 33),
                                     _text_input("attention_mask", 1, 33)],
     "input 'input_ids' has size 33 on axis 1; the gateway accepts at most 32 there"),
    ("mask of another length", [_text_input("input_ids", 1, 4),
                                _text_input("attention_mask", 1, 5)],
     "inputs disagree on the model's axis 'seq': 'input_ids' has 4 on axis 1, 'attention_mask' "
     "has 5 on axis 1; they must be equal"),
    ("batch sizes disagree", [_text_input("input_ids", 1, 4), _text_input("attention_mask", 2, 4)],
     "inputs disagree on the batch size"),
    ("an id past int64", [_text_input("input_ids", 1, 2, data=[1, 2**64]),
                          _text_input("attention_mask", 1, 2)],
     "input 'input_ids' holds a number beyond the range of INT64"),
    ("a float past int64", [_text_input("input_ids", 1, 1), _text_input("attention_mask", 1, 1,
                                                                         data=[1e30])],
     "input 'attention_mask' holds a number beyond the range of INT64"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "inputs", "message"), BAD_TEXT, ids=[c[0] for c in BAD_TEXT])
def test_bad_input_to_a_two_input_model_names_the_input_and_what_was_expected(
    text_backend: OnnxBackend, case: str, inputs: list[dict[str, Any]], message: str
) -> None:
    with pytest.raises(BadRequest) as caught:
        _decode(text_backend.signature, inputs)
    assert message in caught.value.message
    assert caught.value.status_code == 400


def _bytes_input(size: int) -> dict[str, Any]:
    return {"name": "text", "shape": [2], "datatype": "BYTES",
            "parameters": {"binary_data_size": size}}  # fmt: skip


BAD_BYTES: list[tuple[str, list[dict[str, Any]], bytes, str]] = [
    ("length past the end", [_bytes_input(9)], struct.pack("<I", 2) + b"hi" + struct.pack("<I", 9)
     [:3], "BYTES element 1 has a broken length prefix"),
    ("element longer than the rest", [_bytes_input(11)],
     struct.pack("<I", 2) + b"hi" + struct.pack("<I", 50) + b"a",
     "BYTES element 1 declares 50 bytes but only 1 remain"),
    ("too few elements", [_bytes_input(6)], _length_prefixed(b"hi"),
     "input 'text' has 6 bytes of BYTES data, too few for the 2 elements of shape [2]"),
    ("one element, the rest empty", [_bytes_input(8)], _length_prefixed(b"abcd"),
     "BYTES element 1 has a broken length prefix: 0 bytes left"),
    ("more elements than the shape", [_bytes_input(15)], _length_prefixed(b"a", b"b", b"c"),
     "input 'text': 5 bytes follow the 2 BYTES elements of shape [2]"),
    ("not UTF-8", [_bytes_input(12)], _length_prefixed(b"ok", b"\xff\xfe"),
     "input 'text': element 1 is not UTF-8 text"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "inputs", "raw", "message"), BAD_BYTES,
                         ids=[c[0] for c in BAD_BYTES])  # fmt: skip
def test_a_broken_bytes_tensor_is_a_400_naming_the_input_and_element(
    shapes: dict[str, Path], case: str, inputs: list[dict[str, Any]], raw: bytes, message: str
) -> None:
    backend = _loaded(shapes["strings"])
    with pytest.raises(BadRequest) as caught:
        _decode(backend.signature, inputs, raw)
    assert message in caught.value.message


def test_a_huge_bytes_body_for_a_small_shape_is_refused_without_building_its_elements(
    shapes: dict[str, Path],
) -> None:
    """8 MiB of 1-byte elements sent as shape [1]: refused after one element, so the decode
    allocates about what one element needs, not 1.6 M ``bytes`` objects (67 MiB before)."""
    import tracemalloc

    backend = _loaded(shapes["strings"])
    raw = _length_prefixed(b"x") * (8 * 1024 * 1024 // 5)
    body, length = _body([{"name": "text", "shape": [1], "datatype": "BYTES",
                           "parameters": {"binary_data_size": len(raw)}}], raw)  # fmt: skip
    tracemalloc.start()
    try:
        with pytest.raises(BadRequest, match=r"bytes follow the 1 BYTES elements of shape \[1\]"):
            decode_request(body, length, backend.signature, 64)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1024 * 1024  # the body itself is not traced: it was allocated before


def test_a_json_bytes_element_that_is_not_a_string_is_named(shapes: dict[str, Path]) -> None:
    backend = _loaded(shapes["strings"])
    with pytest.raises(BadRequest, match=r"input 'text' is BYTES: element 1 must be a string"):
        _decode(backend.signature, [
            {"name": "text", "shape": [2], "datatype": "BYTES", "data": ["a", 3]}])  # fmt: skip


def test_grpc_bytes_contents_and_raw_length_prefixed_bytes(shapes: dict[str, Path]) -> None:
    from tritonclient.grpc import service_pb2 as pb

    from gateway.grpc_codec import decode_grpc_request, encode_grpc_response

    backend = _loaded(shapes["strings"])
    typed = pb.ModelInferRequest(model_name="m")
    tensor = typed.inputs.add(name="text", datatype="BYTES", shape=[2])
    tensor.contents.bytes_contents.extend([b"hello", "héllo".encode()])
    raw = pb.ModelInferRequest(model_name="m")
    raw.inputs.add(name="text", datatype="BYTES", shape=[2])
    raw.raw_input_contents.append(_length_prefixed(b"hello", "héllo".encode()))
    for request in (typed, raw):
        decoded = decode_grpc_request(request, backend.signature, 64)
        assert decoded.inputs["text"].tolist() == ["hello", "héllo"]
    answer = asyncio.run(backend.infer(decoded.inputs, ["echo"]))
    response = encode_grpc_response("m", "1", "r", answer)
    assert response.outputs[0].datatype == "BYTES"
    assert response.raw_output_contents[0] == _length_prefixed(b"hello", "héllo".encode())
    broken = pb.ModelInferRequest(model_name="m")
    broken.inputs.add(name="text", datatype="BYTES", shape=[2])
    broken.raw_input_contents.append(_length_prefixed(b"hello") + struct.pack("<I", 9) + b"x")
    with pytest.raises(BadRequest, match=r"input 'text': BYTES element 1 declares 9 bytes"):
        decode_grpc_request(broken, backend.signature, 64)

"""BF16 (ml_dtypes' bfloat16) through the codec, gRPC, the ONNX backend, warm-up, padding and
the shadow's comparisons, on real BF16 ONNX models (``tests.model_shapes``): every answer equals
ONNX Runtime's (run through OrtValues) bit for bit. The end-to-end tests, through a real gateway
and tritonclient, are in ``test_signatures_e2e``."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper
from tritonclient.grpc import service_pb2 as pb

from gateway.backends import onnx as onnx_backend
from gateway.backends.onnx import OnnxBackend
from gateway.codec import RequestedOutput, decode_request, encode_response
from gateway.config import OnnxBackendConfig
from gateway.errors import BackendUnavailable, BadRequest
from gateway.grpc_codec import decode_grpc_request, encode_grpc_response
from gateway.padding import Padding
from gateway.signature import V2_TO_NUMPY, Signature, TensorSpec
from gateway.tasks import compare_logits
from tests import model_shapes

BF16 = V2_TO_NUMPY["BF16"]


def _loaded(path: Path) -> OnnxBackend:
    backend = OnnxBackend("teacher", OnnxBackendConfig(path=path, device="cpu"))
    asyncio.run(backend.load())  # warm-up from the signature runs here: BF16 zeros
    return backend


def _bits(array: np.ndarray) -> list[int]:
    return list(np.ascontiguousarray(array).view(np.uint16).ravel().tolist())


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("bf16")
    return {
        "bf16": model_shapes.write_bf16_model(tmp / "bf16.onnx"),
        "wide": model_shapes.write_bf16_model(tmp / "wide.onnx", features=32, classes=10, seed=1),
        "every": model_shapes.write_every_datatype_model(tmp / "every.onnx", bf16=True),
    }


@pytest.mark.parametrize(("model", "features"), [("bf16", 8), ("wide", 32)])
def test_bf16_in_json_binary_and_grpc_answers_as_onnx_runtime(
    models: dict[str, Path], model: str, features: int
) -> None:
    backend = _loaded(models[model])
    assert backend.signature.input("x") == TensorSpec("x", "BF16", (-1, features),
                                                      axis_names=("batch", None))  # fmt: skip
    x = np.random.default_rng(0).standard_normal((3, features)).astype(BF16)
    shape = [3, features]
    json_body = json.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": shape,
                    "datatype": "BF16",
                    "data": x.astype(np.float32).ravel().tolist(),
                }
            ]
        }
    )
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": shape,
                    "datatype": "BF16",
                    "parameters": {"binary_data_size": 2 * x.size},
                }
            ]
        }
    )
    raw = x.view(np.uint16).astype("<u2").tobytes()  # the binary extension: 2-byte LE elements
    grpc = pb.ModelInferRequest(model_name="m")
    grpc.inputs.add(name="x", datatype="BF16", shape=shape)
    grpc.raw_input_contents.append(raw)
    decoded = [
        decode_request(json_body.encode(), None, backend.signature, 64),
        decode_request(header.encode() + raw, str(len(header)), backend.signature, 64),
        decode_grpc_request(grpc, backend.signature, 64),
    ]  # fmt: skip
    expected = model_shapes.run_onnx(models[model], {"x": x})
    for request in decoded:
        assert request.inputs["x"].dtype == BF16 and _bits(request.inputs["x"]) == _bits(x)
        answer = asyncio.run(backend.infer(request.inputs, ["y", "echo"]))
        assert answer["y"].dtype == BF16 and _bits(answer["y"]) == _bits(expected["y"])
        assert _bits(answer["echo"]) == _bits(x)
    body, length = encode_response(
        "m", "1", "r", answer, [RequestedOutput("y", True), RequestedOutput("echo", False)]
    )
    assert length is not None
    described = json.loads(body[:length])["outputs"]
    assert [d["datatype"] for d in described] == ["BF16", "BF16"]
    assert body[length:] == expected["y"].view(np.uint16).astype("<u2").tobytes()
    assert described[1]["data"] == x.astype(np.float32).ravel().tolist()  # exact numbers
    response = encode_grpc_response("m", "1", "r", {"y": answer["y"]})
    assert response.outputs[0].datatype == "BF16"
    assert response.raw_output_contents[0] == body[length:]


def test_typed_grpc_contents_and_numbers_past_bf16_are_400s(models: dict[str, Path]) -> None:
    """Triton's proto has no BF16 contents field: raw_input_contents only, said in the 400."""
    backend = _loaded(models["bf16"])
    typed = pb.ModelInferRequest(model_name="m")
    tensor = typed.inputs.add(name="x", datatype="BF16", shape=[1, 8])
    tensor.contents.fp32_contents.extend([1.0] * 8)
    with pytest.raises(BadRequest, match="input 'x' is BF16, which has no typed contents field: "
                                         "send it in raw_input_contents"):  # fmt: skip
        decode_grpc_request(typed, backend.signature, 64)
    for beyond in (3.4e38, -3.4e38, 1e39):  # past BF16's 3.39e38 (the last one past FP32's too)
        body = json.dumps({"inputs": [{"name": "x", "shape": [1, 8], "datatype": "BF16",
                                       "data": [beyond] + [0.0] * 7}]}).encode()  # fmt: skip
        with pytest.raises(BadRequest, match="input 'x' holds a number beyond the range of BF16"):
            decode_request(body, None, backend.signature, 64)
    # inf and NaN themselves are BF16 values; only a finite number rounding to inf is refused
    binary = np.array([[np.inf, np.nan, 1, 2, 3, 4, 5, 6]], dtype=BF16)
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": [1, 8],
                    "datatype": "BF16",
                    "parameters": {"binary_data_size": 16},
                }
            ]
        }
    ).encode()
    decoded = decode_request(header + binary.tobytes(), str(len(header)), backend.signature, 64)
    assert _bits(decoded.inputs["x"]) == _bits(binary)


def test_every_numeric_datatype_beside_bf16_in_one_model(models: dict[str, Path]) -> None:
    backend = _loaded(models["every"])
    rng = np.random.default_rng(3)
    given = {f"in_{d}": (rng.random((2, 3)) * 50).astype(V2_TO_NUMPY[d])
             for d in model_shapes.BF16_DATATYPES}  # fmt: skip
    names = [spec.name for spec in backend.signature.outputs]
    answer = asyncio.run(backend.infer(given, names))
    for name, reference in model_shapes.run_onnx(models["every"], given).items():
        assert answer[name].dtype == reference.dtype, name
        assert answer[name].tobytes() == reference.tobytes(), name


def test_only_a_model_with_bf16_takes_the_ortvalue_path(
    models: dict[str, Path], tmp_path: Path
) -> None:
    fp16 = _loaded(model_shapes.write_fp16_model(tmp_path / "fp16.onnx"))
    bf16 = _loaded(models["bf16"])
    assert type(fp16._session) is ort.InferenceSession  # its own run, as before BF16
    assert isinstance(bf16._session, onnx_backend.Bf16Session)


def test_a_bf16_model_with_a_string_input_fails_start_up_naming_both(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"]), helper.make_node("Identity", ["t"], ["u"])],
        "mixed",
        [helper.make_tensor_value_info("x", TensorProto.BFLOAT16, ["batch", 2]),
         helper.make_tensor_value_info("t", TensorProto.STRING, ["batch"])],
        [helper.make_tensor_value_info("y", TensorProto.BFLOAT16, ["batch", 2]),
         helper.make_tensor_value_info("u", TensorProto.STRING, ["batch"])],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "mixed.onnx"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(BackendUnavailable, match=r"BF16 tensor\(s\) \['x', 'y'\] beside string "
                                                 r"input\(s\) \['t'\]"):  # fmt: skip
        _loaded(path)


def test_padding_a_bf16_input_fills_with_its_pad_value() -> None:
    signature = Signature(
        inputs=(TensorSpec("x", "BF16", (-1, -1), max_shape=(-1, 8)),), outputs=()
    )
    short, long = np.ones((1, 2), dtype=BF16), np.full((1, 4), 2, dtype=BF16)
    padded = Padding(signature, {"x": 0.5}).pad([{"x": short}, {"x": long}])
    joined = padded.inputs["x"]
    assert joined.dtype == BF16
    assert joined.astype(np.float32).tolist() == [[1, 1, 0.5, 0.5], [2, 2, 2, 2]]
    assert (padded.padding_elements, padded.elements) == (2, 8)


def test_shadow_comparison_of_bf16_logits_matches_their_fp32_values() -> None:
    teacher = np.array([[2.0, 0.5, -1.0], [0.1, 0.3, 0.2]], dtype=BF16)
    student = np.array([[1.5, 0.75, -1.0], [0.4, 0.1, 0.2]], dtype=BF16)
    got: Any = compare_logits(teacher, student)
    reference: Any = compare_logits(teacher.astype(np.float32), student.astype(np.float32))
    assert (got.examples, got.agreements) == (2, 1)
    np.testing.assert_array_equal(got.kl_per_example, reference.kl_per_example)
    assert (got.kl_per_example > 0).all()

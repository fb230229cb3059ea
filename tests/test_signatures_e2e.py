"""Real ONNX models of several signatures (``tests.model_shapes``) behind a real gateway, reached
with tritonclient unchanged: HTTP with JSON tensors, HTTP with binary tensors, and gRPC. Every
answer equals ONNX Runtime's on the same file bit for bit (all 14 datatypes among them, BF16
through OrtValues); padded
batching of mixed lengths equals the unbatched answers (1e-5 relative, 1e-6 absolute: padding
changes the sums' blocking); bad input is a 400 naming the input, and never costs a good request
its answer.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException

from gateway import metric_names as names
from gateway.signature import V2_TO_NUMPY
from tests import model_shapes
from tests.servers import TestGateway, free_port, wait_until

pytestmark = pytest.mark.e2e
RTOL, ATOL = 1e-5, 1e-6


@dataclass(frozen=True)
class Shape:
    """A model to serve, the config beside it, and example inputs by name with V2 datatypes."""

    write: Callable[[Path], Path]
    config: dict[str, Any]
    inputs: Callable[[], dict[str, tuple[np.ndarray, str]]]


def _text() -> dict[str, tuple[np.ndarray, str]]:
    rows = model_shapes.text_rows(np.random.default_rng(1), [3, 11, 7])
    return {name: (array, "INT64") for name, array in rows.items()}


def _features(n: int) -> Callable[[], dict[str, tuple[np.ndarray, str]]]:
    def make() -> dict[str, tuple[np.ndarray, str]]:
        x = np.random.default_rng(2).standard_normal((4, n)).astype(np.float32)
        return {"features": (x, "FP32")}

    return make


def _every_datatype(bf16: bool = False) -> dict[str, tuple[np.ndarray, str]]:
    rng = np.random.default_rng(4)
    given = {}
    for datatype in model_shapes.BF16_DATATYPES if bf16 else model_shapes.DATATYPES:
        if datatype == "BYTES":
            array = np.array([["a", "bé", ""], ["x", "y z", "!"]], dtype=object)
        elif datatype == "BOOL":
            array = rng.integers(0, 2, (2, 3)).astype(bool)
        else:
            dtype = V2_TO_NUMPY[datatype]
            high = 100 if np.issubdtype(dtype, np.integer) else 1
            array = (rng.random((2, 3)) * high).astype(dtype)
        given[f"in_{datatype}"] = (array, datatype)
    return given


SHAPES = {
    "text-classifier": Shape(
        lambda p: model_shapes.write_text_classifier(p, token_output=True), {}, _text),
    "text-embedder": Shape(model_shapes.write_text_embedder, {"task": "embedding"}, _text),
    "fp16": Shape(model_shapes.write_fp16_model, {}, lambda: {"x": (
        np.random.default_rng(3).standard_normal((5, 8)).astype(np.float16), "FP16")}),
    "strings": Shape(model_shapes.write_string_model,
                     {"task": {"kind": "regression", "output": "score"}},
                     lambda: {"text": (np.array(["hello", "héllo", "", "x y"], dtype=object),
                                       "BYTES")}),
    "multi-output": Shape(model_shapes.write_multi_output_model,
                          {"task": {"output": "probabilities", "scores": "probabilities"}},
                          _features(6)),
    "regression": Shape(model_shapes.write_regression_model, {"task": "regression"},
                        _features(6)),
    "multilabel": Shape(model_shapes.write_multilabel_model, {"task": "multilabel"},
                        _features(6)),
    "every-datatype": Shape(model_shapes.write_every_datatype_model,
                            {"task": {"kind": "regression", "output": "score"}}, _every_datatype),
    "every-datatype-bf16": Shape(lambda p: model_shapes.write_every_datatype_model(p, bf16=True),
                                 {"task": {"kind": "regression", "output": "score"}},
                                 lambda: _every_datatype(bf16=True)),
    "bf16": Shape(model_shapes.write_bf16_model, {"task": {"output": "y"}}, lambda: {"x": (
        np.random.default_rng(6).standard_normal((5, 8)).astype(V2_TO_NUMPY["BF16"]), "BF16")}),
}  # fmt: skip


@dataclass
class Served:
    gateway: TestGateway
    grpc_address: str
    model: Path
    shape: Shape


@pytest.fixture(scope="module", params=list(SHAPES))
def served(
    request: pytest.FixtureRequest, start_gateway: Callable[..., TestGateway],
    tmp_path_factory: pytest.TempPathFactory,
) -> Served:  # fmt: skip
    shape = SHAPES[request.param]
    tmp = tmp_path_factory.mktemp(request.param)
    teacher, student = shape.write(tmp / "teacher.onnx"), shape.write(tmp / "student.onnx")
    grpc_port = free_port()
    gateway = start_gateway({
        "teacher": {"path": str(teacher)}, "student": {"path": str(student)},
        "shadow": {"sample_rate": 0.0}, "grpc": {"port": grpc_port}, **shape.config,
    })  # fmt: skip
    return Served(gateway, f"127.0.0.1:{grpc_port}", teacher, shape)


@pytest.mark.parametrize("protocol", ["http-json", "http-binary", "grpc"])
def test_every_output_equals_onnx_runtime_through_tritonclient(
    served: Served, protocol: str
) -> None:
    given = served.shape.inputs()
    expected = model_shapes.run_onnx(served.model, {n: a for n, (a, _) in given.items()})
    if protocol == "grpc":
        client: Any = triton_grpc.InferenceServerClient(served.grpc_address)
        module: Any = triton_grpc
    else:
        client, module = triton_http.InferenceServerClient(served.gateway.address), triton_http
    binary = protocol != "http-json"
    inputs = []
    for name, (array, datatype) in given.items():
        tensor = module.InferInput(name, list(array.shape), datatype)
        if module is triton_http:  # tritonclient sends BF16 in binary only; answers in JSON
            tensor.set_data_from_numpy(array, binary_data=binary or datatype == "BF16")
        else:
            tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    wanted = [
        module.InferRequestedOutput(name, binary_data=binary)
        if module is triton_http else module.InferRequestedOutput(name)
        for name in expected
    ]  # fmt: skip
    result = client.infer("digits", inputs, outputs=wanted)
    metadata = client.get_model_metadata("digits", as_json=True) if module is triton_grpc else \
        client.get_model_metadata("digits")  # fmt: skip
    assert [i["name"] for i in metadata["inputs"]] == list(given)
    for name, reference in expected.items():
        answer = result.as_numpy(name)
        assert answer is not None and answer.shape == reference.shape, name
        if reference.dtype == object:  # strings: bytes from binary, str from JSON, as Triton's
            texts = [a.decode() if isinstance(a, bytes) else a for a in answer.ravel()]
            assert texts == reference.ravel().tolist()
        else:  # bit for bit: BF16 compared as its bits (NaN == NaN there too)
            assert answer.dtype == reference.dtype, name
            if reference.dtype == V2_TO_NUMPY["BF16"]:
                answer, reference = answer.view(np.uint16), reference.view(np.uint16)
            np.testing.assert_array_equal(answer, reference, err_msg=name)


def test_bf16_as_json_numbers_in_and_out(
    start_gateway: Callable[..., TestGateway], tmp_path: Path
) -> None:
    """JSON numbers in, rounded to the nearest BF16 (ties to even); answers as the BF16 values'
    exact numbers; a number past BF16's range is a 400 naming the input."""
    model = model_shapes.write_bf16_model(tmp_path / "bf16.onnx")
    gateway = start_gateway({"teacher": {"path": str(model)}, "student": {"path": str(model)},
                             "shadow": {"sample_rate": 0.0}, "task": {"output": "y"}})  # fmt: skip
    # 1.00390625 lies halfway between BF16's 1 and 1.0078125: it rounds to the even one, 1.
    given = [1.00390625, -2.5, 0.1, 3.0e38, 1e-40, 0.0, 7.0, 1.01171875]
    url = f"{gateway.url}/v2/models/digits/infer"

    def body(data: list[float]) -> dict[str, Any]:
        return {"inputs": [{"name": "x", "shape": [1, 8], "datatype": "BF16", "data": data}],
                "outputs": [{"name": "echo"}, {"name": "y"}]}  # fmt: skip

    answer = httpx.post(url, json=body(given), timeout=30)
    assert answer.status_code == 200, answer.text
    outputs = {o["name"]: o for o in answer.json()["outputs"]}
    rounded = np.asarray(given, dtype=np.float32).astype(V2_TO_NUMPY["BF16"]).reshape(1, 8)
    assert outputs["echo"]["datatype"] == "BF16"
    assert outputs["echo"]["data"][:2] == [1.0, -2.5]  # the tie went to the even neighbour
    # Each number reads back (as FP32, then BF16) to exactly the BF16 the model saw and gave.
    echoed = np.asarray(outputs["echo"]["data"], np.float32).astype(V2_TO_NUMPY["BF16"])
    np.testing.assert_array_equal(echoed.view(np.uint16), rounded.ravel().view(np.uint16))
    expected = model_shapes.run_onnx(model, {"x": rounded})["y"].ravel()
    answered = np.asarray(outputs["y"]["data"], np.float32).astype(V2_TO_NUMPY["BF16"])
    np.testing.assert_array_equal(answered.view(np.uint16), expected.view(np.uint16))
    beyond = [3.4e38, *given[1:]]  # past BF16's 3.39e38, within FP32's
    refused = httpx.post(url, json=body(beyond), timeout=30)
    assert refused.status_code == 400
    assert "input 'x' holds a number beyond the range of BF16" in refused.json()["error"]


def test_bf16_logits_are_compared_in_the_shadow(
    start_gateway: Callable[..., TestGateway], tmp_path: Path
) -> None:
    """A BF16 teacher and student: every request compared, agreements as their argmaxes say."""
    teacher = model_shapes.write_bf16_model(tmp_path / "teacher.onnx", features=8, classes=3)
    student = model_shapes.write_bf16_model(tmp_path / "student.onnx", features=8, classes=3,
                                            seed=1)  # fmt: skip
    gateway = start_gateway({"teacher": {"path": str(teacher)}, "student": {"path": str(student)},
                             "shadow": {"sample_rate": 1.0}, "task": {"output": "y"}})  # fmt: skip
    x = np.random.default_rng(8).standard_normal((24, 8)).astype(V2_TO_NUMPY["BF16"])
    client = triton_http.InferenceServerClient(gateway.address)
    for row in x:
        tensor = triton_http.InferInput("x", [1, 8], "BF16")
        tensor.set_data_from_numpy(row[None])
        client.infer("digits", [tensor])
    agree = int((model_shapes.run_onnx(teacher, {"x": x})["y"].argmax(1)
                 == model_shapes.run_onnx(student, {"x": x})["y"].argmax(1)).sum())  # fmt: skip
    assert 0 < agree < len(x)  # both outcomes occur, so the count can be wrong either way
    wait_until(lambda: gateway.metric(names.SHADOW_COMPARISONS, model="digits") == len(x),
               timeout=30, what="every request's comparison")  # fmt: skip
    assert gateway.metric(names.SHADOW_AGREEMENTS, model="digits") == agree
    assert gateway.total(names.SHADOW_KL + "_count", model="digits") == len(x)


def test_bf16_requests_batched_into_one_call_each_get_their_own_rows(
    start_gateway: Callable[..., TestGateway], tmp_path: Path
) -> None:
    """Eight BF16 requests of 1-3 rows joined into one call: each gets its own rows back, its
    echo bit for bit, its logits within one BF16 step of the model alone (a larger matrix
    product may sum in another order before the cast to BF16)."""
    model = model_shapes.write_bf16_model(tmp_path / "bf16.onnx")
    batching = {"max_batch_size": 16, "max_delay_us": 1_000_000}
    gateway = start_gateway({
        "teacher": {"path": str(model), "batching": batching}, "student": {"path": str(model)},
        "shadow": {"sample_rate": 0.0}, "task": {"output": "y"},
        "overload": {"max_queue_ms": 60_000}, "resilience": {"request_timeout_ms": 60_000},
    })  # fmt: skip
    rng = np.random.default_rng(10)
    requests = [rng.standard_normal((rows, 8)).astype(V2_TO_NUMPY["BF16"])
                for rows in (1, 3, 2, 1, 2, 3, 1, 3)]  # 16 rows: one full call  # fmt: skip

    def infer(x: np.ndarray) -> Any:
        tensor = triton_http.InferInput("x", list(x.shape), "BF16")
        tensor.set_data_from_numpy(x)
        return triton_http.InferenceServerClient(gateway.address).infer("digits", [tensor])

    with ThreadPoolExecutor(len(requests)) as pool:
        answers = list(pool.map(infer, requests))
    calls = gateway.total("gateway_batch_size_count")  # the warm-up calls are not batched
    assert (calls, gateway.total("gateway_batch_size_sum")) == (1, 16)
    for x, answer in zip(requests, answers, strict=True):
        alone = model_shapes.run_onnx(model, {"x": x})
        assert answer.as_numpy("echo").view(np.uint16).tolist() == x.view(np.uint16).tolist()
        y = answer.as_numpy("y")
        assert y.dtype == V2_TO_NUMPY["BF16"] and y.shape == alone["y"].shape
        step = np.abs(alone["y"].astype(np.float32)) * 2.0**-7  # one BF16 step (8-bit mantissa)
        assert (np.abs(y.astype(np.float32) - alone["y"].astype(np.float32)) <= step).all()


# -- padded batching and bad input, on the text classifier ----------------------------------

BATCH = 8  # requests that fill one call: it leaves when they are all in, whatever the timing


@pytest.fixture(scope="module")
def padded(start_gateway: Callable[..., TestGateway], tmp_path_factory: pytest.TempPathFactory
           ) -> tuple[TestGateway, Path]:  # fmt: skip
    tmp = tmp_path_factory.mktemp("padded")
    model = model_shapes.write_text_classifier(tmp / "text.onnx", token_output=True)
    batching = {"max_batch_size": BATCH, "max_delay_us": 1_000_000, "pad": True}
    gateway = start_gateway({
        "teacher": {"path": str(model), "batching": batching}, "student": {"path": str(model)},
        "shadow": {"sample_rate": 0.0}, "overload": {"max_queue_ms": 60_000},
        "resilience": {"request_timeout_ms": 60_000},
        "inputs": {"input_ids": {"max_shape": [-1, 64]}},
    })  # fmt: skip
    return gateway, model


def _infer_json(gateway: TestGateway, rows: dict[str, np.ndarray]) -> httpx.Response:
    body = {"inputs": [{"name": n, "shape": list(a.shape), "datatype": "INT64",
                        "data": a.ravel().tolist()} for n, a in rows.items()]}  # fmt: skip
    return httpx.post(f"{gateway.url}/v2/models/digits/infer", json=body, timeout=60)


def test_mixed_lengths_batched_with_padding_equal_the_model_alone_and_bad_ones_are_400(
    padded: tuple[TestGateway, Path],
) -> None:
    gateway, model = padded
    rng = np.random.default_rng(5)
    lengths = [1, 64, 5, 17, 2, 33, 9, 12]
    goods = [model_shapes.text_rows(rng, [n]) for n in lengths]
    too_long = model_shapes.text_rows(rng, [65])
    no_mask = {"input_ids": goods[0]["input_ids"]}
    with ThreadPoolExecutor(len(goods) + 2) as pool:
        bad_answers = [pool.submit(_infer_json, gateway, bad) for bad in (too_long, no_mask)]
        answers = list(pool.map(lambda rows: _infer_json(gateway, rows), goods))
    assert [a.result().status_code for a in bad_answers] == [400, 400]
    assert "input 'input_ids' has size 65 on axis 1; the gateway accepts at most 64" in \
        bad_answers[0].result().json()["error"]  # fmt: skip
    assert "missing input(s): 'attention_mask' (INT64 [-1, -1])" in \
        bad_answers[1].result().json()["error"]  # fmt: skip
    for rows, answer in zip(goods, answers, strict=True):
        assert answer.status_code == 200, answer.text
        outputs = {o["name"]: np.array(o["data"]).reshape(o["shape"])
                   for o in answer.json()["outputs"]}  # fmt: skip
        alone = model_shapes.run_onnx(model, rows)
        for name, reference in alone.items():
            assert outputs[name].shape == reference.shape  # token_scores cut back
            np.testing.assert_allclose(outputs[name], reference, rtol=RTOL, atol=ATOL)
    # all eight in one call of 8 rows x 64 tokens; the waste is what padding added
    assert gateway.metric("gateway_batch_size_count", backend="teacher") == 1
    assert gateway.metric("gateway_batch_size_sum", backend="teacher") == BATCH
    elements = 2 * BATCH * 64
    assert gateway.metric("gateway_batch_padded_call_elements_total", backend="teacher") == elements
    assert gateway.metric("gateway_batch_padding_elements_total", backend="teacher") == \
        elements - 2 * sum(lengths)  # fmt: skip


def test_bad_input_reaches_tritonclient_as_the_400_message(
    padded: tuple[TestGateway, Path],
) -> None:
    gateway, _ = padded
    client = triton_http.InferenceServerClient(gateway.address)
    ids = triton_http.InferInput("input_ids", [1, 3], "INT32")
    ids.set_data_from_numpy(np.ones((1, 3), dtype=np.int32))
    mask = triton_http.InferInput("attention_mask", [1, 3], "INT64")
    mask.set_data_from_numpy(np.ones((1, 3), dtype=np.int64))
    with pytest.raises(
        InferenceServerException,
        match=r"input 'input_ids' has datatype INT32; the model expects INT64",
    ):
        client.infer("digits", [ids, mask])  # fmt: skip

"""The Open Inference Protocol over gRPC: tritonclient.grpc (and its asyncio client) against a real
gateway, unchanged; the same routing, errors and metrics as HTTP; grpc.health.v1.

The failures a real backend cannot be made to produce on cue (a teacher that fails, one that is
not ready) run against the real gRPC server over scripted backends (tests/fake_backend.py)."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.grpc.aio as triton_grpc_aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from controller.local.traffic import TrafficGenerator
from models.data import Split
from tests.fake_backend import Behaviour, grpc_endpoint, in_process_gateway
from tests.servers import BIN, TestGateway, busy_port, free_port

Model = Callable[[np.ndarray], np.ndarray]


GRPC_PORTS: dict[str, int] = {}  # a gateway's HTTP address -> its gRPC port


@pytest.fixture(scope="module")
def grpc_gateway(start_gateway: Callable[..., TestGateway]) -> TestGateway:
    port = free_port()
    gateway = start_gateway({"shadow": {"sample_rate": 0.0}, "grpc": {"port": port}})
    GRPC_PORTS[gateway.address] = port
    return gateway


def _address(gateway: TestGateway) -> str:
    return f"127.0.0.1:{GRPC_PORTS[gateway.address]}"


@pytest.fixture(scope="module")
def stub(grpc_gateway: TestGateway) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(_address(grpc_gateway)) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def _pixels(x: np.ndarray) -> triton_grpc.InferInput:
    tensor = triton_grpc.InferInput("pixels", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    return tensor


def test_health_and_metadata_through_tritonclient(grpc_gateway: TestGateway) -> None:
    client = triton_grpc.InferenceServerClient(_address(grpc_gateway))
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("digits") and client.is_model_ready("digits", "1")
    metadata = client.get_model_metadata("digits", as_json=True)
    assert metadata["versions"] == ["1"]
    assert metadata["inputs"] == [{"name": "pixels", "datatype": "FP32", "shape": ["-1", "64"]}]
    assert metadata["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": ["-1", "10"]}]
    server = client.get_server_metadata(as_json=True)
    assert server["name"] == "distill-gateway" and server["extensions"] == ["binary_tensor_data"]


@pytest.mark.parametrize("batch", [1, 64, 256])
@pytest.mark.parametrize("backend", ["teacher", "student"])
def test_inference_equals_onnx_runtime_on_the_same_file(
    grpc_gateway: TestGateway,
    test_split: Split,
    teacher_direct: Model,
    student_direct: Model,
    batch: int,
    backend: str,
) -> None:
    client = triton_grpc.InferenceServerClient(_address(grpc_gateway))
    x = np.resize(test_split.x, (batch, 64)).astype(np.float32)
    result = client.infer("digits", [_pixels(x)], headers={"x-canary": backend},
                          outputs=[triton_grpc.InferRequestedOutput("logits")])  # fmt: skip
    direct = teacher_direct if backend == "teacher" else student_direct
    np.testing.assert_allclose(result.as_numpy("logits"), direct(x), rtol=1e-5, atol=1e-5)
    assert result.get_response().model_version == "1"


def test_the_asyncio_client_works_too(grpc_gateway: TestGateway, test_split: Split) -> None:
    async def infer() -> np.ndarray:
        client = triton_grpc_aio.InferenceServerClient(_address(grpc_gateway))
        try:
            assert await client.is_server_ready()
            tensor = triton_grpc_aio.InferInput("pixels", [8, 64], "FP32")
            tensor.set_data_from_numpy(test_split.x[:8])
            result = await client.infer("digits", [tensor], request_id="aio-1")
            assert result.get_response().id == "aio-1"
            return result.as_numpy("logits")  # type: ignore[no-any-return]
        finally:
            await client.close()

    assert asyncio.run(infer()).shape == (8, 10)


def _request(x: np.ndarray, typed: bool = False, **fields: Any) -> pb.ModelInferRequest:
    tensor = pb.ModelInferRequest.InferInputTensor(name="pixels", datatype="FP32",
                                                   shape=list(x.shape))  # fmt: skip
    request = pb.ModelInferRequest(model_name="digits", inputs=[tensor], **fields)
    if typed:
        tensor.contents.fp32_contents.extend(x.reshape(-1).tolist())
        request.inputs[0].CopyFrom(tensor)
    else:
        request.raw_input_contents.append(x.tobytes())
    return request


def test_typed_contents_answer_as_raw_contents_do(
    stub: pb_grpc.GRPCInferenceServiceStub, test_split: Split, teacher_direct: Model
) -> None:
    x = test_split.x[:4]
    for typed in (False, True):
        response, call = stub.ModelInfer.with_call(_request(x, typed, id=f"typed-{typed}"),
                                                   metadata=[("x-canary", "teacher")])  # fmt: skip
        logits = np.frombuffer(response.raw_output_contents[0], np.float32).reshape(4, 10)
        np.testing.assert_allclose(logits, teacher_direct(x), rtol=1e-5, atol=1e-5)
        metadata = dict(call.initial_metadata())
        assert len(metadata.pop("x-feedback-ticket")) == 32
        assert metadata == {"x-served-by": "teacher", "x-request-id": f"typed-{typed}"}
        assert response.id == f"typed-{typed}" and response.outputs[0].shape == [4, 10]


def test_a_routing_key_lands_on_the_same_backend_through_either_protocol(
    grpc_gateway: TestGateway, stub: pb_grpc.GRPCInferenceServiceStub, test_split: Split
) -> None:
    grpc_gateway.set_share(0.5)
    try:
        body = {"inputs": [{"name": "pixels", "shape": [1, 64], "datatype": "FP32",
                            "data": test_split.x[0].tolist()}]}  # fmt: skip
        by_protocol: dict[str, list[str]] = {"http": [], "grpc": []}
        for user in range(40):
            key = [("x-routing-key", f"user-{user}")]
            _, call = stub.ModelInfer.with_call(_request(test_split.x[:1]), metadata=key)
            by_protocol["grpc"].append(dict(call.initial_metadata())["x-served-by"])
            answer = httpx.post(f"{grpc_gateway.url}/v2/models/digits/infer", json=body,
                                headers=dict(key))  # fmt: skip
            by_protocol["http"].append(answer.headers["x-served-by"])
        assert by_protocol["grpc"] == by_protocol["http"]
        assert set(by_protocol["grpc"]) == {"teacher", "student"}  # the keys do split
    finally:
        grpc_gateway.set_share(0.0)


def _http_error(gateway: TestGateway, body: dict[str, Any]) -> str:
    answer = httpx.post(f"{gateway.url}/v2/models/digits/infer", json=body)
    assert answer.status_code == 400
    return str(answer.json()["error"])


def test_mistakes_map_to_grpc_codes_with_the_http_paths_message(
    grpc_gateway: TestGateway, stub: pb_grpc.GRPCInferenceServiceStub, test_split: Split
) -> None:
    x = test_split.x[:2]

    def code_and_message(request: pb.ModelInferRequest) -> tuple[grpc.StatusCode, str]:
        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelInfer(request)
        return caught.value.code(), caught.value.details()

    unknown = _request(x)
    unknown.model_name = "nope"
    assert code_and_message(unknown) == (
        grpc.StatusCode.NOT_FOUND,
        "unknown model 'nope'; this gateway serves 'digits'",
    )
    versioned = _request(x, model_version="2")
    assert code_and_message(versioned)[0] is grpc.StatusCode.NOT_FOUND
    bad_shape = _request(x)
    bad_shape.inputs[0].shape[:] = [2, 63]
    http = _http_error(
        grpc_gateway,
        {"inputs": [{"name": "pixels", "shape": [2, 63], "datatype": "FP32", "data": [0] * 126}]},
    )
    assert code_and_message(bad_shape) == (grpc.StatusCode.INVALID_ARGUMENT, http)
    bad_type = _request(x)
    bad_type.inputs[0].datatype = "INT32"
    assert code_and_message(bad_type) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "input 'pixels' has datatype INT32; the model expects FP32",
    )
    short = _request(x)
    short.raw_input_contents[0] = x.tobytes()[:-4]
    assert code_and_message(short)[1] == (
        "input 'pixels' has binary_data_size 508, but shape [2, 64] of FP32 needs 512 bytes"
    )
    unknown_output = _request(
        x, outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name="probs")]
    )
    assert code_and_message(unknown_output) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "unknown output 'probs'; the model's outputs are: logits",
    )
    no_inputs = pb.ModelInferRequest(model_name="digits")
    assert code_and_message(no_inputs)[1].startswith("invalid inference request: inputs:")
    forced = stub.ModelInfer.with_call
    with pytest.raises(grpc.RpcError) as caught:
        forced(_request(x), metadata=[("x-canary", "nobody")])
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    # over max_request_bytes (8 MiB): refused by gRPC itself before it is read
    huge = _request(np.zeros((40_000, 64), np.float32))
    assert code_and_message(huge)[0] is grpc.StatusCode.RESOURCE_EXHAUSTED
    # each is counted once, as its HTTP equivalent, under protocol="grpc" (but the unknown model's,
    # whose name a client picks and no label takes, and the last: gRPC refuses an oversized
    # message before the gateway sees it)
    counted = {code: grpc_gateway.metric("gateway_requests_total", backend="none", code=code,
                                         protocol="grpc") for code in ("404", "400")}  # fmt: skip
    assert counted == {"404": 1, "400": 6}


def test_rpcs_it_does_not_implement_say_what_to_use(
    stub: pb_grpc.GRPCInferenceServiceStub,
) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelStatistics(pb.ModelStatisticsRequest(name="digits"))
    assert caught.value.code() is grpc.StatusCode.UNIMPLEMENTED
    assert "Prometheus metrics at /metrics" in caught.value.details()
    with pytest.raises(grpc.RpcError) as streamed:
        list(stub.ModelStreamInfer(iter([pb.ModelInferRequest(model_name="digits")])))
    assert streamed.value.code() is grpc.StatusCode.UNIMPLEMENTED


def test_grpc_requests_are_counted_in_the_same_series(
    grpc_gateway: TestGateway, test_split: Split
) -> None:
    before = grpc_gateway.metric("gateway_requests_total", backend="student", code="200",
                                 protocol="grpc")  # fmt: skip
    client = triton_grpc.InferenceServerClient(_address(grpc_gateway))
    for _ in range(3):
        client.infer("digits", [_pixels(test_split.x[:2])], headers={"x-canary": "student"})
    assert grpc_gateway.metric("gateway_requests_total", backend="student", code="200",
                               protocol="grpc") == before + 3  # fmt: skip
    assert grpc_gateway.metric("gateway_request_duration_seconds_count", backend="student",
                               protocol="grpc") >= 3  # fmt: skip


def test_the_standard_health_service_answers_kubernetes_probes(grpc_gateway: TestGateway) -> None:
    with grpc.insecure_channel(_address(grpc_gateway)) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "inference.GRPCInferenceService"):
            answer = health.Check(health_pb2.HealthCheckRequest(service=service))
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as caught:
            health.Check(health_pb2.HealthCheckRequest(service="other"))
        assert caught.value.code() is grpc.StatusCode.NOT_FOUND


def test_a_failing_teacher_is_unavailable_and_its_readiness_is_served_false() -> None:
    async def scenario() -> None:
        async with in_process_gateway() as gateway, grpc_endpoint(gateway) as address:
            gateway.teacher.behaviour = Behaviour.FAIL
            async with grpc.aio.insecure_channel(address) as channel:
                stub = pb_grpc.GRPCInferenceServiceStub(channel)
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await stub.ModelInfer(_request(np.ones((1, 64), np.float32)))
                assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
                assert caught.value.details() == (
                    "teacher backend unavailable: teacher runtime error (scripted)"
                )
                health = health_pb2_grpc.HealthStub(channel)
                gateway.teacher.ready = False
                ready = await stub.ServerReady(pb.ServerReadyRequest())
                checked = await health.Check(health_pb2.HealthCheckRequest())
                assert not ready.ready
                assert checked.status == health_pb2.HealthCheckResponse.NOT_SERVING
            assert gateway.metric("gateway_requests_total", backend="teacher", code="503",
                                  protocol="grpc") == 1  # fmt: skip

    asyncio.run(scenario())


@pytest.mark.e2e  # starts distill-gateway
def test_a_grpc_port_in_use_is_found_before_the_models_load() -> None:
    with busy_port() as port:
        result = subprocess.run(
            [str(BIN / "distill-gateway"), "--port", str(free_port()), "--grpc-port", str(port)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert result.returncode == 3
    # one line, and nothing loaded first (the loads log a line each)
    assert result.stderr.strip() == (
        f"distill-gateway: cannot listen on 127.0.0.1:{port}: Address already in use"
    )


def test_the_traffic_generator_drives_grpc_and_labels_every_answer(
    grpc_gateway: TestGateway,
) -> None:
    grpc_gateway.set_share(0.5)
    try:
        generator = TrafficGenerator(grpc_gateway.url, grpc_address=_address(grpc_gateway))
        report = generator.run(requests=80, workers=2)
    finally:
        grpc_gateway.set_share(0.0)
    assert not report.errors and len(report.samples) == 80
    assert {sample.backend for sample in report.samples} == {"teacher", "student"}
    assert sum(bool(sample.correct) for sample in report.samples) >= 0.9 * 80

"""Load shedding: beyond overload.max_inflight a request is refused at once (503 and Retry-After,
gRPC UNAVAILABLE), counted, and never queued; the requests already admitted are served."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from gateway.config import (
    GatewaySettings,
    OnnxBackendConfig,
    OverloadConfig,
    TritonBackendConfig,
)
from gateway.overload import default_max_inflight
from models import TEACHER_PATH
from tests.fake_backend import Behaviour, InProcessGateway, grpc_endpoint, in_process_gateway


async def _hold_two(gateway: InProcessGateway) -> list[asyncio.Task[Any]]:
    """Two slow requests in flight, admitted before this returns."""
    gateway.teacher.behaviour = Behaviour.SLOW
    gateway.teacher.delay = 0.3
    held = [asyncio.create_task(gateway.infer()) for _ in range(2)]
    deadline = asyncio.get_running_loop().time() + 2.0
    while gateway.metric("gateway_inflight_requests") < 2:
        assert asyncio.get_running_loop().time() < deadline, "the two requests never arrived"
        await asyncio.sleep(0.005)
    return held


def test_a_request_beyond_max_inflight_is_shed_at_once_and_counted() -> None:
    async def main() -> None:
        async with in_process_gateway(overload={"max_inflight": 2}) as gateway:
            held = await _hold_two(gateway)
            started = asyncio.get_running_loop().time()
            shed = await gateway.infer()
            waited = asyncio.get_running_loop().time() - started
            assert shed.status_code == 503
            assert shed.headers["retry-after"] == "1"
            assert shed.headers["x-request-id"]
            assert (
                "overloaded: 2 requests in flight (overload.max_inflight is 2)"
                in (shed.json()["error"])
            )
            assert waited < 0.2  # answered at once, not after the held requests
            assert [answer.status_code for answer in await asyncio.gather(*held)] == [200, 200]
            assert (await gateway.infer()).status_code == 200  # room again
            assert gateway.metric("gateway_shed_total", reason="max_inflight") == 1
            assert gateway.metric("gateway_requests_total", backend="none", code="503",
                                  protocol="http") == 1  # fmt: skip
            assert gateway.metric("gateway_inflight_requests") == 0

    asyncio.run(main())


def test_grpc_is_shed_with_unavailable_and_a_retry_after() -> None:
    async def main() -> None:
        overload = {"max_inflight": 2, "retry_after_seconds": 3}
        async with (
            in_process_gateway(overload=overload) as gateway,
            grpc_endpoint(gateway) as address,
        ):
            held = await _hold_two(gateway)
            async with grpc.aio.insecure_channel(address) as channel:
                stub = pb_grpc.GRPCInferenceServiceStub(channel)
                request = pb.ModelInferRequest(model_name="digits")
                tensor = request.inputs.add(name="pixels", datatype="FP32", shape=[1, 64])
                tensor.contents.fp32_contents.extend([1.0] * 64)
                call = stub.ModelInfer(request)
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await call
                assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
                assert "overload.max_inflight is 2" in (caught.value.details() or "")
                assert ("retry-after", "3") in tuple(await call.trailing_metadata() or ())
            await asyncio.gather(*held)
            assert gateway.metric("gateway_requests_total", backend="none", code="503",
                                  protocol="grpc") == 1  # fmt: skip
            assert gateway.metric("gateway_shed_total", reason="max_inflight") == 1

    asyncio.run(main())


def test_the_default_limit_is_sized_from_the_backends_capacity() -> None:
    shipped = GatewaySettings()
    assert default_max_inflight(shipped) == 2 * (2 + 2)
    wider = GatewaySettings(
        teacher=OnnxBackendConfig(path=TEACHER_PATH, max_concurrency=6),
        student=TritonBackendConfig(kind="triton", url="triton:8001", model_name="student"),
    )
    assert default_max_inflight(wider) == 2 * (6 + 8)
    assert GatewaySettings(overload=OverloadConfig(max_inflight=3)).overload.max_inflight == 3


def test_a_shed_request_is_not_decoded() -> None:
    """Refused before its body is read: shedding must be cheaper than serving."""

    async def main() -> None:
        async with in_process_gateway(overload={"max_inflight": 2}) as gateway:
            held = await _hold_two(gateway)
            garbage = await gateway.client.post("/v2/models/digits/infer", content=b"{not json")
            assert garbage.status_code == 503  # not the 400 that decoding it would give
            await asyncio.gather(*held)
            garbage = await gateway.client.post("/v2/models/digits/infer", content=b"{not json")
            assert garbage.status_code == 400

    asyncio.run(main())


def test_inflight_is_released_whatever_the_outcome() -> None:
    async def main() -> None:
        async with in_process_gateway(overload={"max_inflight": 1}) as gateway:
            for behaviour in (Behaviour.FAIL, Behaviour.CRASH, Behaviour.REJECT):
                gateway.teacher.behaviour = behaviour
                assert (await gateway.infer()).status_code in (400, 500, 503)
            bad = await gateway.client.post("/v2/models/digits/infer", content=b"[]")
            assert bad.status_code == 400
            gateway.teacher.behaviour = Behaviour.ANSWER
            assert (await gateway.infer()).status_code == 200
            assert gateway.metric("gateway_shed_total", reason="max_inflight") == 0
            assert np.isclose(gateway.metric("gateway_inflight_requests"), 0)

    asyncio.run(main())

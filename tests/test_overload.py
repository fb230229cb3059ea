"""Admission by time: a request waits for its backend at most overload.max_queue_ms and is shed
(503 and Retry-After, gRPC UNAVAILABLE) only when it could not start in time; a request whose
deadline passed is never started; max_inflight is a memory bound. Over scripted backends whose
call time the test sets; tests/test_slow_clients.py holds the real-gateway, raw-socket ones."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from gateway.config import GatewaySettings
from tests.fake_backend import Behaviour, InProcessGateway, grpc_endpoint, in_process_gateway

BODY = {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 64], "data": [1.0] * 64}]}


async def _hold_two(gateway: InProcessGateway) -> list[asyncio.Task[Any]]:
    """Two slow requests held (the teacher's two slots), before this returns."""
    gateway.teacher.behaviour = Behaviour.SLOW
    gateway.teacher.delay = 0.3
    held = [asyncio.create_task(gateway.infer()) for _ in range(2)]
    deadline = asyncio.get_running_loop().time() + 2.0
    while gateway.teacher.calls < 2:
        assert asyncio.get_running_loop().time() < deadline, "the two requests never arrived"
        await asyncio.sleep(0.005)
    return held


def test_the_defaults_queue_for_100_ms_and_bound_memory_only() -> None:
    overload = GatewaySettings().overload
    assert overload.max_queue_ms == 100
    assert overload.max_inflight == 4096


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
            assert "2 requests held (overload.max_inflight is 2)" in shed.json()["error"]
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
                call = stub.ModelInfer(_grpc_request())
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


def _grpc_request(timeout_us: int | None = None) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="digits")
    tensor = request.inputs.add(name="pixels", datatype="FP32", shape=[1, 64])
    tensor.contents.fp32_contents.extend([1.0] * 64)
    if timeout_us is not None:
        request.parameters["timeout"].int64_param = timeout_us
    return request


def test_a_request_counts_once_its_body_is_decoded() -> None:
    """A malformed body is a 400 even when the gateway is full: nothing was held for it."""

    async def main() -> None:
        async with in_process_gateway(overload={"max_inflight": 2}) as gateway:
            held = await _hold_two(gateway)
            garbage = await gateway.client.post("/v2/models/digits/infer", content=b"{not json")
            assert garbage.status_code == 400
            await asyncio.gather(*held)

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


def test_a_burst_the_backend_serves_within_the_target_queues_and_is_served_in_full() -> None:
    """40 requests at once on a teacher of 10 ms calls and 8 slots (2 threads x 4): 40 ms of
    queue at most, within the 100 ms target, so every one is served, none shed."""

    async def main() -> None:
        async with in_process_gateway() as gateway:
            gateway.teacher.behaviour, gateway.teacher.delay = Behaviour.SLOW, 0.01
            answers = await asyncio.gather(*(gateway.infer() for _ in range(40)))
            assert [answer.status_code for answer in answers] == [200] * 40
            assert gateway.metric("gateway_shed_total", reason="queue_full") == 0
            assert gateway.metric("gateway_shed_total", reason="queue_timeout") == 0
            waited = gateway.metric("gateway_queue_delay_seconds_count", backend="teacher")
            assert waited == 40
            assert gateway.metric("gateway_queue_delay_seconds_sum", backend="teacher") > 0

    asyncio.run(main())


def test_shedding_starts_only_where_the_wait_would_pass_the_target() -> None:
    """8 slots of 50 ms calls and a 120 ms target: the 8 that start at once and the 16 whose
    line is at most two calls deep are served; the rest are shed at once, with the reason, never
    reach the backend, and are not even decoded (a malformed body is a 503 then, not a 400)."""

    async def main() -> None:
        async with in_process_gateway(overload={"max_queue_ms": 120}) as gateway:
            gateway.teacher.behaviour, gateway.teacher.delay = Behaviour.SLOW, 0.05
            for _ in range(3):  # the queue learns the teacher's call time
                assert (await gateway.infer()).status_code == 200
            calls_before = gateway.teacher.calls
            answers = await asyncio.gather(*(gateway.infer() for _ in range(40)))
            codes = [answer.status_code for answer in answers]
            served, shed = codes.count(200), codes.count(503)
            assert served + shed == 40
            assert 16 <= served <= 32 and shed >= 8  # 8 running + 16 queued (+ timing slack)
            assert gateway.teacher.calls - calls_before == served
            refused = [answer for answer in answers if answer.status_code == 503]
            assert all(answer.headers["retry-after"] == "1" for answer in refused)
            assert all("the most a request waits is 120 ms" in answer.json()["error"]
                       for answer in refused)  # fmt: skip
            assert gateway.metric("gateway_shed_total", reason="queue_full") == shed
            # no backend's answer nor error: counted with none, kept out of the error rate
            assert gateway.metric("gateway_requests_total", backend="none", code="503",
                                  protocol="http") == shed  # fmt: skip
            assert gateway.metric("gateway_circuit_state", backend="teacher",
                                  state="closed") == 1  # fmt: skip
            held = [asyncio.create_task(gateway.infer()) for _ in range(40)]
            while gateway.teacher.calls - calls_before < served + 8:
                await asyncio.sleep(0.005)
            garbage = await gateway.client.post("/v2/models/digits/infer", content=b"{not json")
            assert garbage.status_code == 503  # shed before it was decoded
            await asyncio.gather(*held)

    asyncio.run(main())


def test_a_wait_that_reaches_the_target_is_shed_then() -> None:
    """The estimate says 10 ms, the teacher now takes 800 ms: the queued requests leave after
    the 100 ms target, long before the slow calls end, and are counted as queue_timeout."""

    async def main() -> None:
        async with in_process_gateway() as gateway:
            gateway.teacher.behaviour, gateway.teacher.delay = Behaviour.SLOW, 0.01
            for _ in range(3):
                assert (await gateway.infer()).status_code == 200
            gateway.teacher.delay = 0.8
            slow = [asyncio.create_task(gateway.infer()) for _ in range(8)]  # every slot
            while gateway.teacher.calls < 11:
                await asyncio.sleep(0.005)
            loop = asyncio.get_running_loop()
            started = loop.time()
            queued = await asyncio.gather(*(gateway.infer() for _ in range(2)))
            assert [answer.status_code for answer in queued] == [503, 503]
            assert loop.time() - started < 0.6  # not after the 800 ms calls
            assert gateway.metric("gateway_shed_total", reason="queue_timeout") == 2
            assert gateway.teacher.calls == 11
            assert [answer.status_code for answer in await asyncio.gather(*slow)] == [200] * 8

    asyncio.run(main())


def test_a_request_whose_deadline_passed_is_never_started_and_is_not_the_backends_fault() -> None:
    """The client's own deadline (the V2 timeout parameter, microseconds as Triton reads it) has
    passed by the time the request could start: 503, reason deadline, no backend call, and ten
    such requests leave the teacher's circuit closed."""

    async def main() -> None:
        async with in_process_gateway() as gateway:
            expired = {**BODY, "parameters": {"timeout": 1}}
            for _ in range(10):
                answer = await gateway.client.post("/v2/models/digits/infer", json=expired)
                assert answer.status_code == 503
                assert "deadline passed" in answer.json()["error"]
            assert gateway.teacher.calls == 0
            assert gateway.metric("gateway_shed_total", reason="deadline") == 10
            assert (await gateway.infer()).status_code == 200
            assert gateway.metric("gateway_circuit_state", backend="teacher",
                                  state="closed") == 1  # fmt: skip

    asyncio.run(main())


def test_a_grpc_deadline_and_timeout_parameter_bound_the_wait() -> None:
    async def main() -> None:
        async with in_process_gateway() as gateway, grpc_endpoint(gateway) as address:
            async with grpc.aio.insecure_channel(address) as channel:
                stub = pb_grpc.GRPCInferenceServiceStub(channel)
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await stub.ModelInfer(_grpc_request(timeout_us=1))
                assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
                assert "deadline passed" in (caught.value.details() or "")
                answer = await stub.ModelInfer(_grpc_request(), timeout=5.0)
                assert answer.model_name == "digits"
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await stub.ModelInfer(_grpc_request(timeout_us=-5))
                assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
                assert "parameters.timeout is -5" in (caught.value.details() or "")
            assert gateway.teacher.calls == 1
            assert gateway.metric("gateway_shed_total", reason="deadline") == 1

    asyncio.run(main())


def test_a_batched_backend_admits_enough_to_fill_its_batches() -> None:
    """64 requests at once on a batched teacher of 20 ms calls: the queue feeds the batcher, so
    they leave in a few big batches and none is shed."""

    async def main() -> None:
        batching = {"max_batch_size": 32, "max_delay_us": 2000}
        teacher = {"path": "models/teacher.onnx", "batching": batching}
        async with in_process_gateway(teacher=teacher) as gateway:
            gateway.teacher.behaviour, gateway.teacher.delay = Behaviour.SLOW, 0.02
            answers = await asyncio.gather(*(gateway.infer() for _ in range(64)))
            assert [answer.status_code for answer in answers] == [200] * 64
            assert gateway.teacher.calls <= 8
            assert gateway.metric("gateway_batch_size_count", backend="teacher") == (
                gateway.teacher.calls
            )
            assert gateway.metric("gateway_queue_delay_seconds_count", backend="teacher") == 64

    asyncio.run(main())


def test_a_failed_batch_is_one_failure_and_a_batch_is_billed_once() -> None:
    """Trust issue item 10: a batch of five that fails is one failure of the teacher (five once
    opened its circuit), and a batch's time is counted once, not once per request."""

    async def main() -> None:
        batching = {"max_batch_size": 5, "max_delay_us": 50_000}
        teacher = {"path": "models/teacher.onnx", "batching": batching}
        async with in_process_gateway(teacher=teacher) as gateway:
            gateway.teacher.behaviour = Behaviour.FAIL
            answers = await asyncio.gather(*(gateway.infer() for _ in range(5)))
            assert [answer.status_code for answer in answers] == [503] * 5
            assert gateway.teacher.calls == 1
            assert gateway.metric("gateway_circuit_state", backend="teacher",
                                  state="closed") == 1  # fmt: skip
            gateway.teacher.behaviour, gateway.teacher.delay = Behaviour.SLOW, 0.05
            answers = await asyncio.gather(*(gateway.infer() for _ in range(5)))
            assert [answer.status_code for answer in answers] == [200] * 5
            calls = gateway.metric("gateway_backend_duration_seconds_count", backend="teacher",
                                   path="live")  # fmt: skip
            assert calls == 2  # one per batch (and its time billed once), not one per request

    asyncio.run(main())


def test_a_slot_is_never_lost_when_its_waiter_leaves_or_is_handed_it_as_it_leaves() -> None:
    from gateway.overload import BackendQueue

    async def main() -> None:
        queue = BackendQueue(slots=1, retry_after_seconds=1)
        await queue.acquire(1.0)  # A holds the slot
        left = asyncio.create_task(queue.acquire(1.0))  # B waits, then its client leaves
        served = asyncio.create_task(queue.acquire(1.0))  # C waits
        await asyncio.sleep(0)
        assert queue.waiting == 2
        left.cancel()
        await asyncio.sleep(0)
        queue.release(0.01)  # A's call returns: the slot skips B and goes to C
        await served
        assert queue.busy == 1 and queue.waiting == 0
        handed = asyncio.create_task(queue.acquire(1.0))  # D waits
        await asyncio.sleep(0)
        queue.release(0.01)  # C returns: the slot is D's ...
        handed.cancel()  # ... and D's client leaves before D runs: D gives it back
        with pytest.raises(asyncio.CancelledError):
            await handed
        assert queue.busy == 0 and queue.waiting == 0
        await queue.acquire(0.0)  # free again: taken at once, even with no budget to wait

    asyncio.run(main())


def test_a_shed_probe_leaves_the_circuit_free_to_probe_again() -> None:
    """The half-open probe's request is shed before its call (its deadline had passed): the next
    request probes and closes the circuit, instead of every request being refused for good."""
    from tests.clock import ManualClock

    async def main() -> None:
        clock = ManualClock()
        async with in_process_gateway(clock) as gateway:
            gateway.teacher.behaviour = Behaviour.FAIL
            for _ in range(5):
                await gateway.infer()
            assert gateway.metric("gateway_circuit_state", backend="teacher", state="open") == 1
            gateway.teacher.behaviour = Behaviour.ANSWER
            clock.now += 10  # past the cool-down: the next request is the probe
            expired = await gateway.client.post(
                "/v2/models/digits/infer", json={**BODY, "parameters": {"timeout": 1}}
            )
            assert expired.status_code == 503 and "deadline" in expired.json()["error"]
            assert (await gateway.infer()).status_code == 200  # probes, and closes the circuit
            assert gateway.metric("gateway_circuit_state", backend="teacher",
                                  state="closed") == 1  # fmt: skip

    asyncio.run(main())


def test_a_clients_short_deadline_never_opens_the_backends_circuit() -> None:
    """Ten requests whose own deadline (5 ms) ends while a 50 ms teacher runs: 504, counted with
    no backend, and the circuit stays closed; a 5 s deadline (in microseconds) is served."""

    async def main() -> None:
        async with in_process_gateway() as gateway:
            gateway.teacher.behaviour, gateway.teacher.delay = Behaviour.SLOW, 0.05
            short = {**BODY, "parameters": {"timeout": 5_000}}
            for _ in range(10):
                answer = await gateway.client.post("/v2/models/digits/infer", json=short)
                assert answer.status_code == 504, answer.text
            assert gateway.metric("gateway_circuit_state", backend="teacher",
                                  state="closed") == 1  # fmt: skip
            assert gateway.metric("gateway_requests_total", backend="none", code="504",
                                  protocol="http") == 10  # fmt: skip
            assert gateway.metric("gateway_requests_total", backend="teacher", code="504",
                                  protocol="http") == 0  # fmt: skip
            ample = {**BODY, "parameters": {"timeout": 5_000_000}}
            assert (await gateway.client.post("/v2/models/digits/infer", json=ample)
                    ).status_code == 200  # fmt: skip

    asyncio.run(main())


def test_a_batched_request_whose_deadline_passed_is_shed_not_a_backend_error() -> None:
    async def main() -> None:
        teacher = {"path": "models/teacher.onnx",
                   "batching": {"max_batch_size": 4, "max_delay_us": 1000}}  # fmt: skip
        async with in_process_gateway(teacher=teacher) as gateway:
            expired = await gateway.client.post(
                "/v2/models/digits/infer", json={**BODY, "parameters": {"timeout": 1}}
            )
            assert expired.status_code == 503 and "deadline" in expired.json()["error"]
            assert gateway.metric("gateway_shed_total", reason="deadline") == 1
            assert gateway.teacher.calls == 0
            gateway.teacher.behaviour, gateway.teacher.delay = Behaviour.SLOW, 0.05
            ran_out = await gateway.client.post(
                "/v2/models/digits/infer", json={**BODY, "parameters": {"timeout": 5_000}}
            )
            assert ran_out.status_code == 504
            assert gateway.metric("gateway_circuit_state", backend="teacher",
                                  state="closed") == 1  # fmt: skip

    asyncio.run(main())

"""The request path's logic, in process and in milliseconds: the real service and app over scripted
backends (tests/fake_backend.py) that fail, hang, reject or answer slowly on command. Real Triton
and ONNX Runtime failures are in test_resilience.py and test_triton.py."""

from __future__ import annotations

import asyncio
import gzip
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import pytest

from gateway.http_body import OFF_LOOP_BYTES
from tests.clock import ManualClock as Clock
from tests.fake_backend import Behaviour, InProcessGateway, in_process_gateway

STUDENT = {"x-canary": "student"}


def run(
    scenario: Callable[[InProcessGateway], Awaitable[None]],
    clock: Callable[[], float] = time.monotonic,
    **settings: Any,
) -> None:
    async def main() -> None:
        async with in_process_gateway(clock, **settings) as gateway:
            await scenario(gateway)

    asyncio.run(main())


def fallbacks(gateway: InProcessGateway, reason: str) -> float:
    return gateway.metric("gateway_fallbacks_total", from_backend="student",
                          to_backend="teacher", reason=reason)  # fmt: skip


def test_a_failing_student_is_answered_by_the_teacher_until_its_circuit_opens() -> None:
    async def scenario(gateway: InProcessGateway) -> None:
        gateway.student.behaviour = Behaviour.FAIL
        for _ in range(3):
            answer = await gateway.infer(STUDENT)
            assert answer.status_code == 200 and answer.headers["x-served-by"] == "teacher"
        assert fallbacks(gateway, "error") == 3 and gateway.student.calls == 3
        # the circuit is open: the student is no longer called at all
        for _ in range(4):
            assert (await gateway.infer(STUDENT)).headers["x-served-by"] == "teacher"
        assert gateway.student.calls == 3 and fallbacks(gateway, "circuit_open") == 4
        assert gateway.metric("gateway_backend_up", backend="student") == 0

    run(scenario, resilience={"failure_threshold": 3, "cool_down_seconds": 60})


def test_a_hanging_student_costs_a_client_only_its_timeout() -> None:
    async def scenario(gateway: InProcessGateway) -> None:
        gateway.student.behaviour = Behaviour.HANG
        started = time.perf_counter()
        answer = await gateway.infer(STUDENT)
        waited = time.perf_counter() - started
        assert answer.status_code == 200 and answer.headers["x-served-by"] == "teacher"
        assert 0.15 <= waited < 1.0  # the student's 150 ms, then the teacher at once
        assert fallbacks(gateway, "timeout") == 1

    run(scenario, student={"path": "models/student.onnx", "timeout_ms": 150})


def test_the_deadline_bounds_the_student_and_its_retry_together() -> None:
    """A student that uses most of the request's deadline leaves the teacher only the rest: a
    slow teacher then fails the request with a 504 that says so, never a late answer, and the
    teacher, which had only what was left, is not blamed for it (its circuit hears nothing)."""

    async def scenario(gateway: InProcessGateway) -> None:
        gateway.student.behaviour = Behaviour.HANG
        gateway.teacher.behaviour, gateway.teacher.delay = Behaviour.SLOW, 0.2
        for _ in range(5):  # as many as open a circuit (failure_threshold)
            started = time.perf_counter()
            answer = await gateway.infer(STUDENT)
            assert time.perf_counter() - started < 0.6
            assert answer.status_code == 504
            assert answer.json()["error"].startswith(
                "the request's deadline passed while the teacher backend ran"
            )
        assert gateway.metric("gateway_circuit_state", backend="teacher", state="closed") == 1

    run(
        scenario,
        student={"path": "models/student.onnx", "timeout_ms": 250},
        resilience={"request_timeout_ms": 300},
    )


def test_a_request_the_student_rejects_is_the_clients_400_not_a_fallback() -> None:
    async def scenario(gateway: InProcessGateway) -> None:
        gateway.student.behaviour = Behaviour.REJECT
        for _ in range(5):
            answer = await gateway.infer(STUDENT)
            assert answer.status_code == 400
            assert answer.json()["error"] == "student rejected the request (scripted)"
        assert fallbacks(gateway, "error") == 0 and gateway.teacher.calls == 0
        assert gateway.metric("gateway_backend_up", backend="student") == 1  # circuit closed

    run(scenario, resilience={"failure_threshold": 3})


def test_a_failing_teacher_is_a_clear_503_and_readiness_follows_it() -> None:
    async def scenario(gateway: InProcessGateway) -> None:
        gateway.teacher.behaviour = Behaviour.FAIL
        answer = await gateway.infer()
        assert answer.status_code == 503
        assert answer.json()["error"] == (
            "teacher backend unavailable: teacher runtime error (scripted)"
        )
        assert (await gateway.client.get("/v2/health/ready")).status_code == 200
        gateway.teacher.ready = False
        assert (await gateway.client.get("/v2/health/ready")).status_code == 503
        gateway.student.ready = False  # the student alone never decides readiness
        gateway.teacher.ready = True
        assert (await gateway.client.get("/v2/health/ready")).status_code == 200

    run(scenario)


def test_the_share_splits_and_a_routing_key_sticks() -> None:
    async def scenario(gateway: InProcessGateway) -> None:
        put = await gateway.client.put("/admin/traffic", json={"student_share": 0.5},
                                       headers={"Authorization": "Bearer fake-token"})  # fmt: skip
        assert put.json() == {
            "student_share": 0.5,
            "generation": 1,
            "student_id": gateway.service.student_id,
        }
        served = [(await gateway.infer()).headers["x-served-by"] for _ in range(200)]
        assert 60 <= served.count("student") <= 140  # binomial(200, 0.5): far outside 6 sigma
        keyed = {(await gateway.infer({"x-routing-key": "user-42"})).headers["x-served-by"]
                 for _ in range(20)}  # fmt: skip
        assert len(keyed) == 1

    run(scenario)


# -- defects found by reading (issue 10): each test failed before its fix ----------------------


def test_a_cancelled_probe_does_not_lock_the_circuit() -> None:
    """A half-open probe whose client goes away must not leave the circuit waiting for it."""
    clock = Clock()

    async def scenario(gateway: InProcessGateway) -> None:
        gateway.student.behaviour = Behaviour.FAIL
        await gateway.infer(STUDENT)  # opens the circuit (threshold 1)
        clock.now += 61  # past the cool-down: the next request is the probe
        gateway.student.behaviour = Behaviour.HANG
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(gateway.infer(STUDENT), 0.1)  # the client gives up
        gateway.student.behaviour = Behaviour.ANSWER
        answer = await gateway.infer(STUDENT)
        assert answer.headers["x-served-by"] == "student"  # a new probe went through, and passed

    run(scenario, clock=clock, resilience={"failure_threshold": 1, "cool_down_seconds": 60})


def test_an_unexpected_exception_in_a_backend_is_a_failure_of_that_backend() -> None:
    async def scenario(gateway: InProcessGateway) -> None:
        gateway.student.behaviour = Behaviour.CRASH
        answer = await gateway.infer(STUDENT)
        assert answer.status_code == 200 and answer.headers["x-served-by"] == "teacher"
        assert fallbacks(gateway, "error") == 1
        gateway.teacher.behaviour = Behaviour.CRASH
        failed = await gateway.infer()
        assert failed.status_code == 503
        assert failed.json()["error"] == (
            "teacher backend unavailable: teacher backend failed: RuntimeError: teacher: "
            "something nobody expected (scripted)"
        )
        assert gateway.metric("gateway_requests_total", backend="teacher", code="503",
                              protocol="http") == 1  # fmt: skip

    run(scenario)


def test_an_unexpected_exception_outside_the_backends_is_a_counted_json_500() -> None:
    async def scenario(gateway: InProcessGateway) -> None:
        def broken(*_: object) -> None:
            raise KeyError("a bug")

        gateway.service.feedback.remember = broken  # type: ignore[method-assign,assignment]
        answer = await gateway.infer({"x-canary": "teacher"})
        assert answer.status_code == 500
        request_id = answer.headers["x-request-id"]
        assert answer.json() == {
            "error": f"internal error while serving request {request_id}; it is in the "
            "gateway's log with its traceback"
        }
        assert gateway.metric("gateway_requests_total", backend="teacher", code="500",
                              protocol="http") == 1  # fmt: skip

    run(scenario)


def test_a_student_failure_then_a_teacher_failure_is_counted_once() -> None:
    """The request failed on the teacher: one 503 of the teacher's, and the student's failure is
    its fallback, not a second error."""

    async def scenario(gateway: InProcessGateway) -> None:
        gateway.student.behaviour = gateway.teacher.behaviour = Behaviour.FAIL
        assert (await gateway.infer(STUDENT)).status_code == 503
        codes = {
            backend: gateway.metric("gateway_requests_total", backend=backend, code="503",
                                    protocol="http")
            for backend in ("teacher", "student")
        }  # fmt: skip
        assert codes == {"teacher": 1, "student": 0}
        assert fallbacks(gateway, "error") == 1

    run(scenario)


def test_ids_longer_than_256_characters_are_refused() -> None:
    async def scenario(gateway: InProcessGateway) -> None:
        body = {"id": "x" * 257, "inputs": [{"name": "pixels", "datatype": "FP32",
                                              "shape": [1, 64], "data": [1.0] * 64}]}  # fmt: skip
        answer = await gateway.client.post("/v2/models/digits/infer", json=body)
        assert answer.status_code == 400
        assert answer.json()["error"] == (
            "invalid inference request: id: String should have at most 256 characters"
        )
        label = await gateway.client.post("/v2/models/digits/feedback",
                                          json={"id": "x" * 257, "label": 1})  # fmt: skip
        assert label.status_code == 422
        assert label.json()["error"] == "id: String should have at most 256 characters"

    run(scenario)


def test_big_bodies_are_decoded_off_the_loop_with_the_same_answers() -> None:
    """Over 64 KiB, decompression and decoding run on a worker thread: same answers, same
    errors, and the loop keeps serving small requests meanwhile (measured in
    bench_reliability)."""
    rows = 1024
    body = {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [rows, 64],
                        "data": [1.0] * (64 * rows)}]}  # fmt: skip
    plain = orjson.dumps(body)
    assert len(plain) > OFF_LOOP_BYTES

    async def scenario(gateway: InProcessGateway) -> None:
        zipped = await gateway.client.post("/v2/models/digits/infer", content=gzip.compress(plain),
                                           headers={"content-encoding": "gzip"})  # fmt: skip
        assert zipped.status_code == 200
        assert zipped.json()["outputs"][0]["shape"] == [rows, 10]
        wrong = plain.replace(b'"FP32"', b'"FP64"')
        refused = await gateway.client.post("/v2/models/digits/infer", content=wrong)
        assert refused.status_code == 400 and "FP64" in refused.json()["error"]
        broken = await gateway.client.post("/v2/models/digits/infer", content=plain[:-100])
        assert broken.status_code == 400

    run(scenario)


def test_a_student_on_triton_is_not_swapped_by_registry_id() -> None:
    """Triton loads its own files: the gateway says so rather than pretending to swap it."""

    async def scenario(gateway: InProcessGateway) -> None:
        traffic = await gateway.client.get("/admin/traffic")
        assert "student_id" not in traffic.json()  # unknown: the files are Triton's
        put = await gateway.client.put("/admin/student", json={"model_id": "51e7d5a045e3778c"},
                                       headers={"Authorization": "Bearer fake-token"})  # fmt: skip
        assert put.status_code == 409
        assert "served by Triton (student.kind: triton)" in put.json()["error"]
        assert gateway.metric("gateway_student_info", student_id="unknown") == 1

    run(scenario, student={"kind": "triton", "url": "127.0.0.1:1", "model_name": "student"})

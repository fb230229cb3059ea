"""Riding out a failing backend: the circuit breaker alone, then the gateway in front of a real
Triton server that is killed, restarted, slowed down."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from controller.sources import window_metrics
from gateway.resilience import CircuitBreaker, CircuitState
from tests.clock import ManualClock
from tests.servers import TestGateway, TritonProcess, wait_until

BODY = {"inputs": [{"name": "pixels", "shape": [1, 64], "datatype": "FP32", "data": [3.0] * 64}]}


# -- the breaker, with a controllable clock -------------------------------------------------


def state_of(breaker: CircuitBreaker) -> CircuitState:
    return breaker.state  # a call, so type checkers do not carry narrowing across calls


def test_the_breaker_opens_after_enough_failures_in_the_window() -> None:
    clock = ManualClock()
    breaker = CircuitBreaker(failure_threshold=3, window_seconds=10, cool_down_seconds=5,
                             clock=clock)  # fmt: skip
    breaker.record_failure()
    clock.now = 11  # the first failure has left the window
    breaker.record_failure()
    breaker.record_failure()
    assert state_of(breaker) is CircuitState.CLOSED and breaker.allow()
    breaker.record_failure()
    assert state_of(breaker) is CircuitState.OPEN
    assert not breaker.allow()


def test_half_open_lets_one_probe_through_and_its_outcome_decides() -> None:
    clock = ManualClock()
    breaker = CircuitBreaker(failure_threshold=1, window_seconds=10, cool_down_seconds=5,
                             clock=clock)  # fmt: skip
    breaker.record_failure()
    clock.now = 4.9
    assert not breaker.allow()
    clock.now = 5.0
    assert breaker.allow() and state_of(breaker) is CircuitState.HALF_OPEN
    assert not breaker.allow()  # one probe at a time
    breaker.record_failure()  # the probe failed: open again, for another cool-down
    assert state_of(breaker) is CircuitState.OPEN and not breaker.allow()
    clock.now = 10.0
    assert breaker.allow()
    breaker.record_success()
    assert state_of(breaker) is CircuitState.CLOSED and breaker.allow() and breaker.allow()


def test_fallbacks_count_as_student_requests_and_errors_for_the_controller() -> None:
    key = ("gateway_fallbacks_total", (("from_backend", "student"), ("model", "digits"),
                                       ("reason", "error"), ("to_backend", "teacher")))  # fmt: skip
    ok = ("gateway_requests_total", (("backend", "student"), ("code", "200"), ("model", "digits")))
    window = window_metrics({key: 7.0, ok: 93.0}, "digits")
    assert window.student.requests == 100 and window.student.errors == 7


# -- against a real Triton ----------------------------------------------------------------------


@pytest.fixture
def own_triton(tmp_path: Path) -> Iterator[TritonProcess]:
    """A Triton of this test's own, since the test kills it."""
    server = TritonProcess(tmp_path).start()
    yield server
    server.stop()


def student_on(server: TritonProcess, model: str = "student", **extra: Any) -> dict[str, Any]:
    return {"kind": "triton", "url": server.grpc_url, "model_name": model, "protocol": "grpc",
            "ready_poll_seconds": 0.5, **extra}  # fmt: skip


RESILIENCE = {"failure_threshold": 3, "window_seconds": 10, "cool_down_seconds": 1.0,
              "request_timeout_ms": 3000}  # fmt: skip


async def _load(url: str, clients: int, per_client: int, kill_after: int,
                kill: Callable[[], None]) -> list[httpx.Response]:  # fmt: skip
    sent = 0
    responses: list[httpx.Response] = []

    async def client() -> None:
        nonlocal sent
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            for _ in range(per_client):
                responses.append(await http.post("/v2/models/digits/infer", json=BODY))
                sent += 1
                if sent == kill_after:
                    await asyncio.to_thread(kill)

    await asyncio.gather(*(client() for _ in range(clients)))
    return responses


def test_a_killed_student_triton_costs_clients_nothing_and_comes_back(
    own_triton: TritonProcess, start_gateway: Callable[..., TestGateway]
) -> None:
    gateway = start_gateway({
        "shadow": {"sample_rate": 0.0}, "traffic": {"student_share": 1.0},
        "student": student_on(own_triton, timeout_ms=500), "resilience": RESILIENCE,
    })  # fmt: skip
    responses = asyncio.run(_load(gateway.url, clients=4, per_client=750, kill_after=750,
                                  kill=own_triton.kill))  # fmt: skip
    assert len(responses) == 3000
    assert [r.status_code for r in responses if r.status_code != 200] == []
    served = [r.headers["x-served-by"] for r in responses]
    assert served.count("student") >= 500 and served.count("teacher") >= 500
    fallbacks = sum(
        gateway.metric("gateway_fallbacks_total", from_backend="student", reason=reason)
        for reason in ("error", "timeout", "circuit_open")
    )
    assert fallbacks == served.count("teacher")
    assert gateway.metric("gateway_circuit_state", backend="student", state="open") == 1
    assert gateway.metric("gateway_backend_up", backend="student") == 0
    assert httpx.get(f"{gateway.url}/v2/health/ready").status_code == 200  # the teacher serves

    own_triton.start()  # the same ports again

    def student_serves() -> bool:
        response = httpx.post(f"{gateway.url}/v2/models/digits/infer", json=BODY)
        return response.status_code == 200 and response.headers["x-served-by"] == "student"

    wait_until(student_serves, 60, "the student to serve again")
    assert gateway.metric("gateway_circuit_state", backend="student", state="closed") == 1
    wait_until(lambda: gateway.metric("gateway_backend_up", backend="student") == 1, 10, "up")


def test_a_slow_student_falls_back_within_the_deadline(
    start_gateway: Callable[..., TestGateway], tmp_path: Path
) -> None:
    server = TritonProcess(tmp_path, slow_ms=400).start()
    try:
        gateway = start_gateway({
            "shadow": {"sample_rate": 0.0}, "traffic": {"student_share": 1.0},
            "student": student_on(server, "student_slow", timeout_ms=100), "resilience": RESILIENCE,
        })  # fmt: skip
        with httpx.Client(base_url=gateway.url, timeout=10) as http:
            response = http.post("/v2/models/digits/infer", json=BODY)
        assert response.status_code == 200
        assert response.headers["x-served-by"] == "teacher"
        # It did not wait for the slow student (400 ms): by the gateway's own clock, the whole
        # request (100 ms student timeout, then the teacher) took under 250 ms.
        fast = gateway.metric("gateway_request_duration_seconds_bucket", backend="teacher",
                              le="0.25")  # fmt: skip
        assert fast == 1
        assert gateway.metric("gateway_fallbacks_total", reason="timeout") == 1
    finally:
        server.stop()


def test_a_killed_teacher_triton_is_a_clear_503_and_not_ready(
    own_triton: TritonProcess, start_gateway: Callable[..., TestGateway]
) -> None:
    gateway = start_gateway({
        "shadow": {"sample_rate": 0.0},
        "teacher": {**student_on(own_triton, "teacher", timeout_ms=500), "protocol": "http",
                    "url": own_triton.http_url},
        "resilience": RESILIENCE,
    })  # fmt: skip
    assert httpx.post(f"{gateway.url}/v2/models/digits/infer", json=BODY).status_code == 200
    own_triton.kill()
    response = httpx.post(f"{gateway.url}/v2/models/digits/infer", json=BODY, timeout=10)
    assert response.status_code == 503
    assert "teacher backend unavailable" in response.json()["error"]
    wait_until(
        lambda: httpx.get(f"{gateway.url}/v2/health/ready").status_code == 503, 10, "not ready"
    )
    assert httpx.get(f"{gateway.url}/v2/health/live").status_code == 200


def test_a_student_that_keeps_failing_is_rolled_back_by_the_error_rate_gate(
    own_triton: TritonProcess, start_gateway: Callable[..., TestGateway], tmp_path: Path
) -> None:
    from tests.rollouts import (
        canary_command,
        gateway_config,
        run_canary,
        share_of,
        traffic,
        write_policy,
    )  # fmt: skip

    gateway = start_gateway({
        **gateway_config(), "student": student_on(own_triton, timeout_ms=300),
        "resilience": RESILIENCE,
    })  # fmt: skip
    policy = write_policy(
        tmp_path, steps=[25, 100], bake_seconds=600, max_step_seconds=900,
        gates={"max_error_rate": 0.05},
    )  # fmt: skip
    with traffic(gateway):
        wait_until(lambda: gateway.total("gateway_feedback_total") > 50, 30, "traffic")
        own_triton.kill()
        result = run_canary(canary_command([gateway], policy, tmp_path / "rollout.db"))
    assert result.returncode == 3, result.stdout + result.stderr
    assert "max_error_rate failed" in result.stdout
    assert share_of(gateway) == 0.0

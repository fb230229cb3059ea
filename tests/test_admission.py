"""Admission by time against a real gateway whose teacher is a real, slow ONNX model (about 2 ms
a call), loaded over raw sockets: load the backend can answer within the queue target is served
in full; beyond it, only what could not start in time is shed (503, Retry-After), never a model
call wasted on it; an expired deadline is refused without running the model."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.servers import TestGateway
from tests.slow_model import write_slow_model

pytestmark = pytest.mark.e2e

ROW = {"name": "pixels", "shape": [1, 64], "datatype": "FP32", "data": [1.0] * 64}


def _post(gateway: TestGateway, body: dict[str, object]) -> tuple[int, dict[str, str]]:
    """One request on a raw socket: its status and headers."""
    payload = json.dumps(body).encode()
    host, port = gateway.address.split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(f"POST /v2/models/digits/infer HTTP/1.1\r\nHost: {gateway.address}\r\n"
                     f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
                     "Connection: close\r\n\r\n".encode() + payload)  # fmt: skip
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    head = reply.split(b"\r\n\r\n", 1)[0].decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in head[1:])
    return int(head[0].split(" ")[1]), {k.lower(): v for k, v in headers.items()}


@pytest.fixture(scope="module")
def slow_gateway(start_gateway: Callable[..., TestGateway], tmp_path_factory: pytest.TempPathFactory
                 ) -> TestGateway:  # fmt: skip
    model = write_slow_model(tmp_path_factory.mktemp("slow") / "slow_teacher.onnx")
    return start_gateway({"shadow": {"sample_rate": 0.0}, "teacher": {"path": str(model)},
                          "overload": {"max_queue_ms": 20},
                          "resilience": {"request_timeout_ms": 10_000},
                          "student": {"path": str(Path("models/student.onnx").resolve()),
                                      "timeout_ms": 5_000}})  # fmt: skip


def _burst(gateway: TestGateway, clients: int) -> list[tuple[int, dict[str, str]]]:
    with ThreadPoolExecutor(clients) as pool:
        return list(pool.map(lambda _: _post(gateway, {"inputs": [ROW]}), range(clients)))


def _teacher_calls(gateway: TestGateway) -> float:
    return gateway.metric("gateway_backend_duration_seconds_count", model="digits",
                          backend="teacher", path="live")  # fmt: skip


def test_load_the_backend_answers_in_time_is_served_in_full(slow_gateway: TestGateway) -> None:
    """8 clients at once on a 2-thread teacher of ~2 ms calls: a few ms of queue at most."""
    for _ in range(3):
        assert {status for status, _ in _burst(slow_gateway, 8)} == {200}


def test_beyond_the_target_only_what_cannot_start_in_time_is_shed(
    slow_gateway: TestGateway,
) -> None:
    """300 clients at once: what the queue can start
    within the target (20 ms here) is served, the rest is shed with Retry-After, and no model
    call is spent on a shed request."""
    _burst(slow_gateway, 8)  # the queue knows the teacher's call time
    calls_before = _teacher_calls(slow_gateway)
    shed_before = slow_gateway.total("gateway_shed_total")
    answers = _burst(slow_gateway, 300)
    served = sum(1 for status, _ in answers if status == 200)
    shed = [headers for status, headers in answers if status == 503]
    assert served + len(shed) == 300, (served, len(shed))
    assert served >= 8 and len(shed) >= 1  # how many of each depends on the machine's speed
    assert all(headers["retry-after"] == "1" for headers in shed)
    assert _teacher_calls(slow_gateway) - calls_before == served
    assert slow_gateway.total("gateway_shed_total") - shed_before == len(shed)


def test_an_expired_deadline_is_refused_without_running_the_model(
    slow_gateway: TestGateway,
) -> None:
    calls_before = _teacher_calls(slow_gateway)
    status, _ = _post(slow_gateway, {"inputs": [ROW], "parameters": {"timeout": 1}})
    assert status == 503
    assert _teacher_calls(slow_gateway) == calls_before
    assert slow_gateway.metric("gateway_shed_total", model="digits", reason="deadline") >= 1

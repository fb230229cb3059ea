"""Slow clients against a real gateway, over raw sockets: a request counts once its body is
complete, so stalled or trickling uploads neither shut other clients out nor spend a backend's
deadline (the trust issue's items 2 and 3)."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from models import STUDENT_PATH
from tests.servers import TestGateway

pytestmark = pytest.mark.e2e

BODY = json.dumps({"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 64],
                               "data": [1.0] * 64}]}).encode()  # fmt: skip


def _headers(gateway: TestGateway) -> bytes:
    return (f"POST /v2/models/digits/infer HTTP/1.1\r\nHost: {gateway.address}\r\n"
            "Content-Type: application/json\r\n"
            f"Content-Length: {len(BODY)}\r\n\r\n").encode()  # fmt: skip


def _connect(gateway: TestGateway) -> socket.socket:
    host, port = gateway.address.split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def _status_of(sock: socket.socket) -> int:
    """The status code of the answer the socket receives (within its timeout)."""
    reply = b""
    while b"\r\n" not in reply:
        chunk = sock.recv(4096)
        if not chunk:
            break
        reply += chunk
    return int(reply.split(b" ", 2)[1])


def test_stalled_uploads_hold_no_place_and_are_answered_408(
    start_gateway: Callable[..., TestGateway],
) -> None:
    gateway = start_gateway({"shadow": {"sample_rate": 0.0},
                             "overload": {"body_timeout_ms": 1500, "max_inflight": 8}})  # fmt: skip
    stalled = []
    for _ in range(12):  # more than max_inflight: they would have filled it
        sock = _connect(gateway)
        sock.sendall(_headers(gateway) + BODY[:10])
        stalled.append(sock)
    with httpx.Client(base_url=gateway.url, timeout=10) as client:
        codes = [client.post("/v2/models/digits/infer", content=BODY).status_code
                 for _ in range(20)]  # fmt: skip
        assert codes == [200] * 20
        assert client.get("/v2/health/ready").status_code == 200
    started = time.monotonic()
    answers = [_status_of(sock) for sock in stalled]
    assert answers == [408] * 12
    assert time.monotonic() - started < 8.0
    for sock in stalled:
        sock.close()
    assert gateway.metric("gateway_body_timeouts_total", model="digits") == 12
    assert gateway.total("gateway_requests_total", code="408") == 12
    assert gateway.metric("gateway_shed_total", model="digits", reason="max_inflight") == 0


def test_uploads_that_trickle_past_the_deadline_are_served_and_open_no_circuit(
    start_gateway: Callable[..., TestGateway],
) -> None:
    """Five uploads take 0.8 s each, past the 400 ms request deadline: their deadline starts
    once their body is in, so each is answered 200 and the teacher's circuit stays closed."""
    gateway = start_gateway({"shadow": {"sample_rate": 0.0},
                             "student": {"path": str(STUDENT_PATH), "timeout_ms": 200},
                             "resilience": {"request_timeout_ms": 400,
                                            "failure_threshold": 5}})  # fmt: skip

    def trickle() -> int:
        with _connect(gateway) as sock:
            sock.sendall(_headers(gateway))
            pieces = [BODY[i : i + len(BODY) // 8 + 1] for i in range(0, len(BODY),
                                                                   len(BODY) // 8 + 1)]  # fmt: skip
            for piece in pieces:
                time.sleep(0.1)  # the client's pace is what is tested here
                sock.sendall(piece)
            return _status_of(sock)

    with ThreadPoolExecutor(5) as pool:
        codes = list(pool.map(lambda _: trickle(), range(5)))
    assert codes == [200] * 5
    assert gateway.metric("gateway_circuit_state", model="digits", backend="teacher",
                          state="closed") == 1  # fmt: skip
    with httpx.Client(base_url=gateway.url, timeout=10) as client:
        assert client.post("/v2/models/digits/infer", content=BODY).status_code == 200


def test_bodies_being_read_are_bounded_in_memory_and_answered_at_once_beyond_it(
    start_gateway: Callable[..., TestGateway],
) -> None:
    """Uploads hold no queue place while they arrive, but their bytes are bounded: with
    overload.max_body_bytes at 100 KiB, two stalled uploads declaring 40 KiB each are let in and
    a third is refused at once (503, reason body_memory) while a small one still fits; the
    stalled ones end in 408, and the bytes they held are free again."""
    gateway = start_gateway({"shadow": {"sample_rate": 0.0},
                             "overload": {"body_timeout_ms": 1500,
                                          "max_body_bytes": 100 * 1024}})  # fmt: skip
    declared = 40 * 1024
    head = (f"POST /v2/models/digits/infer HTTP/1.1\r\nHost: {gateway.address}\r\n"
            "Content-Type: application/json\r\n"
            f"Content-Length: {declared}\r\n\r\n").encode()  # fmt: skip
    stalled = []
    for _ in range(2):
        sock = _connect(gateway)
        sock.sendall(head + b'{"inputs": [')
        stalled.append(sock)
    with httpx.Client(base_url=gateway.url, timeout=10) as client:
        # a small request still fits beside them; once it is answered, the two sent before it
        # are being read
        assert client.post("/v2/models/digits/infer", content=BODY).status_code == 200
        third = _connect(gateway)
        third.sendall(head + b'{"inputs": [')
        assert _status_of(third) == 503  # at once: no 40 KiB more while 80 KiB are held
        third.close()
        assert gateway.metric("gateway_shed_total", model="digits", reason="body_memory") == 1
        assert [_status_of(sock) for sock in stalled] == [408, 408]
        for sock in stalled:
            sock.close()
        assert client.post("/v2/models/digits/infer", content=BODY).status_code == 200

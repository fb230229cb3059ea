"""Graceful drain on SIGTERM, under load, as Kubernetes stops a pod: readiness turns 503 at once,
every request sent during the drain window is served, the requests still in flight when the
listeners close are finished, and the process exits 0."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.servers import TestGateway, TritonProcess, wait_until

pytestmark = pytest.mark.e2e

BODY = {"inputs": [{"name": "pixels", "shape": [1, 64], "datatype": "FP32", "data": [0.5] * 64}]}
DRAIN = 2.0


class _Load:
    """Clients in threads, each sending requests back to back until ``stop_sending_at``: some on
    keep-alive connections, one opening a new connection for every request."""

    def __init__(self, url: str, keep_alive_clients: int = 3) -> None:
        self.url = url
        self.stop_sending_at = float("inf")
        self.outcomes: list[tuple[float, str]] = []  # (when sent, status code or error)
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._send, args=(True,))
                         for _ in range(keep_alive_clients)]  # fmt: skip
        self._threads.append(threading.Thread(target=self._send, args=(False,)))

    def __enter__(self) -> _Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop_sending_at = 0.0
        for thread in self._threads:
            thread.join(30)

    def _send(self, keep_alive: bool) -> None:
        limits = httpx.Limits(max_keepalive_connections=1 if keep_alive else 0)
        with httpx.Client(base_url=self.url, limits=limits, timeout=20) as client:
            while (sent := time.monotonic()) < self.stop_sending_at:
                try:
                    outcome = str(client.post("/v2/models/digits/infer", json=BODY).status_code)
                except httpx.HTTPError as exc:
                    outcome = type(exc).__name__
                with self._lock:
                    self.outcomes.append((sent, outcome))

    def sent_since(self, since: float) -> list[str]:
        with self._lock:
            return [outcome for sent, outcome in self.outcomes if sent >= since]


def _drain_under_load(gateway: TestGateway, margin: float) -> tuple[list[str], list[str], float]:
    """SIGTERM under load; returns what was answered before it, during the drain window (all
    but its last ``margin`` seconds) and how long the process took to exit."""
    with _Load(gateway.url) as load:
        wait_until(lambda: len(load.outcomes) >= 20, 10, "load flowing")
        terminated_at = time.monotonic()
        before = load.sent_since(0)
        assert gateway.send_signal(signal.SIGTERM)
        load.stop_sending_at = terminated_at + DRAIN - margin
        ready = httpx.get(f"{gateway.url}/v2/health/ready", timeout=5)
        assert ready.status_code == 503  # at once: the first probe after the signal
        assert httpx.get(f"{gateway.url}/v2/health/live", timeout=5).status_code == 200
        wait_until(lambda: gateway.returncode is not None, DRAIN + 15, "the gateway to exit")
        exited_after = time.monotonic() - terminated_at
    return before, load.sent_since(terminated_at), exited_after


def test_every_request_sent_during_the_drain_is_served(
    start_gateway: Callable[..., TestGateway],
) -> None:
    gateway = start_gateway({"shadow": {"sample_rate": 0.2},
                             "shutdown": {"drain_seconds": DRAIN, "grace_seconds": 5}})  # fmt: skip
    _, during, exited_after = _drain_under_load(gateway, margin=0.1)
    assert len(during) > 50
    assert set(during) == {"200"}, {outcome: during.count(outcome) for outcome in set(during)}
    assert gateway.returncode == 0
    assert DRAIN <= exited_after < DRAIN + 5
    log = gateway.log()
    assert f"SIGTERM: draining for {DRAIN:g} s" in log
    with pytest.raises(httpx.ConnectError):  # after the drain, the port is closed
        httpx.get(f"{gateway.url}/v2/health/live", timeout=2)


def test_requests_in_flight_when_the_listeners_close_are_finished(
    start_gateway: Callable[..., TestGateway], tmp_path: Path
) -> None:
    """A 300 ms teacher on a real Triton: requests sent just before the drain ends are still
    running when the listeners stop accepting, and are answered within the grace period."""
    triton = TritonProcess(tmp_path, slow_ms=300).start()
    try:
        gateway = start_gateway({
            "shadow": {"sample_rate": 0.0},
            "shutdown": {"drain_seconds": DRAIN, "grace_seconds": 5},
            "teacher": {"kind": "triton", "url": triton.grpc_url, "model_name": "student_slow",
                        "protocol": "grpc", "timeout_ms": 1500},
        })  # fmt: skip
        _, during, _ = _drain_under_load(gateway, margin=0.05)
        assert len(during) >= 8
        assert set(during) == {"200"}, {outcome: during.count(outcome) for outcome in set(during)}
        assert gateway.returncode == 0
    finally:
        triton.stop()

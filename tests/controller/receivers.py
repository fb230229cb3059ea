"""Real HTTP receivers on loopback for notification and webhook-gate tests: a threaded
``http.server`` on an ephemeral port that keeps every request it got, in order, and answers
each path with the status a test sets (200 by default), and the bad ones: silent, refusing,
trickling its answer a byte at a time."""

from __future__ import annotations

import hashlib
import hmac
import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        """Strict RFC 8259, as Go's encoding/json or JSON.parse: NaN or Infinity is an error."""
        return orjson.loads(self.body)


class Receiver:
    def __init__(self, server: ThreadingHTTPServer) -> None:
        self._server = server
        self.requests: list[Received] = []
        self.status: dict[str, int] = {}  # path: status to answer (default 200)
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def on(self, path: str) -> list[Received]:
        with self._lock:
            return [r for r in self.requests if r.path == path]

    def wait_for(self, path: str, count: int, seconds: float = 10.0) -> list[Received]:
        """Polls until ``count`` requests reached ``path`` (or fails at the deadline)."""
        deadline = time.monotonic() + seconds
        while len(self.on(path)) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{path}: {len(self.on(path))} of {count} requests")
            time.sleep(0.01)
        return self.on(path)


def signed_by(key: str, header: str, body: bytes, now: float, window: float = 300.0) -> bool:
    """What a receiver does with ``X-Distill-Signature: t=<unix>,sha256=<hex>`` (README): the
    HMAC-SHA256 of ``<t>.<body>`` under ``key``, compared in constant time, and ``t`` within
    ``window`` seconds of ``now`` (older is a replay)."""
    match = re.fullmatch(r"t=(\d+),sha256=([0-9a-f]{64})", header)
    if match is None:
        return False
    signed = match[1].encode() + b"." + body
    expected = hmac.new(key.encode(), signed, hashlib.sha256).hexdigest()
    return hmac.compare_digest(match[2], expected) and abs(now - int(match[1])) <= window


@contextmanager
def http_receiver() -> Iterator[Receiver]:
    receiver: Receiver

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with receiver._lock:
                receiver.requests.append(Received(self.path, dict(self.headers.items()), body))
                status = receiver.status.get(self.path, 200)
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass  # quiet tests

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    receiver = Receiver(server)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def silent_receiver() -> Iterator[str]:
    """A port that accepts connections and never answers: the worst receiver there is (a
    refused connection fails at once; this one costs every attempt its whole timeout)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        host, port = listener.getsockname()
        yield f"http://{host}:{port}"


@contextmanager
def closed_port() -> Iterator[str]:
    """A URL nothing listens on (connections are refused)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        host, port = probe.getsockname()
    yield f"http://{host}:{port}"


@contextmanager
def trickling_receiver(every: float = 0.05) -> Iterator[str]:
    """A server that reads each request, then answers one byte every ``every`` seconds and never
    finishes (an endless header): no single read ever waits long, so only a deadline on the
    whole call ends it."""
    stop = threading.Event()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    listener.settimeout(0.05)

    def trickle(conn: socket.socket) -> None:
        with conn:
            conn.settimeout(1.0)
            try:
                seen = b""
                while b"\r\n\r\n" not in seen:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    seen += chunk
                answer = b"HTTP/1.1 200 OK\r\nX-Slow: " + b"." * 1_000_000
                for byte in answer:
                    if stop.wait(every):
                        return
                    conn.sendall(bytes([byte]))
            except OSError:  # the caller gave up and closed: what a deadline should do
                return

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=trickle, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    host, port = listener.getsockname()
    try:
        yield f"http://{host}:{port}"
    finally:
        stop.set()
        thread.join(1.0)
        listener.close()

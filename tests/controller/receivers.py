"""A real HTTP receiver on loopback for notification and webhook-gate tests: a threaded
``http.server`` on an ephemeral port that keeps every request it got, in order, and answers
each path with the status a test sets (200 by default)."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


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

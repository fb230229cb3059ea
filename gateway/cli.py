"""`distill-gateway`: validate the config, take the ports, load and warm both backends, then
serve.

Everything that can fail (config, a port in use, model files, signatures, device) fails before any
request is answered, with one line that says what is wrong. Exit codes: 2 invalid config or a
start-up failure (models, signatures, device), 3 a port cannot be bound (in use, or not allowed);
0 after a graceful stop.

SIGTERM drains, as Kubernetes expects: readiness turns 503 at once while every listener keeps
serving for ``shutdown.drain_seconds``; then they stop accepting, finish what they hold within
``shutdown.grace_seconds``, the shadow comparisons owed are counted, and the process exits 0.
SIGINT (Ctrl-C), or a second SIGTERM, skips what is left of the drain.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Iterator
from math import ceil
from pathlib import Path
from types import FrameType
from typing import Annotated

import prometheus_client
import typer
import uvicorn
from prometheus_client import CollectorRegistry

from gateway.app import create_app
from gateway.config import ConfigError, GatewaySettings, load_settings
from gateway.errors import GatewayError
from gateway.grpc_server import PortUnavailable, attach, create_grpc_server
from gateway.runtime import Runtime
from gateway.workers import inherited_sockets, is_worker, supervise

log = logging.getLogger("gateway")
EXIT_BAD_CONFIG = 2
EXIT_PORT_UNAVAILABLE = 3  # uvicorn's own code for a failed bind, kept
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"  # ours and uvicorn's lines alike
WORKER_LOG_FORMAT = "%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"


def serve(
    config: Annotated[
        Path | None, typer.Option(help="YAML config; without one, the shipped pair is served.")
    ] = None,
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to bind.")] = 8000,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
    access_log: Annotated[bool, typer.Option(help="Log every request (slower).")] = False,
    grpc_port: Annotated[
        int | None, typer.Option(help="Serve gRPC on this port too (config grpc.port; 0: off).")
    ] = None,
    workers: Annotated[
        int,
        typer.Option(
            min=1,
            help="Processes serving the same ports; above 1 needs state.url "
            "redis://... (they share the share and the predictions through it).",
        ),
    ] = 1,
) -> None:
    """Serve one logical model over the Open Inference Protocol, split between teacher and
    student."""
    inherited = inherited_sockets()
    logging.basicConfig(level=log_level.upper(), format=WORKER_LOG_FORMAT if inherited or
                        workers > 1 else LOG_FORMAT)  # fmt: skip
    try:
        settings = load_settings(config)
    except ConfigError as exc:
        print(f"distill-gateway: {exc}", file=sys.stderr)
        raise typer.Exit(EXIT_BAD_CONFIG) from None
    if workers > 1 and inherited is None and not settings.state.shared:
        print(f"distill-gateway: --workers {workers} needs a state store the workers share: set "
              "state.url (DISTILL_GATEWAY_STATE__URL) to redis://host:port/db; with "
              "state.url: memory each worker would have a share and predictions of its own",
              file=sys.stderr)  # fmt: skip
        raise typer.Exit(EXIT_BAD_CONFIG)
    if grpc_port is not None:
        settings.grpc.port = grpc_port
    listeners = _listeners(settings, host, port)
    scheme = "https" if settings.tls.enabled else "http"
    if settings.state.shared and not settings.state.advertise_url:
        settings.state.advertise_url = _advertised(listeners, host, port, "admin", scheme)
    if _apart(listeners, "metrics", "admin") and not settings.state.advertise_metrics_url:
        # else a controller that scrapes <admin URL>/metrics gets 404 and never sees a share
        metrics = _advertised(listeners, host, port, "metrics", scheme)
        settings.state.advertise_metrics_url = f"{metrics}/metrics"
    try:  # before the models load: a port in use is found in a second, not after the warm-up
        sockets = inherited or {address: _bind(address) for address in listeners}
        if settings.grpc.port and inherited is None:  # one clear line; gRPC binds it itself
            _bind((settings.grpc.host or host, settings.grpc.port)).close()
    except OSError as exc:
        print(f"distill-gateway: {exc}", file=sys.stderr)
        raise typer.Exit(EXIT_PORT_UNAVAILABLE) from None
    if workers > 1 and inherited is None:
        raise typer.Exit(supervise(workers, sockets))
    try:
        _run(_serve(settings, listeners, sockets, (host, port), log_level, access_log))
    except PortUnavailable as exc:
        print(f"distill-gateway: {exc}", file=sys.stderr)
        raise typer.Exit(EXIT_PORT_UNAVAILABLE) from None
    except GatewayError as exc:
        print(f"distill-gateway: start-up failed: {exc.message}", file=sys.stderr)
        raise typer.Exit(EXIT_BAD_CONFIG) from None


def _bind(address: tuple[str, int]) -> socket.socket:
    """A bound socket that does not listen yet: clients are refused, not queued, until the models
    are ready and uvicorn starts listening on it."""
    host, port = address
    try:
        family, kind, _, _, where = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(where)
    except OSError as exc:
        raise OSError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    sock.set_inheritable(True)
    return sock


async def _serve(
    settings: GatewaySettings,
    listeners: dict[tuple[str, int], frozenset[str]],
    sockets: dict[tuple[str, int], socket.socket],
    main: tuple[str, int],
    log_level: str,
    access_log: bool,
) -> None:
    prometheus_client.disable_created_metrics()
    grpc_server, grpc_host = None, settings.grpc.host or main[0]
    if settings.grpc.port:  # bound first: a port in use is found before the models load
        grpc_server = create_grpc_server(grpc_host, settings.grpc.port, settings.max_request_bytes,
                                         settings.tls, shared=is_worker())  # fmt: skip
    grace = settings.shutdown.grace_seconds
    registry = CollectorRegistry()
    runtime = await Runtime.start(settings, registry)
    exposed = runtime.exposition_registry()
    # Everything made so far (modules, models, settings: ~90,000 objects) lives as long as the
    # process: moved out of the collector's reach, full collections stop walking it on the
    # request path (they were the p99 tail: 64 ms -> 21 ms in issue 9's measurement).
    gc.collect()
    gc.freeze()
    if settings.admin_token is None:
        log.warning("DISTILL_GATEWAY_ADMIN_TOKEN is not set: the admin API answers 403")

    def config(address: tuple[str, int]) -> uvicorn.Config:
        app = create_app(runtime, exposed, settings.admin_token, listeners[address])
        # log_config None: uvicorn's loggers go through ours (one format), at our level
        return uvicorn.Config(app, host=address[0], port=address[1], log_level=log_level,
                              log_config=None, access_log=access_log,
                              timeout_graceful_shutdown=ceil(grace),
                              ssl_certfile=settings.tls.certfile,
                              ssl_keyfile=settings.tls.keyfile)  # fmt: skip

    others = [address for address in listeners if address != main]
    companions = [_Companion(config(address)) for address in others]
    side = [asyncio.create_task(companion.serve(sockets=[sockets[address]]))
            for companion, address in zip(companions, others, strict=True)]  # fmt: skip

    async def stop_the_others() -> None:
        for companion in companions:
            companion.should_exit = True
        if grpc_server is not None:  # its calls in flight get as long as HTTP's
            await grpc_server.stop(grace=grace)
        await asyncio.gather(*side)

    server = _MainServer(config(main), companions, stop_the_others, runtime,
                         settings.shutdown.drain_seconds)  # fmt: skip
    scheme, over = ("https", " over TLS") if settings.tls.enabled else ("http", "")
    for address, parts in listeners.items():
        log.info("listening on %s://%s:%d (%s)", scheme, *address, ", ".join(sorted(parts)))
    if grpc_server is not None:
        attach(grpc_server, runtime)
        await grpc_server.start()
        log.info("listening on grpc://%s:%d (v2, health)%s", grpc_host, settings.grpc.port, over)
    try:
        await server.serve(sockets=[sockets[main]])
    finally:  # when the main server stopped for another reason than a signal
        await stop_the_others()


def _listeners(
    settings: GatewaySettings, host: str, port: int
) -> dict[tuple[str, int], frozenset[str]]:
    """Which parts each (host, port) serves: the admin API and /metrics go to their own ports
    when configured, the rest stays with the V2 API on the main port."""
    parts: dict[tuple[str, int], set[str]] = {(host, port): {"v2"}}
    for part, listener in (("admin", settings.admin), ("metrics", settings.metrics)):
        address = (listener.host or host, listener.port) if listener.port else (host, port)
        parts.setdefault(address, set()).add(part)
    return {address: frozenset(served) for address, served in parts.items()}


def _advertised(
    listeners: dict[tuple[str, int], frozenset[str]], host: str, port: int, part: str,
    scheme: str = "http",
) -> str:  # fmt: skip
    """Where the controller reaches this replica's ``part`` (``admin``, ``metrics``): its
    listener's address, with a wildcard host replaced by this host's address."""
    address = next((a for a, parts in listeners.items() if part in parts), (host, port))
    name = address[0]
    if name in ("0.0.0.0", "::", ""):
        name = socket.gethostbyname(socket.gethostname())
    return f"{scheme}://{name}:{address[1]}"


def _apart(listeners: dict[tuple[str, int], frozenset[str]], part: str, other: str) -> bool:
    """Whether ``part`` is served on another listener than ``other``."""
    return not any(part in parts and other in parts for parts in listeners.values())


class _Companion(uvicorn.Server):
    """The admin or metrics listener: the main server catches the signals and stops it."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class _MainServer(uvicorn.Server):
    """The V2 listener. It owns the signals: SIGTERM starts the drain (readiness 503, serving
    goes on) and ends it after ``drain_seconds``; SIGINT or a second SIGTERM ends it at once.
    Then it stops its companions (the admin and metrics listeners, gRPC) and waits for them
    before its own shutdown closes the service. Unlike uvicorn, it does not raise the signal
    again when done: a graceful stop exits 0."""

    def __init__(
        self,
        config: uvicorn.Config,
        companions: list[_Companion],
        stop_the_others: Callable[[], Awaitable[None]],
        runtime: Runtime,
        drain_seconds: float,
    ) -> None:
        super().__init__(config)
        self._companions = companions
        self._stop_the_others = stop_the_others
        self._runtime = runtime
        self._drain_seconds = drain_seconds
        self._loop: asyncio.AbstractEventLoop | None = None

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        self._loop = asyncio.get_running_loop()
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in _SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        drain = sig == signal.SIGTERM and self._drain_seconds > 0
        if drain and not self._runtime.draining and self._loop is not None:
            self._runtime.start_draining()
            self._loop.call_soon_threadsafe(self._loop.call_later, self._drain_seconds,
                                            self._stop_accepting)  # fmt: skip
            log.info("SIGTERM: draining for %g s (readiness 503, still serving); "
                     "SIGINT or SIGTERM again stops at once", self._drain_seconds)  # fmt: skip
            return
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True  # a third signal: uvicorn's quit without waiting
        self._stop_accepting()

    def _stop_accepting(self) -> None:
        self._runtime.start_draining()
        for companion in self._companions:
            companion.should_exit = True
        self.should_exit = True

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        await self._stop_the_others()
        await super().shutdown(sockets)


_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _run(main: object) -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvicorn[standard] brings it on Linux
        asyncio.run(main)  # type: ignore[arg-type]
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main)  # type: ignore[arg-type]


def main() -> None:
    typer.run(serve)

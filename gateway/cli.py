"""`distill-gateway`: validate the config, load and warm both backends, then serve.

Everything that can fail (config, model files, signatures, device) fails before the port is bound,
with one line that says what is wrong.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import Iterator
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
from gateway.metrics import GatewayMetrics
from gateway.service import GatewayService

log = logging.getLogger("gateway")
EXIT_BAD_CONFIG = 2


def serve(
    config: Annotated[
        Path | None, typer.Option(help="YAML config; without one, the shipped pair is served.")
    ] = None,
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to bind.")] = 8000,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
    access_log: Annotated[bool, typer.Option(help="Log every request (slower).")] = False,
) -> None:
    """Serve one logical model over the Open Inference Protocol, split between teacher and
    student."""
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        settings = load_settings(config)
    except ConfigError as exc:
        print(f"distill-gateway: {exc}", file=sys.stderr)
        raise typer.Exit(EXIT_BAD_CONFIG) from None
    try:
        _run(_serve(settings, host, port, log_level, access_log))
    except GatewayError as exc:
        print(f"distill-gateway: start-up failed: {exc.message}", file=sys.stderr)
        raise typer.Exit(EXIT_BAD_CONFIG) from None


async def _serve(
    settings: GatewaySettings, host: str, port: int, log_level: str, access_log: bool
) -> None:
    prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]
    registry = CollectorRegistry()
    costs = {"teacher": settings.teacher.cost_per_hour, "student": settings.student.cost_per_hour}
    metrics = GatewayMetrics(registry, settings.model, costs)
    service = await GatewayService.start(settings, metrics)
    if settings.admin_token is None:
        log.warning("DISTILL_GATEWAY_ADMIN_TOKEN is not set: the admin API answers 403")
    listeners = _listeners(settings, host, port)

    def config(address: tuple[str, int]) -> uvicorn.Config:
        app = create_app(service, registry, settings.admin_token, listeners[address])
        return uvicorn.Config(app, host=address[0], port=address[1], log_level=log_level,
                              access_log=access_log, timeout_graceful_shutdown=10)  # fmt: skip

    companions = [_Companion(config(address)) for address in listeners if address != (host, port)]
    server = _MainServer(config((host, port)), companions)
    side = [asyncio.create_task(companion.serve()) for companion in companions]
    await server.serve()
    for companion in companions:
        companion.should_exit = True
    await asyncio.gather(*side)


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


class _Companion(uvicorn.Server):
    """The admin or metrics listener: the main server catches the signals and stops it."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class _MainServer(uvicorn.Server):
    """The V2 listener: on SIGTERM or SIGINT it stops its companions with itself."""

    def __init__(self, config: uvicorn.Config, companions: list[_Companion]) -> None:
        super().__init__(config)
        self._companions = companions

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        for companion in self._companions:
            companion.should_exit = True
        super().handle_exit(sig, frame)


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

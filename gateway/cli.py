"""`distill-gateway`: validate the config, load and warm both backends, then serve.

Everything that can fail (config, model files, signatures, device) fails before the port is bound,
with one line that says what is wrong.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path
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
    app = create_app(service, registry, settings.admin_token)
    if settings.admin_token is None:
        log.warning("DISTILL_GATEWAY_ADMIN_TOKEN is not set: the admin API answers 403")
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level=log_level,
            access_log=access_log,
            timeout_graceful_shutdown=10,
        )
    )
    await server.serve()


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

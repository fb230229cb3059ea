"""The models one gateway process serves, built from its config: the one place that knows there
are several. Each model is a ``GatewayService`` of its own (its backends, share, admission queue,
breakers, thread pools, batchers, fleet membership and metrics), so one model's trouble stays in
its service; the edges (HTTP, gRPC) find a request's service here by the model it names. The
runtime wires each: its metrics, its backends (loaded here), its fleet state
(``gateway.state.wiring``, joined here).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from prometheus_client import CollectorRegistry

from gateway.backends import Backend, create_backend
from gateway.config import GatewaySettings
from gateway.errors import BackendUnavailable, Conflict, NotFound
from gateway.metrics import (
    MULTIPROCESS,
    GatewayMetrics,
    add_standard_collectors,
    exposition_registry,
)
from gateway.roles import ROLES
from gateway.service import GatewayService
from gateway.signature import signature_mismatches

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelStatus:
    """One model in ``GET /v2/models`` and the repository index (HTTP and gRPC map it)."""

    name: str
    version: str
    ready: bool
    student_id: str | None

    @property
    def state(self) -> Literal["READY", "UNAVAILABLE"]:
        return "READY" if self.ready else "UNAVAILABLE"

    @property
    def reason(self) -> str:
        return "" if self.ready else "the teacher is not ready"


class Runtime:
    def __init__(self, settings: GatewaySettings, services: Mapping[str, GatewayService]) -> None:
        self.settings = settings  # the gateway-wide keys (each service has its model's merged in)
        self.services = dict(services)

    @classmethod
    async def start(cls, settings: GatewaySettings, registry: CollectorRegistry) -> Runtime:
        """Loads every model in the config's order; one that cannot start stops the gateway,
        after the ones already started are closed."""
        if not MULTIPROCESS:  # process_* and python_gc_*: one process's, not a group's
            add_standard_collectors(registry)
        services: dict[str, GatewayService] = {}
        try:
            for served in settings.served():
                costs = {"teacher": served.teacher.cost_per_hour,
                         "student": served.student.cost_per_hour}  # fmt: skip
                metrics = GatewayMetrics(registry, served.model, costs)
                services[served.model] = await start_model(served, metrics)
        except BaseException:
            await asyncio.gather(*(service.close() for service in services.values()))
            raise
        if len(services) > 1:
            log.info("serving %d models: %s", len(services), ", ".join(services))
        return cls(settings, services)

    @property
    def names(self) -> str:
        return ", ".join(f"'{name}'" for name in self.services)

    def service_for(self, model: str) -> GatewayService:
        """The model's service; a 404 naming the models served when there is none."""
        service = self.services.get(model)
        if service is None:
            raise self.unknown(model)
        return service

    def unknown(self, model: str) -> NotFound:
        return NotFound(f"unknown model '{model}'; this gateway serves {self.names}")

    def only_service(self, route: str) -> GatewayService:
        """The service of a route that names no model (``/admin/traffic``): only when exactly one
        model is served, else a 409 naming them and the route to use."""
        if len(self.services) == 1:
            return next(iter(self.services.values()))
        raise Conflict(f"this gateway serves {len(self.services)} models ({self.names}): use "
                       f"/admin/models/<model>/{route}")  # fmt: skip

    def statuses(self, ready_only: bool = False) -> list[ModelStatus]:
        """Every model's, or (the repository index's ``ready`` filter) the ready ones'."""
        every = [ModelStatus(name, service.version, service.is_ready(), service.student_id)
                 for name, service in self.services.items()]  # fmt: skip
        return [each for each in every if each.ready or not ready_only]

    def exposition_registry(self) -> CollectorRegistry:
        return exposition_registry([service.metrics for service in self.services.values()])

    # -- the process's lifecycle, for every model ------------------------------------------------

    @property
    def draining(self) -> bool:
        return any(service.draining for service in self.services.values())

    def is_ready(self) -> bool:
        """Ready while not draining and any model is: one model's remote teacher down takes
        every replica's model down alike, and were that the whole pod's readiness, load
        balancers would drop every replica and every healthy model with it. A model's own is
        ``/v2/models/{model}/ready``."""
        return any(service.is_ready() for service in self.services.values())

    def start_draining(self) -> None:
        for service in self.services.values():
            service.start_draining()

    def start_background(self) -> None:
        for service in self.services.values():
            service.start_background()

    async def close(self) -> None:
        await asyncio.gather(*(service.close() for service in self.services.values()))


async def start_model(settings: GatewaySettings, metrics: GatewayMetrics) -> GatewayService:
    """One model's service: its backends loaded, warmed and checked to agree, its fleet joined.
    A student on Triton that cannot be read yet (Triton still starting, or down) does not stop
    the gateway: it serves the teacher and loads the student in the background."""
    backends = await load_backends(settings)
    try:
        service = GatewayService(settings, backends, metrics)
    except BaseException:  # a config the loaded model refuses (batching.pad's checks)
        await asyncio.gather(*(backend.close() for backend in backends.values()))
        raise
    try:
        if service.fleet is not None:
            await service.join_fleet()
        if settings.student.kind == "triton":
            await service.student.try_loading()
    except BaseException:  # SIGTERM while starting, a store that refuses: nothing left open
        with contextlib.suppress(Exception):
            await service.close()
        raise
    if settings.student.kind != "triton":
        log.info("loaded %s", backends["student"].description)
    return service


async def load_backends(settings: GatewaySettings) -> dict[str, Backend]:
    """Both backends, loaded (a student on Triton is loaded later, ``start_model``); closed
    again when one fails or their signatures differ."""
    backends: dict[str, Backend] = {
        role: create_backend(role, getattr(settings, role), settings.shadow.workers,
                             settings.inputs, settings.warmup)
        for role in ROLES
    }  # fmt: skip
    try:
        await backends["teacher"].load()
        if settings.student.kind != "triton":
            await backends["student"].load()
            problems = signature_mismatches(backends["teacher"].signature,
                                            backends["student"].signature)  # fmt: skip
            if problems:
                raise BackendUnavailable("teacher and student signatures differ: "
                                         + "; ".join(problems))  # fmt: skip
    except BaseException:
        await asyncio.gather(*(backend.close() for backend in backends.values()))
        raise
    log.info("loaded %s", backends["teacher"].description)
    return backends

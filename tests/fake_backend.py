"""A backend that does what a test tells it (answer, fail, hang, answer slowly), and a gateway
built around two of them in process, driven through its ASGI app by httpx.

For the request path's logic (routing, fallback, deadlines, circuit breakers, error mapping) in
milliseconds; the real ONNX Runtime and Triton backends have their own tests against real servers.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, ParamSpec

import httpx
import numpy as np
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from gateway.app import create_app
from gateway.backends import Backend, Lane
from gateway.config import GatewaySettings
from gateway.errors import BackendUnavailable, BadRequest
from gateway.grpc_server import attach, create_grpc_server
from gateway.metrics import GatewayMetrics
from gateway.runtime import Runtime
from gateway.service import GatewayService
from gateway.signature import Signature, TensorSpec
from tests.servers import free_port

SIGNATURE = Signature(
    inputs=(TensorSpec("pixels", "FP32", (-1, 64)),),
    outputs=(TensorSpec("logits", "FP32", (-1, 10)),),
)
TOKEN = "fake-token"


class Behaviour(StrEnum):
    ANSWER = "answer"
    FAIL = "fail"  # an error from the runtime: the backend's failure
    REJECT = "reject"  # the backend says the request is wrong (Triton's invalid argument)
    HANG = "hang"  # never answers
    CRASH = "crash"  # an exception that is not the gateway's (a bug, a runtime surprise)
    SLOW = "slow"  # answers after ``delay`` seconds


class ScriptedBackend(Backend):
    """Answers with logits whose top-1 is ``answer_class``, or misbehaves as told."""

    def __init__(self, role: str, answer_class: int = 0) -> None:
        super().__init__(role)
        self.behaviour = Behaviour.ANSWER
        self.delay = 0.0
        self.answer_class = answer_class
        self.ready = True
        self.calls = 0

    @property
    def description(self) -> str:
        return f"{self.role}: scripted ({self.behaviour})"

    async def load(self) -> None:
        self._signature = SIGNATURE

    async def infer(
        self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str], lane: Lane = "live"
    ) -> dict[str, np.ndarray]:
        self.calls += 1
        if self.behaviour is Behaviour.FAIL:
            raise BackendUnavailable(f"{self.role} runtime error (scripted)")
        if self.behaviour is Behaviour.REJECT:
            raise BadRequest(f"{self.role} rejected the request (scripted)")
        if self.behaviour is Behaviour.CRASH:
            raise RuntimeError(f"{self.role}: something nobody expected (scripted)")
        if self.behaviour is Behaviour.HANG:
            await asyncio.Event().wait()
        if self.behaviour is Behaviour.SLOW:
            await asyncio.sleep(self.delay)
        rows = inputs["pixels"].shape[0]
        logits = np.zeros((rows, 10), np.float32)
        logits[:, self.answer_class] = 1.0
        return {"logits": logits}

    def is_ready(self) -> bool:
        return self.ready

    async def close(self) -> None:
        pass


def ticket_of(answer: httpx.Response) -> dict[str, str]:
    """The header a label for ``answer``'s request must carry."""
    return {"x-feedback-ticket": answer.headers["x-feedback-ticket"]}


@dataclass
class InProcessGateway:
    client: httpx.AsyncClient
    teacher: ScriptedBackend
    student: ScriptedBackend
    service: GatewayService
    registry: CollectorRegistry
    runtime: Runtime

    async def infer(self, headers: dict[str, str] | None = None, rows: int = 1) -> httpx.Response:
        body = {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [rows, 64],
                            "data": [1.0] * (64 * rows)}]}  # fmt: skip
        return await self.client.post("/v2/models/digits/infer", json=body, headers=headers)

    def metric(self, name: str, **labels: str) -> float:
        value = self.registry.get_sample_value(name, {"model": "digits", **labels})
        return value or 0.0


@asynccontextmanager
async def in_process_gateway(
    clock: Callable[[], float] = time.monotonic,
    *,
    serving_student: Backend | None = None,
    **settings: Any,
) -> AsyncIterator[InProcessGateway]:
    """The real service and app (shadow off unless asked) over two scripted backends, or a loaded
    ``serving_student`` of the test's own in the student's place; the app's lifespan runs, as
    under uvicorn."""
    config = GatewaySettings(**{"shadow": {"sample_rate": 0.0}, **settings})
    teacher, student = ScriptedBackend("teacher", 7), ScriptedBackend("student", 7)
    for backend in (teacher, student):
        await backend.load()
    registry = CollectorRegistry()
    costs = {"teacher": config.teacher.cost_per_hour, "student": config.student.cost_per_hour}
    metrics = GatewayMetrics(registry, config.model, costs)
    backends = {"teacher": teacher, "student": serving_student or student}
    service = GatewayService(config, backends, metrics, clock)
    runtime = Runtime(config, {config.model: service})
    app = create_app(runtime, registry, SecretStr(TOKEN))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            yield InProcessGateway(client, teacher, student, service, registry, runtime)


@asynccontextmanager
async def grpc_endpoint(gateway: InProcessGateway) -> AsyncIterator[str]:
    """The real gRPC server over the in-process gateway's service, on a free loopback port."""
    port = free_port()
    server = create_grpc_server("127.0.0.1", port, gateway.service.settings.max_request_bytes)
    attach(server, gateway.runtime)
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(grace=None)


P = ParamSpec("P")


def run(test: Callable[P, Coroutine[Any, Any, None]]) -> Callable[P, None]:
    """An async test run to its end on its own event loop."""

    @functools.wraps(test)
    def sync(*args: P.args, **kwargs: P.kwargs) -> None:
        asyncio.run(test(*args, **kwargs))

    return sync


# A scripted answer's top probability is e / (e + 9), about 0.23: a cascade threshold of 0 never
# escalates it, one of 0.5 always does.
NEVER, ALWAYS = 0.0, 0.5

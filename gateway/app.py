"""HTTP: the Open Inference Protocol (KServe V2) endpoints, feedback, admin and metrics.

Every route translates HTTP into one call on ``GatewayService``; errors become ``{"error": ...}``.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import BaseModel, SecretStr, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Receive, Scope, Send

from gateway import __version__
from gateway.errors import (
    BadRequest,
    Forbidden,
    GatewayError,
    Unauthorized,
    Unprocessable,
)
from gateway.feedback_auth import TICKET_HEADER
from gateway.http_body import read_body
from gateway.http_infer import InferEndpoint, infer_path
from gateway.http_responses import JSON, error_response, json_response
from gateway.protocol import (
    Feedback,
    FleetTraffic,
    InferenceRequest,
    StudentUpdate,
    TrafficState,
    TrafficUpdate,
)
from gateway.service import GatewayService
from gateway.validation import describe_body_errors, is_invalid_json

log = logging.getLogger(__name__)

EXTENSIONS = ("binary_tensor_data",)
"""The protocol extensions this gateway implements, as named in the server metadata."""

_VERSIONED = ("/v2/models/{model}", "/v2/models/{model}/versions/{version}")
UNSUPPORTED_EXTENSIONS: dict[str, tuple[tuple[str, ...], str]] = {
    "statistics": (
        ("/v2/models/stats", *(prefix + "/stats" for prefix in _VERSIONED)),
        "per-backend statistics are Prometheus metrics at /metrics",
    ),
    "model configuration": (
        tuple(prefix + "/config" for prefix in _VERSIONED),
        "the signature is in the model metadata, GET /v2/models/<model>",
    ),
    "model repository": (
        ("/v2/repository/{rest:path}",),
        "the gateway serves one logical model, fixed by its config",
    ),
    "system shared memory": (
        ("/v2/systemsharedmemory/{rest:path}",),
        "send tensors in the request body (binary tensor data extension)",
    ),
    "CUDA shared memory": (
        ("/v2/cudasharedmemory/{rest:path}",),
        "send tensors in the request body (binary tensor data extension)",
    ),
    "trace": (
        ("/v2/trace/{rest:path}", "/v2/models/{model}/trace/{rest:path}"),
        "follow a request by its x-request-id header",
    ),
    "logging": (("/v2/logging",), "set the log level with distill-gateway --log-level"),
}
"""Triton's HTTP extensions this gateway does not implement: their paths, and what to use."""
_Body = TypeVar("_Body", bound=BaseModel)


class GatewayApp(FastAPI):
    """FastAPI, with the infer route answered ahead of routing (``gateway.http_infer``)."""

    infer_endpoint: InferEndpoint | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.infer_endpoint is not None and scope["type"] == "http" and (
                scope["method"] == "POST"):  # fmt: skip
            model_and_version = infer_path(scope["path"])
            if model_and_version is not None:
                await self.infer_endpoint(scope, receive, send, *model_and_version)
                return
        await super().__call__(scope, receive, send)


ALL_PARTS = frozenset({"v2", "admin", "metrics"})
"""What one listener serves: the V2 API (and feedback), the admin API, ``/metrics``."""


def create_app(
    service: GatewayService,
    registry: CollectorRegistry,
    admin_token: SecretStr | None,
    parts: frozenset[str] = ALL_PARTS,
) -> GatewayApp:
    """The app for one listener. The one that serves the V2 API owns the service's lifecycle;
    the admin and metrics listeners, when they have ports of their own, only serve."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        service.start_background()
        yield
        await service.close()

    app = GatewayApp(
        title="distill-gateway", version=__version__, lifespan=lifespan if "v2" in parts else None
    )
    if "v2" in parts:
        app.infer_endpoint = InferEndpoint(service)
    _install_error_handlers(app)
    if "v2" in parts:
        _add_v2_routes(app, service)
    if "admin" in parts:
        _add_admin_routes(app, service, admin_token)
    if "metrics" in parts:

        @app.get("/metrics")
        async def metrics() -> Response:
            return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app


def _add_v2_routes(app: FastAPI, service: GatewayService) -> None:
    limit = service.settings.max_request_bytes

    @app.get("/v2/health/live")
    async def live() -> Response:
        return json_response({"live": True})

    @app.get("/v2/health/ready")
    async def ready() -> Response:
        is_ready = service.is_ready()
        return json_response({"ready": is_ready}, 200 if is_ready else 503)

    @app.get("/v2")
    @app.get("/v2/")  # the spec's spelling; answered, not redirected
    async def server_metadata() -> Response:
        return json_response(
            {
                "name": "distill-gateway",
                "version": __version__,
                "extensions": list(EXTENSIONS),
            }
        )

    # Triton's extensions that this gateway does not implement are answered, not left to 404,
    # so a client that probes for one learns why. Registered before /v2/models/{model}.
    for extension, (paths, hint) in UNSUPPORTED_EXTENSIONS.items():
        for path in paths:
            _answer_unsupported(app, path, extension, hint)

    async def model_metadata(request: Request, model: str) -> Response:
        service.check_model(model, request.path_params.get("version"))
        return json_response(service.model_metadata())

    async def model_ready(request: Request, model: str) -> Response:
        service.check_model(model, request.path_params.get("version"))
        is_ready = service.is_ready()
        return json_response({"name": model, "ready": is_ready}, 200 if is_ready else 503)

    async def infer(request: Request, model: str) -> Response:
        """Registered for the OpenAPI document and for the other methods' 405: a POST is
        answered by ``InferEndpoint`` before routing."""
        raise AssertionError("POST /infer is served by gateway.http_infer")  # pragma: no cover

    async def feedback(request: Request, model: str) -> Response:
        service.check_model(model, request.path_params.get("version"))
        body = _parse(Feedback, await read_body(request, limit))
        headers = request.headers
        scored = await service.record_feedback(body, headers.get(TICKET_HEADER),
                                               headers.get("authorization"))  # fmt: skip
        return json_response(scored)

    # Every model route twice: unversioned, and with the logical model's version.
    for suffix, endpoint, method, body in (
        ("", model_metadata, "GET", None),
        ("/ready", model_ready, "GET", None),
        ("/infer", infer, "POST", InferenceRequest),
        ("/feedback", feedback, "POST", Feedback),
    ):
        for prefix in _VERSIONED:
            app.add_api_route(prefix + suffix, endpoint, methods=[method],
                              openapi_extra=_documented_body(body))  # fmt: skip


def _add_admin_routes(app: FastAPI, service: GatewayService, admin_token: SecretStr | None) -> None:
    limit = service.settings.max_request_bytes

    @app.get("/admin/traffic")
    async def get_traffic() -> Response:
        return json_response(_traffic(service))

    @app.put("/admin/traffic", openapi_extra=_documented_body(TrafficUpdate))
    async def put_traffic(request: Request) -> Response:
        _authorize(request, admin_token, service)
        update = _parse(TrafficUpdate, await read_body(request, limit))
        await service.set_student_share(update.student_share)
        return json_response(_traffic(service))

    @app.put("/admin/student", openapi_extra=_documented_body(StudentUpdate))
    async def put_student(request: Request) -> Response:
        """Serve a registered model as the student; only at share 0 (409 otherwise)."""
        _authorize(request, admin_token, service)
        update = _parse(StudentUpdate, await read_body(request, limit))
        await service.load_student(update.model_id)
        return json_response(_traffic(service))


def _documented_body(model: type[BaseModel] | None) -> dict[str, Any] | None:
    """The OpenAPI request body of a route that reads its body itself (to bound its size and
    decode it its own way), so the document says what to send (and fuzzers can send it)."""
    if model is None:
        return None
    schema = _inline_refs(model.model_json_schema())
    content = {JSON: {"schema": schema}}
    return {"requestBody": {"required": True, "content": content}}


def _inline_refs(schema: dict[str, Any]) -> dict[str, Any]:
    """pydantic's ``$defs`` resolved in place: FastAPI does not carry them into the document."""
    definitions = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return resolve(definitions[node["$ref"].rsplit("/", 1)[-1]])
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(item) for item in node]
        return node

    resolved: dict[str, Any] = resolve(schema)
    return resolved


def _answer_unsupported(app: FastAPI, path: str, extension: str, hint: str) -> None:
    async def unsupported(request: Request) -> Response:
        return json_response(
            {
                "error": f"distill-gateway does not implement the {extension} extension "
                f"({request.method} {request.url.path}): {hint}"
            },
            501,
        )

    app.add_api_route(path, unsupported, methods=["GET", "POST"])


def _traffic(service: GatewayService) -> dict[str, object]:
    """What this replica applies; in a fleet, also what the fleet wants and who this is."""
    split, fleet = service.split, service.fleet
    state = TrafficState(student_share=split.student_share, generation=split.generation,
                         student_id=service.student_id,
                         metrics_url=service.settings.state.advertise_metrics_url)  # fmt: skip
    if service.cascade is not None:
        state.mode, state.cascade = "cascade", service.cascade.status()
    if fleet is not None:
        wanted = fleet.fleet_share
        state.fleet = None if wanted is None else FleetTraffic(student_share=wanted.share,
            generation=wanted.generation, student_id=wanted.student)  # fmt: skip
        state.student_error = fleet.student_error
        state.replica_id = fleet.replica_id
        state.replicas = len(fleet.replicas)
    return state.model_dump(exclude_none=True)


def _authorize(request: Request, admin_token: SecretStr | None, service: GatewayService) -> None:
    if admin_token is None:
        raise Forbidden(
            "admin API disabled: start the gateway with DISTILL_GATEWAY_ADMIN_TOKEN set"
        )
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given:
        _refuse(request, service, "missing")
        raise Unauthorized("missing bearer token: send 'Authorization: Bearer <token>'")
    if not hmac.compare_digest(given.strip().encode(), admin_token.get_secret_value().encode()):
        _refuse(request, service, "invalid")
        raise Unauthorized("invalid bearer token")


def _refuse(request: Request, service: GatewayService, reason: str) -> None:
    """Counted and logged, with where it came from and never with the token it carried."""
    service.count_auth_failure(reason)
    client = request.client.host if request.client else "unknown"
    log.warning("admin API: %s %s from %s refused: %s bearer token",
                request.method, request.url.path, client, reason)  # fmt: skip


def _parse(model: type[_Body], body: bytes) -> _Body:
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        if is_invalid_json(exc):
            raise BadRequest(describe_body_errors(exc)) from exc
        raise Unprocessable(describe_body_errors(exc)) from exc


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(GatewayError)
    async def gateway_error(_: Request, exc: GatewayError) -> Response:
        return error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        return json_response(
            {"error": f"{exc.detail}: {request.method} {request.url.path}"},
            exc.status_code,
            dict(exc.headers or {}),
        )

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> Response:
        return json_response({"error": str(exc)}, 422)

"""HTTP: the Open Inference Protocol (KServe V2) endpoints, feedback, admin and metrics.

Every route finds its model's ``GatewayService`` in the ``Runtime`` and translates HTTP into one
call on it; errors become ``{"error": ...}``.
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
    Conflict,
    Forbidden,
    GatewayError,
    Unauthorized,
    Unprocessable,
)
from gateway.feedback_auth import TICKET_HEADER
from gateway.http_body import read_body
from gateway.http_infer import InferEndpoint, infer_path
from gateway.http_responses import JSON, error_response, json_response
from gateway.metrics import MULTIPROCESS
from gateway.protocol import (
    ADMIN_MODEL_SHADOW,
    ADMIN_MODEL_STUDENT,
    ADMIN_MODEL_TRAFFIC,
    MODELS,
    Feedback,
    FleetTraffic,
    InferenceRequest,
    ModelListEntry,
    RepositoryIndexEntry,
    RepositoryIndexRequest,
    ShadowRate,
    StudentUpdate,
    TrafficState,
    TrafficUpdate,
)
from gateway.runtime import Runtime
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
    "model repository's load and unload": (
        ("/v2/repository/models/{rest:path}",),
        "the models served are fixed by the gateway's config (models:); POST "
        "/v2/repository/index lists them",
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
    runtime: Runtime,
    registry: CollectorRegistry,
    admin_token: SecretStr | None,
    parts: frozenset[str] = ALL_PARTS,
) -> GatewayApp:
    """The app for one listener. The one that serves the V2 API owns the models' lifecycle;
    the admin and metrics listeners, when they have ports of their own, only serve."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        runtime.start_background()
        yield
        await runtime.close()

    app = GatewayApp(
        title="distill-gateway", version=__version__, lifespan=lifespan if "v2" in parts else None
    )
    if "v2" in parts:
        app.infer_endpoint = InferEndpoint(runtime)
    _install_error_handlers(app)
    if "v2" in parts:
        _add_v2_routes(app, runtime)
    if "v2" in parts or "admin" in parts:  # the controller knows only admin URLs
        _add_model_list(app, runtime)
    if "admin" in parts:
        _add_admin_routes(app, runtime, admin_token)
    if "metrics" in parts:

        @app.get("/metrics")
        async def metrics() -> Response:
            return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app


def _add_v2_routes(app: FastAPI, runtime: Runtime) -> None:
    limit = runtime.settings.max_request_bytes

    @app.get("/v2/health/live")
    async def live() -> Response:
        return json_response({"live": True})

    @app.get("/v2/health/ready")
    async def ready() -> Response:
        is_ready = runtime.is_ready()
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

    @app.post("/v2/repository/index")
    async def repository_index(request: Request) -> Response:
        """The repository extension's index, in Triton's shape (its ``ready`` filter too)."""
        body = await read_body(request, limit)
        wanted = _parse(RepositoryIndexRequest, body or b"{}")
        return json_response([
            RepositoryIndexEntry(name=each.name, version=each.version, state=each.state,
                                 reason=each.reason).model_dump()
            for each in runtime.statuses(ready_only=wanted.ready)
        ])  # fmt: skip

    def service_of(request: Request, model: str) -> GatewayService:
        service = runtime.service_for(model)
        service.check_version(request.path_params.get("version"))
        return service

    async def model_metadata(request: Request, model: str) -> Response:
        metadata = service_of(request, model).model_metadata()
        return json_response({
            "name": metadata.name,
            "versions": [metadata.version],
            "platform": metadata.platform,
            "inputs": [spec.as_metadata() for spec in metadata.inputs],
            "outputs": [spec.as_metadata() for spec in metadata.outputs],
            # beyond the V2 fields (clients ignore what they do not know): which student serves
            "student_id": metadata.student_id,
        })  # fmt: skip

    async def model_ready(request: Request, model: str) -> Response:
        is_ready = service_of(request, model).is_ready()
        return json_response({"name": model, "ready": is_ready}, 200 if is_ready else 503)

    async def infer(request: Request, model: str) -> Response:
        """Registered for the OpenAPI document and for the other methods' 405: a POST is
        answered by ``InferEndpoint`` before routing."""
        raise AssertionError("POST /infer is served by gateway.http_infer")  # pragma: no cover

    async def feedback(request: Request, model: str) -> Response:
        service = service_of(request, model)
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


def _add_model_list(app: FastAPI, runtime: Runtime) -> None:
    @app.get(MODELS)
    async def list_models() -> Response:
        """Every model served (a convenience beside the repository index, as KServe's)."""
        listed = [
            ModelListEntry(name=each.name, versions=[each.version], ready=each.ready,
                           student_id=each.student_id)
            for each in runtime.statuses()
        ]  # fmt: skip
        return json_response({"models": [entry.model_dump() for entry in listed]})


def _add_admin_routes(app: FastAPI, runtime: Runtime, admin_token: SecretStr | None) -> None:
    """Per model under ``/admin/models/{model}/``; ``/admin/traffic`` and ``/admin/student`` name
    no model and serve only a gateway of one (409 otherwise, naming the models)."""
    limit = runtime.settings.max_request_bytes

    def authorized(request: Request, model: str) -> None:
        # a refusal is counted under the model the route names (the first model's for an unknown
        # one: a client never picks a label value)
        counted = runtime.services.get(model) or next(iter(runtime.services.values()))
        _authorize(request, admin_token, counted)

    async def get_traffic(model: str) -> Response:
        return json_response(_traffic(runtime.service_for(model)))

    async def set_share(request: Request, model: str) -> GatewayService:
        authorized(request, model)
        service = runtime.service_for(model)
        update = _parse(TrafficUpdate, await read_body(request, limit))
        await service.set_student_share(update.student_share)
        return service

    async def set_student(request: Request, model: str) -> GatewayService:
        """Serve a registered model as the student; only at share 0 (409 otherwise)."""
        authorized(request, model)
        service = runtime.service_for(model)
        update = _parse(StudentUpdate, await read_body(request, limit))
        await service.load_student(update.model_id)
        return service

    async def put_traffic(request: Request, model: str) -> Response:
        return json_response(_traffic(await set_share(request, model)))

    async def put_student(request: Request, model: str) -> Response:
        return json_response(_traffic(await set_student(request, model)))

    async def get_shadow(model: str) -> Response:
        service = runtime.service_for(model)
        answer = ShadowRate(model=model, sample_rate=service.shadow.sample_rate,
                            configured=service.settings.shadow.sample_rate)  # fmt: skip
        return json_response(answer.model_dump())

    async def put_shadow(request: Request, model: str) -> Response:
        authorized(request, model)
        service = runtime.service_for(model)
        update = _parse(ShadowRate, await read_body(request, limit))
        if MULTIPROCESS:  # it would move one worker's rate of N, and read back as all of them
            raise Conflict("the shadow sample rate is each worker's own with --workers: set "
                           "shadow.sample_rate in the config instead")  # fmt: skip
        if update.model not in (None, model):
            raise BadRequest(f"the body names model '{update.model}', the path '{model}'")
        previous, service.shadow.sample_rate = service.shadow.sample_rate, update.sample_rate
        log.info("model %s: shadow sample rate %.4g -> %.4g", model, previous, update.sample_rate)
        return await get_shadow(model)

    app.add_api_route(ADMIN_MODEL_TRAFFIC, get_traffic, methods=["GET"])
    app.add_api_route(ADMIN_MODEL_SHADOW, get_shadow, methods=["GET"])
    app.add_api_route(ADMIN_MODEL_SHADOW, put_shadow, methods=["PUT"],
                      openapi_extra=_documented_body(ShadowRate))  # fmt: skip
    app.add_api_route(ADMIN_MODEL_TRAFFIC, put_traffic, methods=["PUT"],
                      openapi_extra=_documented_body(TrafficUpdate))  # fmt: skip
    app.add_api_route(ADMIN_MODEL_STUDENT, put_student, methods=["PUT"],
                      openapi_extra=_documented_body(StudentUpdate))  # fmt: skip

    # The unnamed routes answer as they did before several models, without ``model``: a
    # controller of that version reads the answer strictly, and would refuse the key.
    @app.get("/admin/traffic")
    async def get_only_traffic() -> Response:
        return json_response(_traffic(runtime.only_service("traffic"), named=False))

    @app.put("/admin/traffic", openapi_extra=_documented_body(TrafficUpdate))
    async def put_only_traffic(request: Request) -> Response:
        service = await set_share(request, runtime.only_service("traffic").model)
        return json_response(_traffic(service, named=False))

    @app.put("/admin/student", openapi_extra=_documented_body(StudentUpdate))
    async def put_only_student(request: Request) -> Response:
        service = await set_student(request, runtime.only_service("student").model)
        return json_response(_traffic(service, named=False))


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


def _traffic(service: GatewayService, named: bool = True) -> dict[str, object]:
    """What this replica applies; in a fleet, also what the fleet wants and who this is; the
    model's name unless ``named`` is False (the unnamed routes)."""
    split, fleet = service.split, service.fleet
    state = TrafficState(model=service.model if named else None,
                         student_share=split.student_share,
                         generation=split.generation,
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

"""The Open Inference Protocol over gRPC: ``inference.GRPCInferenceService`` (the stubs that ship
with tritonclient) on grpc.aio, and ``grpc.health.v1`` for Kubernetes probes, both over the same
``GatewayService`` of each model as HTTP.

Routing comes from the ``x-routing-key`` and ``x-canary`` metadata, exactly as the HTTP headers;
answers carry ``x-served-by`` and ``x-request-id`` in their initial metadata. Errors map to gRPC
codes as Triton maps them, with the message the HTTP path gives.
"""

from __future__ import annotations

import time
from typing import Any, NoReturn

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from gateway import __version__
from gateway.config import ServerTlsConfig
from gateway.errors import GatewayError, Overloaded
from gateway.feedback_auth import TICKET_HEADER
from gateway.grpc_codec import decode_grpc_request, echoable, encode_grpc_response
from gateway.request_ids import new_request_id
from gateway.runtime import Runtime
from gateway.service import GatewayService, InferRequest

SERVICE_NAME = "inference.GRPCInferenceService"
EXTENSIONS = ("binary_tensor_data",)

# HTTP status (the gateway's errors carry one) -> gRPC code, as Triton answers the same mistakes.
GRPC_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.ALREADY_EXISTS,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    501: grpc.StatusCode.UNIMPLEMENTED,
    503: grpc.StatusCode.UNAVAILABLE,
}

# The RPCs this gateway does not implement, and what to use instead.
UNIMPLEMENTED = {
    "ModelStreamInfer": "streaming inference: send one ModelInfer per request",
    "ModelConfig": "model configuration: ModelMetadata has the signature",
    "ModelStatistics": "statistics: per-backend metrics are Prometheus metrics at /metrics",
    "RepositoryModelLoad": "the model repository's load: the models are fixed by the config",
    "RepositoryModelUnload": "the model repository's unload: the models are fixed by the config",
    "SystemSharedMemoryStatus": "system shared memory: send tensors in the request",
    "SystemSharedMemoryRegister": "system shared memory: send tensors in the request",
    "SystemSharedMemoryUnregister": "system shared memory: send tensors in the request",
    "CudaSharedMemoryStatus": "CUDA shared memory: send tensors in the request",
    "CudaSharedMemoryRegister": "CUDA shared memory: send tensors in the request",
    "CudaSharedMemoryUnregister": "CUDA shared memory: send tensors in the request",
    "TraceSetting": "trace: follow a request by its x-request-id",
    "LogSettings": "logging: set the level with distill-gateway --log-level",
}


async def _abort(context: grpc.aio.ServicerContext, exc: GatewayError) -> NoReturn:
    code = GRPC_CODES.get(exc.status_code, grpc.StatusCode.INTERNAL)
    if isinstance(exc, Overloaded):  # HTTP's Retry-After, as trailing metadata
        await context.abort(code, exc.message, (("retry-after", str(exc.retry_after_seconds)),))
    await context.abort(code, exc.message)
    raise AssertionError("unreachable: abort raises")  # pragma: no cover


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime

    async def _service(
        self, context: grpc.aio.ServicerContext, model: str, version: str
    ) -> GatewayService:
        try:
            service = self._runtime.service_for(model)
            service.check_version(version or None)
        except GatewayError as exc:
            await _abort(context, exc)
        return service

    async def ServerLive(self, request: Any, context: Any) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self._runtime.is_ready())

    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelReadyResponse:
        service = await self._service(context, request.name, request.version)
        return pb.ModelReadyResponse(ready=service.is_ready())

    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryIndexResponse:
        entry = pb.RepositoryIndexResponse.ModelIndex
        return pb.RepositoryIndexResponse(models=[
            entry(name=each.name, version=each.version, state=each.state, reason=each.reason)
            for each in self._runtime.statuses(ready_only=request.ready)
        ])  # fmt: skip

    async def ServerMetadata(self, request: Any, context: Any) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(
            name="distill-gateway", version=__version__, extensions=list(EXTENSIONS)
        )

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelMetadataResponse:
        service = await self._service(context, request.name, request.version)
        metadata = service.model_metadata()
        # which student serves (HTTP's student_id), where a V2 message has no field for it
        await context.send_initial_metadata((("x-student-id", metadata.student_id or ""),))
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=metadata.name,
            versions=[metadata.version],
            platform=metadata.platform,
            inputs=[tensor(name=s.name, datatype=s.datatype, shape=s.shape)
                    for s in metadata.inputs],
            outputs=[tensor(name=s.name, datatype=s.datatype, shape=s.shape)
                     for s in metadata.outputs],
        )  # fmt: skip

    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInferResponse:
        received_at = time.perf_counter()
        # a made-up id where the client's cannot go back in metadata (decoding then refuses it)
        request_id = request.id if request.id and echoable(request.id) else new_request_id()
        metadata = {key: value for key, value in context.invocation_metadata() or ()}
        service = self._runtime.services.get(request.model_name)
        if service is None:  # not counted: a client never picks a label value
            await context.send_initial_metadata((("x-request-id", request_id),))
            await _abort(context, self._runtime.unknown(request.model_name))
        try:
            service.check_version(request.model_version or None)
            role = service.route(metadata, "grpc")
            decoded = decode_grpc_request(
                request, service.signature, service.settings.max_batch_size
            )
        except Overloaded as exc:  # counted where it was shed
            await context.send_initial_metadata((("x-request-id", request_id),))
            await _abort(context, exc)
        except GatewayError as exc:
            service.count_rejected(exc.status_code, "grpc")
            await context.send_initial_metadata((("x-request-id", request_id),))
            await _abort(context, exc)
        try:
            admitted = service.admit("grpc")  # once the message is complete and decoded
        except Overloaded as exc:
            await context.send_initial_metadata((("x-request-id", request_id),))
            await _abort(context, exc)
        with admitted:
            try:
                result = await service.infer(InferRequest.of(
                    decoded, request_id, "grpc", received_at, metadata,
                    transport_timeout=context.time_remaining(), role=role))  # fmt: skip
            except GatewayError as exc:
                await context.send_initial_metadata((("x-request-id", request_id),))
                await _abort(context, exc)
        escalated = (("x-escalated", result.escalated),) if result.escalated else ()
        await context.send_initial_metadata(
            (("x-served-by", result.served_by), ("x-request-id", request_id),
             (TICKET_HEADER, result.ticket), *escalated)
        )  # fmt: skip
        return encode_grpc_response(service.model, service.version, request_id, result.outputs)


def _unimplemented(name: str, hint: str) -> Any:
    async def answer(self: InferenceServicer, request: Any, context: Any) -> NoReturn:
        await context.abort(
            grpc.StatusCode.UNIMPLEMENTED,
            f"distill-gateway does not implement {name}: {hint}",
        )
        raise AssertionError("unreachable")  # pragma: no cover

    return answer


for _name, _hint in UNIMPLEMENTED.items():
    setattr(InferenceServicer, _name, _unimplemented(_name, _hint))


class ReadinessHealth(health_pb2_grpc.HealthServicer):  # type: ignore[misc]
    """``grpc.health.v1``: SERVING while the gateway is ready (the teacher is), for the whole
    server ("") and for the inference service by name."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.HealthCheckResponse:
        if request.service not in ("", SERVICE_NAME):
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
        serving = self._runtime.is_ready()
        status = health_pb2.HealthCheckResponse.SERVING if serving else (
            health_pb2.HealthCheckResponse.NOT_SERVING)  # fmt: skip
        return health_pb2.HealthCheckResponse(status=status)


class PortUnavailable(OSError):
    """The gRPC port could not be bound."""


def create_grpc_server(
    host: str,
    port: int,
    max_message_bytes: int,
    tls: ServerTlsConfig | None = None,
    shared: bool = False,
) -> grpc.aio.Server:
    """The server, its port bound (so a port in use is found before the models load), over TLS
    when ``tls`` names a certificate; the servicers are added with ``attach`` once the service
    exists."""
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            # A port in use is an error, unless the workers of one --workers group share it
            ("grpc.so_reuseport", int(shared)),
        ]
    )
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        if tls is not None and tls.certfile is not None and tls.keyfile is not None:
            key_and_chain = (tls.keyfile.read_bytes(), tls.certfile.read_bytes())
            bound = server.add_secure_port(address, grpc.ssl_server_credentials([key_and_chain]))
        else:
            bound = server.add_insecure_port(address)
    except RuntimeError as exc:
        raise PortUnavailable(f"cannot listen on {address} (gRPC): {exc}") from exc
    if bound == 0:
        raise PortUnavailable(f"cannot listen on {address} (gRPC): address in use or not allowed")
    return server


def attach(server: grpc.aio.Server, runtime: Runtime) -> None:
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(runtime), server)
    health_pb2_grpc.add_HealthServicer_to_server(ReadinessHealth(runtime), server)

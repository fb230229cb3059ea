"""The V2 infer route as plain ASGI, ahead of FastAPI's routing.

It is the one route on the hot path, and FastAPI's router, dependency machinery and middleware
stack cost more per request than decoding, running the student and encoding together (a py-spy
profile at 16 concurrent clients: about 45 % of the event loop's time). Everything else a request
meets on it is the same as on any route: the body limit, its timeout (408) and decompression,
the codec, admission once the body is in (503 when shed), the service, and JSON errors with the
request's id. FastAPI still
documents the route (``app.py`` registers it for the OpenAPI document) and answers every other
method on it.
"""

from __future__ import annotations

import logging
import time

from starlette.datastructures import Headers
from starlette.types import Receive, Scope, Send

from gateway.codec import HEADER_LENGTH, decode_request, encode_response
from gateway.errors import GatewayError, InferenceFailed, Overloaded, RequestTimeout
from gateway.feedback_auth import TICKET_HEADER
from gateway.http_body import ClientGone, off_loop_if_big, read_asgi_body
from gateway.http_responses import error_response
from gateway.request_ids import new_request_id
from gateway.runtime import Runtime
from gateway.service import InferRequest

log = logging.getLogger(__name__)
JSON = b"application/json"
BINARY = b"application/octet-stream"
TICKET_HEADER_BYTES = TICKET_HEADER.encode()


def infer_path(path: str) -> tuple[str, str | None] | None:
    """(model, version) when ``path`` is ``/v2/models/{model}[/versions/{version}]/infer``."""
    parts = path.split("/")
    if len(parts) == 5 and parts[:3] == ["", "v2", "models"] and parts[4] == "infer":
        return (parts[3], None) if parts[3] else None
    if (len(parts) == 7 and parts[:3] == ["", "v2", "models"] and parts[4] == "versions"
            and parts[6] == "infer" and parts[3] and parts[5]):  # fmt: skip
        return parts[3], parts[5]
    return None


class InferEndpoint:
    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self._limit = runtime.settings.max_request_bytes
        self._body_timeout = runtime.settings.overload.body_timeout_ms / 1000.0

    @staticmethod
    async def _error(
        scope: Scope, receive: Receive, send: Send, exc: GatewayError, request_id: str
    ) -> None:
        """In the same shape as every other route's errors (``http_responses``)."""
        await error_response(exc, {"x-request-id": request_id})(scope, receive, send)

    async def __call__(
        self, scope: Scope, receive: Receive, send: Send, model: str, version: str | None
    ) -> None:
        received_at = time.perf_counter()
        request_id = new_request_id()  # unless the request names its own
        service = self._runtime.services.get(model)
        if service is None:  # not counted: a client never picks a label value
            await self._error(scope, receive, send, self._runtime.unknown(model), request_id)
            return
        headers = Headers(scope=scope)
        # Nothing is held while the body arrives: a request counts once it is complete.
        try:
            service.check_version(version)
            reserved = service.take_body(headers.get("content-length"), "http")
            try:
                body = await read_asgi_body(receive, headers, self._limit, self._body_timeout)
                role = service.route(headers, "http")  # shed here costs no decoding
                decoded = await off_loop_if_big(len(body), decode_request, body,
                                                headers.get(HEADER_LENGTH), service.signature,
                                                service.settings.max_batch_size)  # fmt: skip
            finally:
                service.give_body_back(reserved)
        except ClientGone:
            return
        except Overloaded as exc:  # counted where it was shed
            await self._error(scope, receive, send, exc, request_id)
            return
        except TimeoutError:
            service.count_body_timeout("http")
            await self._error(scope, receive, send, RequestTimeout(
                f"the request body did not arrive within {self._body_timeout * 1000:.0f} ms "
                "(overload.body_timeout_ms)"), request_id)  # fmt: skip
            return
        except GatewayError as exc:
            service.count_rejected(exc.status_code, "http")
            await self._error(scope, receive, send, exc, request_id)
            return
        except Exception:  # a bug in decoding: the client still gets JSON and an id
            log.exception("internal error while decoding request %s", request_id)
            service.count_rejected(500, "http")
            await self._error(scope, receive, send, InferenceFailed(
                f"internal error while decoding request {request_id}; it is in the "
                "gateway's log with its traceback"), request_id)  # fmt: skip
            return
        request_id = decoded.id or request_id
        try:
            admitted = service.admit("http")
        except Overloaded as exc:
            await self._error(scope, receive, send, exc, request_id)
            return
        with admitted:
            try:
                result = await service.infer(
                    InferRequest.of(decoded, request_id, "http", received_at, headers, role=role)
                )
            except GatewayError as exc:
                await self._error(scope, receive, send, exc, request_id)
                return
            answer, header_length = encode_response(
                service.model, service.version, request_id, result.outputs, decoded.outputs
            )
        extra = [
            (b"x-served-by", result.served_by.encode()),
            (b"x-request-id", request_id.encode()),
            (TICKET_HEADER_BYTES, result.ticket.encode()),
        ]
        if result.escalated:  # the cascade's student was unsure: true, the teacher answered;
            extra.append((b"x-escalated", result.escalated.encode()))  # failed: the student
        if header_length is not None:
            extra.append((HEADER_LENGTH.encode(), str(header_length).encode()))
        await _send(send, 200, BINARY if header_length is not None else JSON, answer, extra)


async def _send(
    send: Send, status: int, content_type: bytes, body: bytes, extra: list[tuple[bytes, bytes]]
) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode()),
               *extra]  # fmt: skip
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})

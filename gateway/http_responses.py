"""HTTP answers in the gateway's JSON shape: ``{"error": ...}`` with the headers the error calls
for (``WWW-Authenticate``, ``Retry-After``)."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response

from gateway.errors import GatewayError, Overloaded, Unauthorized

JSON = "application/json"


def json_response(
    content: Any, status_code: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(orjson.dumps(content), status_code, headers, media_type=JSON)


def error_response(exc: GatewayError, headers: dict[str, str] | None = None) -> Response:
    headers = dict(headers or {})
    if isinstance(exc, Unauthorized):
        headers["www-authenticate"] = "Bearer"
    if isinstance(exc, Overloaded):
        headers["retry-after"] = str(exc.retry_after_seconds)
    return json_response({"error": exc.message}, exc.status_code, headers)

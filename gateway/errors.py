"""The gateway's errors. Each carries the HTTP status it is answered with.

GatewayError
 +-- BadRequest (400)            malformed inference request, named precisely
 +-- Unauthorized (401)          admin call without the right bearer token
 +-- Forbidden (403)             admin API disabled: no token configured
 +-- NotFound (404)              unknown model, unknown or expired feedback id
 +-- RequestTimeout (408)        a body not sent within ``overload.body_timeout_ms``
 +-- Conflict (409)              a second label for the same request
 +-- PayloadTooLarge (413)       body over ``max_request_bytes``
 +-- UnsupportedMediaType (415)  a Content-Encoding we cannot decode
 +-- Unprocessable (422)         a well-formed admin or feedback body with a bad value
 +-- InferenceFailed (500)       an unexpected exception while serving a valid request
 +-- DeadlineExceeded (504)      the request's own deadline passed while its backend ran
 +-- BackendUnavailable (503)    the backend cannot serve at all
 |    +-- BackendTimeout (503)    the backend did not answer in time
 +-- Overloaded (503)            shed: the request could not start in time
      +-- Shed (503)              with the reason (``gateway.overload``)
"""

from __future__ import annotations


class GatewayError(Exception):
    status_code = 500
    backend: str | None = None  # the backend that failed last, when it was not the one chosen

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(GatewayError):
    status_code = 400


class ModelRejectedInput(BadRequest):
    """The model itself refused the request's input (ONNX Runtime's INVALID_ARGUMENT: a token id
    past the embedding table, say) after every check the gateway knows of passed. The teacher's
    refusal is the request's fault (400); a student's falls back to the teacher, which may take
    what the student cannot (``gateway.service``)."""


class Unauthorized(GatewayError):
    status_code = 401


class Forbidden(GatewayError):
    status_code = 403


class NotFound(GatewayError):
    status_code = 404


class RequestTimeout(GatewayError):
    status_code = 408


class Conflict(GatewayError):
    status_code = 409


class PayloadTooLarge(GatewayError):
    status_code = 413


class UnsupportedMediaType(GatewayError):
    status_code = 415


class Unprocessable(GatewayError):
    status_code = 422


class InferenceFailed(GatewayError):
    status_code = 500


class DeadlineExceeded(GatewayError):
    """The request's deadline, not the backend's timeout, ended its call: no verdict on the
    backend, and counted with no backend (``gateway.service``)."""

    status_code = 504


class BackendUnavailable(GatewayError):
    status_code = 503


class BackendTimeout(BackendUnavailable):
    pass


class Overloaded(GatewayError):
    status_code = 503

    def __init__(self, message: str, retry_after_seconds: int) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds

"""The one error a state store raises, whatever the client library's own was."""

from __future__ import annotations

from gateway.errors import GatewayError


class StoreUnavailable(GatewayError):
    """The store did not answer (down, unreachable, too slow): 503, retryable."""

    status_code = 503

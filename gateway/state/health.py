"""Whether the store answers, as this replica last saw it, and its failures counted by operation."""

from __future__ import annotations

import logging

from prometheus_client import Counter, Gauge

from gateway.state.errors import StoreUnavailable

log = logging.getLogger(__name__)


class StoreHealth:
    """Up until an operation fails; up again when one succeeds (the heartbeat tries every
    ``state.heartbeat_seconds``). While down, the request path leaves the store alone."""

    def __init__(self, up: Gauge, errors: Counter, model: str) -> None:
        self.up = True
        self._up_gauge = up.labels(model)
        self._errors = errors
        self._model = model
        self._up_gauge.set(1)

    def failed(self, op: str, exc: StoreUnavailable) -> None:
        self._errors.labels(self._model, op).inc()
        if self.up:
            log.error("%s; serving on at the last applied share, predictions kept in this "
                      "process until it is back", exc.message)  # fmt: skip
        self.up = False
        self._up_gauge.set(0)

    def succeeded(self) -> None:
        if not self.up:
            log.info("state store reachable again")
        self.up = True
        self._up_gauge.set(1)

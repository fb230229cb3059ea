"""Admission control: a process works on at most ``max_inflight`` inference requests at once, and
answers the next one at once with 503 and ``Retry-After`` (gRPC: UNAVAILABLE) rather than queueing
it without bound, as Envoy does at its pending-request limit. Admitted requests keep their
latency; shed ones cost the client one round trip, and another replica (or a retry) serves them.
"""

from __future__ import annotations

from types import TracebackType

from gateway.config import BackendConfig, GatewaySettings, OnnxBackendConfig
from gateway.errors import Overloaded

TRITON_CAPACITY = 8
"""Calls a remote Triton backend is assumed to run at once, for the default limit (Triton queues
and batches on its side; set ``overload.max_inflight`` to what your Triton sustains)."""
REQUESTS_PER_SLOT = 2
"""Requests admitted per backend thread (or Triton slot): one running, one being decoded or
answered, so every thread stays busy and no queue builds. Measured on the shipped pair (one core,
bench_reliability): 2 per slot served as many requests per second as 4 (1,060 against 1,064) at
half the p99 (9.7 ms against 17.4 ms at capacity); 1 per slot lost 9 % of the throughput."""


def default_max_inflight(settings: GatewaySettings) -> int:
    """2 x (teacher's + student's capacity): 8 for the shipped pair (2 threads each)."""
    return REQUESTS_PER_SLOT * (
        backend_capacity(settings.teacher) + backend_capacity(settings.student)
    )


def backend_capacity(backend: BackendConfig) -> int:
    """Calls a backend works on at once: an in-process one's threads, or what a Triton is
    trusted with."""
    return backend.max_concurrency if isinstance(backend, OnnxBackendConfig) else TRITON_CAPACITY


class Admission:
    """Counts the requests being processed; ``enter`` refuses beyond the limit."""

    def __init__(self, limit: int, retry_after_seconds: int) -> None:
        self.limit = limit
        self.inflight = 0
        self._retry_after = retry_after_seconds

    def enter(self) -> Admission:
        """Use as ``with admission.enter():``; raises ``Overloaded`` when full."""
        if self.inflight >= self.limit:
            raise Overloaded(
                f"overloaded: {self.inflight} requests in flight (overload.max_inflight is "
                f"{self.limit}); retry after {self._retry_after} s",
                self._retry_after,
            )
        self.inflight += 1
        return self

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.inflight -= 1

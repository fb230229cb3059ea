"""Admission by time: a request waits for its backend at most a target delay, and is shed (503 and
``Retry-After``; gRPC UNAVAILABLE) only when it could not start in time.

A request counts once its body is complete and decoded, so a client that uploads slowly holds no
place. Each backend has a ``BackendQueue``: as many slots as calls it runs at once (its threads,
or what a Triton is trusted with); a request takes a free slot at once, or waits in line, first
come first served. It is shed at once when the line ahead of it, at the backend's measured call
time, would keep it waiting past its budget (``overload.max_queue_ms``, or less when its own
deadline is nearer), and after that budget if it is still waiting (the estimate was wrong). So a
burst is served from the queue, as Triton's queue policy and Facebook's CoDel queues do, and only
load beyond what the backend can answer in time is turned away. A request whose deadline has
passed is never started. ``InflightBound`` is a memory bound on all requests held, not the
working limit. A batched backend queues in its batcher instead (``gateway.batching``), with the
same budget and the same estimate, so the queue feeds its batches.
"""

from __future__ import annotations

import asyncio
import collections
import math
import time
from collections.abc import Callable
from types import TracebackType

from gateway.config import BackendConfig, OnnxBackendConfig
from gateway.errors import Overloaded

TRITON_CAPACITY = 8
"""Calls a remote Triton backend is trusted with at once (Triton queues and batches on its side)."""

SHED_REASONS = ("max_inflight", "body_memory", "queue_full", "queue_timeout", "deadline")
"""Why a request was shed (gateway_shed_total's reason): the memory bounds on requests held and on
bodies being read; a wait the line ahead would push past the budget; a wait that reached it; a
deadline spent before the call."""


def backend_capacity(backend: BackendConfig) -> int:
    """Calls a backend works on at once: an in-process one's threads, or what a Triton is
    trusted with."""
    return backend.max_concurrency if isinstance(backend, OnnxBackendConfig) else TRITON_CAPACITY


class Shed(Overloaded):
    """A request refused before its backend was called; never that backend's failure."""

    def __init__(self, reason: str, message: str, retry_after_seconds: int) -> None:
        super().__init__(f"overloaded: {message}; retry after {retry_after_seconds} s",
                         retry_after_seconds)  # fmt: skip
        self.reason = reason


class InflightBound:
    """Counts the requests held (decoded, not yet answered); ``enter`` refuses beyond the
    limit, which bounds memory, not latency."""

    def __init__(self, limit: int, retry_after_seconds: int) -> None:
        self.limit = limit
        self.inflight = 0
        self._retry_after = retry_after_seconds

    def enter(self) -> InflightBound:
        """Use as ``with bound.enter():``; raises ``Shed`` when full."""
        if self.inflight >= self.limit:
            raise Shed("max_inflight", f"{self.inflight} requests held (overload.max_inflight "
                       f"is {self.limit})", self._retry_after)  # fmt: skip
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


class BodyBudget:
    """Bytes of request bodies being read and decoded at once (each reserves its declared
    length, or the most a body may be): a memory bound on uploads, which hold no place in a
    queue while they arrive. One body is always let in, however large."""

    def __init__(self, limit_bytes: int, retry_after_seconds: int) -> None:
        self.limit = limit_bytes
        self.held = 0
        self._retry_after = retry_after_seconds

    def take(self, size: int) -> None:
        """Reserves ``size`` bytes (``give_back`` them after); raises ``Shed`` beyond the limit."""
        if self.held and self.held + size > self.limit:
            raise Shed("body_memory", f"{self.held} bytes of request bodies are being read "
                       f"(overload.max_body_bytes is {self.limit})", self._retry_after)  # fmt: skip
        self.held += size

    def give_back(self, size: int) -> None:
        self.held -= size


class CallTime:
    """A backend call's expected time: a moving average of the calls measured so far."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def learn(self, seconds: float) -> None:
        self.seconds = seconds if self.seconds == 0.0 else self.seconds + 0.1 * (
            seconds - self.seconds)  # fmt: skip

    def expected_wait(self, calls_ahead: int, slots: int) -> float:
        """How long a request waits behind ``calls_ahead`` calls on ``slots`` slots."""
        return math.ceil(calls_ahead / slots) * self.seconds


def shed_for_wait(expected: float, budget: float, retry_after: int) -> Shed | None:
    """The refusal for a request whose expected wait passes its budget, or None."""
    if budget <= 0:
        return Shed("deadline", "the request's deadline passed before its backend was free",
                    retry_after)  # fmt: skip
    if expected > budget:
        return Shed("queue_full", f"the queue ahead would take about {expected * 1000:.0f} ms; "
                    f"the most a request waits is {budget * 1000:.0f} ms", retry_after)  # fmt: skip
    return None


class BackendQueue:
    """The slots of one unbatched backend and the line for them, bounded by waiting time."""

    def __init__(
        self,
        slots: int,
        retry_after_seconds: int,
        observe_wait: Callable[[float], None] = lambda seconds: None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.slots = slots
        self.busy = 0
        self.waiting = 0  # requests in line now
        self.call_time = CallTime()
        self._retry_after = retry_after_seconds
        self._observe_wait = observe_wait
        self._clock = clock
        self._line: collections.deque[asyncio.Future[None]] = collections.deque()

    async def acquire(self, budget: float) -> None:
        """A slot, within ``budget`` seconds of waiting; raises ``Shed`` otherwise. The caller
        ``release``s it when its call returns."""
        if self.busy < self.slots and not self._line:
            self.busy += 1
            self._observe_wait(0.0)
            return
        refusal = shed_for_wait(self.expected_wait(), budget, self._retry_after)
        if refusal is not None:
            raise refusal
        waiter = asyncio.get_running_loop().create_future()
        self._line.append(waiter)
        self.waiting += 1
        started = self._clock()
        try:
            async with asyncio.timeout(budget):
                await waiter
        except TimeoutError:
            if not _handed_over(waiter):  # else the slot came as the budget ran out: it is ours
                waiter.cancel()
                raise Shed("queue_timeout", f"waited {budget * 1000:.0f} ms for the backend, "
                           "the most a request waits", self._retry_after) from None  # fmt: skip
        except asyncio.CancelledError:  # the client left: a slot handed over goes on
            if _handed_over(waiter):
                self.release()
            else:
                waiter.cancel()
            raise
        finally:
            self.waiting -= 1
        self._observe_wait(self._clock() - started)

    def expected_wait(self) -> float:
        """How long a request arriving now would wait for a slot."""
        if self.busy < self.slots and not self.waiting:
            return 0.0
        return self.call_time.expected_wait(self.waiting + 1, self.slots)

    def release(self, call_seconds: float | None = None) -> None:
        """Gives the slot to the next in line, or frees it; learns the call's time."""
        if call_seconds is not None:
            self.call_time.learn(call_seconds)
        while self._line:
            waiter = self._line.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot passes on: busy stays as it is
                return
        self.busy -= 1


def _handed_over(waiter: asyncio.Future[None]) -> bool:
    return waiter.done() and not waiter.cancelled()

"""A circuit breaker per backend: after enough failures in a window it opens, and requests meant
for that backend go elsewhere; after a cool-down one probe is let through (half-open), and its
success closes the circuit again."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from enum import StrEnum


class CircuitState(StrEnum):
    CLOSED = "closed"
    """Healthy: every request is let through."""
    OPEN = "open"
    """Failing: requests are turned away until the cool-down has passed."""
    HALF_OPEN = "half_open"
    """Cool-down over: one probe request at a time decides between closed and open."""


class CircuitBreaker:
    def __init__(
        self,
        failure_threshold: int,
        window_seconds: float,
        cool_down_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._threshold = failure_threshold
        self._window = window_seconds
        self._cool_down = cool_down_seconds
        self._clock = clock
        self._failures: deque[float] = deque()
        self._opened_at = 0.0
        self._probe_in_flight = False
        self.state = CircuitState.CLOSED

    def allow(self) -> bool:
        """May a request go to this backend now? (In half-open, one probe at a time.)"""
        if self.state is CircuitState.CLOSED:
            return True
        if self.state is CircuitState.OPEN:
            if self._clock() - self._opened_at < self._cool_down:
                return False
            self.state = CircuitState.HALF_OPEN
        if self._probe_in_flight:
            return False
        self._probe_in_flight = True
        return True

    def release_probe(self) -> None:
        """A call that ended without a verdict on the backend (its client went away): the next
        request may probe instead."""
        self._probe_in_flight = False

    def record_success(self) -> None:
        self._probe_in_flight = False
        if self.state is CircuitState.HALF_OPEN:
            self.state = CircuitState.CLOSED
            self._failures.clear()

    def record_failure(self) -> None:
        now = self._clock()
        self._probe_in_flight = False
        if self.state is CircuitState.HALF_OPEN:
            self._open(now)
            return
        self._failures.append(now)
        while self._failures and now - self._failures[0] > self._window:
            self._failures.popleft()
        if self.state is CircuitState.CLOSED and len(self._failures) >= self._threshold:
            self._open(now)

    def _open(self, now: float) -> None:
        self.state = CircuitState.OPEN
        self._opened_at = now
        self._failures.clear()

"""Fan-out of rollout events to the policy's receivers: each receiver's filter (event types,
minimum severity), the holding rate limit, and its own ``Delivery``."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import httpx

from controller.events import EventType, RolloutEvent, reason_key
from controller.notify.delivery import Delivery
from controller.notify.receiver import Receiver


class NotifyError(Exception):
    """A receiver cannot be set up (its ``secret_env`` is unset); the message names it."""


class Notifications:
    def __init__(
        self,
        receivers: list[Receiver],
        interval_seconds: float,
        count: Callable[[str, str], None],
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        """``count(receiver, outcome)`` counts each delivery's outcome."""
        self._every = interval_seconds
        self._deliveries: list[Delivery] = []
        self._last_holding: dict[str, tuple[str, float]] = {}  # receiver: (reason key, sent at)
        for index, receiver in enumerate(receivers):
            key = None
            if receiver.secret_env is not None:
                secret = os.environ.get(receiver.secret_env)
                if not secret:
                    raise NotifyError(f"notify[{index}] ({receiver.name}): secret_env "
                                      f"{receiver.secret_env} is not set")  # fmt: skip
                key = secret.encode()
            name = receiver.name

            def counted(outcome: str, name: str = name) -> None:
                count(name, outcome)

            self._deliveries.append(Delivery(receiver, key, counted, transport))

    def emit(self, event: RolloutEvent) -> None:
        """Queues ``event`` for every receiver that wants it; never blocks."""
        for delivery in self._deliveries:
            if self._wanted(delivery.receiver, event):
                delivery.put(event)

    def _wanted(self, receiver: Receiver, event: RolloutEvent) -> bool:
        if receiver.events is not None and event.type not in receiver.events:
            return False
        if event.level.rank < receiver.min_severity.rank:
            return False
        if event.type is not EventType.HOLDING:
            self._last_holding.pop(receiver.name, None)  # a new situation: the next hold is news
            return True
        key = reason_key(event.reason)
        last = self._last_holding.get(receiver.name)
        quiet = receiver.holding_every_intervals * self._every
        if last is not None and last[0] == key and event.at - last[1] < quiet:
            return False
        self._last_holding[receiver.name] = (key, event.at)
        return True

    def close(self, seconds: float) -> None:
        """Flushes every receiver, all at once, for at most ``seconds``; a call then in hand
        still ends within its receiver's timeout."""
        deadline = time.monotonic() + seconds
        for delivery in self._deliveries:
            delivery.finish()
        for delivery in self._deliveries:
            delivery.wait(deadline)
        for delivery in self._deliveries:
            delivery.stop()
        for delivery in self._deliveries:
            delivery.close()

    @property
    def flush_seconds(self) -> float:
        """Long enough for each receiver's last event's first attempt."""
        return max((d.receiver.timeout_seconds for d in self._deliveries), default=0.0) + 1.0

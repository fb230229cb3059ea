"""Delivery to one receiver: a bounded queue and one worker thread, so events arrive in order
and a slow or dead receiver never holds a tick (a full queue drops the new event, counted).

Outcomes (``canary_notifications_total{outcome}``): ``delivered``; ``retried`` (each retry of
a timeout, a refused connection, 429 or 5xx); ``failed`` (every attempt spent, or the event could
not be encoded); ``rejected`` (another 4xx: retrying would not help); ``dropped`` (the queue was
full, or still held events, or a call in hand, when the controller stopped and its flush time ran
out). Every event put ends in exactly one of delivered, failed, rejected or dropped.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import queue
import random
import threading
import time
from collections.abc import Callable

import httpx

from controller.events import RolloutEvent, strict_json
from controller.http_deadline import Post, post
from controller.notify.formats import FORMATS
from controller.notify.receiver import Receiver

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Distill-Signature"
OUTCOMES = ("delivered", "retried", "failed", "rejected", "dropped")


def signature(key: bytes, body: bytes, at: int) -> str:
    """``t=<unix seconds>,sha256=<hex>``: HMAC-SHA256 of ``<t>.<body>`` (Slack's and Stripe's
    scheme), so a receiver that refuses an old ``t`` cannot be sent a captured event again."""
    signed = str(at).encode() + b"." + body
    return f"t={at},sha256=" + hmac.new(key, signed, hashlib.sha256).hexdigest()


def _retryable(status: int) -> bool:
    return status == 429 or status >= 500


class Delivery:
    def __init__(
        self,
        receiver: Receiver,
        key: bytes | None,
        count: Callable[[str], None],
        transport: httpx.AsyncBaseTransport | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.receiver = receiver
        self._key = key
        self._count = count
        self._encode, self._content_type = FORMATS[receiver.format]
        # one place more than the limit, for close()'s end marker; put() keeps the limit
        self._queue: queue.Queue[RolloutEvent | None] = queue.Queue(receiver.queue_size + 1)
        self._rng = rng or random.Random()
        self._stopping = threading.Event()  # set: no more backoff sleeps, drain and go
        self._transport = transport
        # the event in hand is counted once: by the worker when it ends, or by close() if the
        # worker outlives its join (then the worker's own count is skipped)
        self._settle = threading.Lock()
        self._in_hand = False
        self._abandoned = False
        self._thread = threading.Thread(target=self._work, name=f"notify-{receiver.name}",
                                        daemon=True)  # fmt: skip
        self._thread.start()

    def put(self, event: RolloutEvent) -> None:
        """Never blocks: a full queue drops ``event`` (one producer: the controller's thread)."""
        if self._queue.qsize() < self.receiver.queue_size:
            self._queue.put_nowait(event)
        else:
            log.warning("notifications to %s: queue full, dropped %s", self.receiver.name,
                        event.type.value)  # fmt: skip
            self._count("dropped")

    def finish(self) -> None:
        """No more events: the worker ends after those queued (``close``)."""
        self._queue.put(None)

    def wait(self, deadline: float) -> None:
        """Lets the worker deliver what is queued until ``deadline`` (``time.monotonic``)."""
        self._thread.join(max(0.0, deadline - time.monotonic()))

    def stop(self) -> None:
        """No retry waits any more; the events still queued are dropped."""
        self._stopping.set()

    def close(self) -> None:
        """After ``stop``: the call in hand ends within its timeout; what is left is counted
        dropped."""
        self._stopping.set()
        self._thread.join(self.receiver.timeout_seconds + 1.0)  # one call's total deadline
        with self._settle:
            self._abandoned = True
            if self._in_hand:
                self._in_hand = False
                self._count("dropped")
        while True:
            try:
                left = self._queue.get_nowait()
            except queue.Empty:
                break
            if left is not None:
                self._count("dropped")
        self._queue.put_nowait(None)  # a worker still in a call ends after it

    def _work(self) -> None:
        while True:
            event = self._queue.get()
            if event is None:
                return
            if self._stopping.is_set():
                self._count("dropped")
                continue
            with self._settle:
                if self._abandoned:  # close() gave up on this worker meanwhile
                    self._count("dropped")
                    continue
                self._in_hand = True
            try:
                outcome = self._deliver(event)
            except Exception:  # an encoder's surprise: this event fails, the worker goes on
                log.exception("notifications to %s: could not send %s", self.receiver.name,
                              event.type.value)  # fmt: skip
                outcome = "failed"
            with self._settle:
                if self._in_hand and not self._abandoned:
                    self._count(outcome)
                self._in_hand = False

    def _deliver(self, event: RolloutEvent) -> str:
        """Sends ``event`` until delivered or given up; returns the outcome to count."""
        body = strict_json(self._encode(event))
        backoff = self.receiver.backoff_seconds
        for attempt in range(1, self.receiver.max_attempts + 1):
            headers = {"Content-Type": self._content_type}
            if self._key is not None:  # signed at each attempt: its t is when it was sent
                headers[SIGNATURE_HEADER] = signature(self._key, body, int(time.time()))
            got = post(Post(self.receiver.url, body, self.receiver.timeout_seconds, headers),
                       self._transport)  # fmt: skip
            if isinstance(got, httpx.HTTPError):  # timeouts, refused connections, broken answers
                why = got.__class__.__name__
            elif got.is_success:
                return "delivered"
            elif not _retryable(got.status_code):
                log.warning("notifications to %s: %s refused with %d", self.receiver.name,
                            event.type.value, got.status_code)  # fmt: skip
                return "rejected"
            else:
                why = f"answered {got.status_code}"
            if attempt == self.receiver.max_attempts:
                break
            self._count("retried")
            # full doubling, times 0.5-1 of it: receivers coming back are not hit all at once
            if self._stopping.wait(backoff * self._rng.uniform(0.5, 1.0)):
                break
            backoff *= 2
        log.warning("notifications to %s: gave up on %s after %d attempts (%s)",
                    self.receiver.name, event.type.value, attempt, why)  # fmt: skip
        return "failed"

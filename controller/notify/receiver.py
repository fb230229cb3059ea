"""One notification receiver in the policy's ``notify:`` list."""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, model_validator

from controller.events import EventType, Severity
from gateway.validation import StrictModel


class Receiver(StrictModel):
    url: str = Field(pattern=r"^https?://")
    """Where each event is POSTed (a Slack incoming webhook's URL for ``format: slack``)."""
    name: str = ""
    """Names the receiver in metrics and logs; default: the URL's host (never its path, which
    for Slack holds the secret)."""
    format: Literal["json", "slack", "cloudevents"] = "json"
    """``json``: the event itself; ``slack``: an incoming-webhook message; ``cloudevents``:
    CloudEvents 1.0 structured mode (``application/cloudevents+json``), the event as ``data``."""
    events: list[EventType] | None = None
    """Which event types to send; default: all."""
    min_severity: Severity = Severity.INFO
    """Events below this severity (info < warning < critical) are not sent."""
    secret_env: str | None = None
    """An environment variable holding an HMAC key: each attempt is signed,
    ``X-Distill-Signature: t=<unix seconds>,sha256=<hex>``, HMAC-SHA256 of ``<t>.<body>``. Read
    when the controller starts (unset: it refuses)."""
    timeout_seconds: float = Field(default=2.0, gt=0, le=30)
    """One delivery attempt's limit in all (connecting, sending, the whole answer)."""
    max_attempts: int = Field(default=4, ge=1, le=10)
    """Attempts per event; timeouts, refused connections, 429 and 5xx are retried after
    exponential backoff with jitter, any other 4xx is not."""
    backoff_seconds: float = Field(default=0.5, gt=0, le=60)
    """The first retry's backoff; doubled at each retry, times a random 0.5-1."""
    queue_size: int = Field(default=100, ge=1, le=10_000)
    """Events waiting for this receiver; past it, new events are dropped (and counted), so a
    slow receiver never holds a tick."""
    holding_every_intervals: int = Field(default=10, ge=1)
    """A ``holding`` event with the same reason as the last one is sent again only after this
    many analysis intervals."""

    @model_validator(mode="after")
    def _named(self) -> Receiver:
        if not self.name:
            self.name = urlsplit(self.url).hostname or "receiver"
        return self

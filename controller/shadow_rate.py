"""The watch's shadow sample rate on the gateways: ``PUT /admin/models/{model}/shadow`` with a
``gateway.protocol.ShadowRate`` (bearer token), answered with one; ``GET`` reads it.

A replica's rate is its own (not shared through a fleet's store, and its config's again after
a restart), so the watch sets it on every gateway, at its first look and then on any that
joined, missed it or restarted since (each look reads every gateway's rate); each gateway's
configured rate is put back when the watch ends (``restore``), so a watch restarted after a
crash does not keep its own. A gateway without the route (404: an older gateway) or of
``--workers`` (409: the rate would be one worker's) keeps its configured rate, said once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

from controller.gateway_paths import shadow_path
from gateway.protocol import ShadowRate

log = logging.getLogger(__name__)


class ShadowRateError(Exception):
    pass


@dataclass
class ShadowRateSetter:
    """Sets ``rate`` for ``model`` on the gateways ``targets()`` names (admin base URLs), each
    until it confirms: a gateway that joins later, or failed last time, gets it at the next
    ``apply``."""

    model: str
    rate: float
    client: httpx.Client
    targets: Callable[[], list[str]]
    token: str | None = None
    before: dict[str, float] = field(default_factory=dict)  # each gateway's configured rate
    confirmed: set[str] = field(default_factory=set)
    unsupported: set[str] = field(default_factory=set)  # answered 404: no such route
    urls: list[str] = field(default_factory=list)  # the gateways at the last apply

    def apply(self) -> list[str]:
        """Sets the rate on every gateway that has not confirmed it; the problems, one per
        gateway (none: every gateway has it, or has no route for it)."""
        self.urls = self.targets()
        problems = []
        for url in self.urls:
            if url in self.unsupported:
                continue
            try:
                current, configured = self._read(url)
                self.before.setdefault(url, configured)
                if url in self.confirmed and current == self.rate:
                    continue  # still ours (a gateway that restarted is back at its config's)
                self._answer("PUT", url, self.rate)
                self.confirmed.add(url)
            except ShadowRateError as exc:
                problems.append(f"{url}: {exc}")
        return problems

    def everywhere(self) -> bool:
        """Every gateway of the last ``apply`` confirmed the rate."""
        return bool(self.urls) and all(url in self.confirmed for url in self.urls)

    def restore(self) -> list[str]:
        """Puts each gateway's rate before the watch back; the problems (a gateway that
        restarted since has its configured rate anyway)."""
        problems = []
        for url in sorted(self.confirmed):
            try:
                self._answer("PUT", url, self.before[url])
                self.confirmed.discard(url)
            except ShadowRateError as exc:
                problems.append(f"{url}: {exc}")
        return problems

    def _read(self, url: str) -> tuple[float, float]:
        """The gateway's rate now, and its config's (what to put back: a watch restarted after
        a crash would read its own rate as the one before it)."""
        answer = self._answer("GET", url)
        configured = answer.configured if answer.configured is not None else answer.sample_rate
        return answer.sample_rate, configured

    def _answer(self, method: str, url: str, rate: float | None = None) -> ShadowRate:
        """The rate the gateway answers (for a PUT, the one asked for, or ShadowRateError)."""
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        body = None if rate is None else {"model": self.model, "sample_rate": rate}
        try:
            response = self.client.request(method, f"{url}{shadow_path(self.model)}",
                                           json=body, headers=headers)  # fmt: skip
        except httpx.HTTPError as exc:
            raise ShadowRateError(f"unreachable ({exc.__class__.__name__}: {exc})") from None
        # no such route (an older gateway) or model, or a gateway of --workers (409): the rate
        # cannot be set there, and its configured one applies
        if response.status_code in (404, 409):
            self.unsupported.add(url)
            text = response.text.strip()[:200]
            log.warning("%s answers %d to %s (%s): its configured shadow.sample_rate applies",
                        url, response.status_code, shadow_path(self.model), text)  # fmt: skip
            raise ShadowRateError(f"HTTP {response.status_code} {text}: its configured "
                                  "shadow.sample_rate applies")  # fmt: skip
        if response.is_error:
            raise ShadowRateError(f"HTTP {response.status_code} {response.text.strip()[:200]}")
        try:
            answer = ShadowRate.model_validate_json(response.content)
        except ValueError as exc:
            raise ShadowRateError(f"unreadable answer ({exc})") from None
        if rate is not None and abs(answer.sample_rate - rate) > 1e-12:
            raise ShadowRateError(f"answered {answer.sample_rate}, expected {rate}")
        return answer

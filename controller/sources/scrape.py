"""The default source: scrape every gateway's ``/metrics`` and difference the counters."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence

import httpx

from controller.promtext import Snapshot, combine, increase, parse
from controller.sources.base import Mark, MetricsSource, MetricsUnavailable

Targets = Mapping[str, str]
"""A gateway's name (its base URL, as the marks are keyed) -> the URL of its ``/metrics``."""


def beside(urls: Sequence[str]) -> Targets:
    """Gateways whose ``/metrics`` is served beside their admin API."""
    return {url: f"{url}/metrics" for url in urls}


class ScrapeSource(MetricsSource):
    """``targets`` is a list of gateways' base URLs (``/metrics`` beside them), or a function
    that names the gateways and where their metrics are at each scrape (a fleet's registry, or
    what each gateway advertises): a gateway that joined counts from its start, one that left is
    dropped."""

    def __init__(
        self,
        targets: Sequence[str] | Callable[[], Sequence[str] | Targets],
        client: httpx.Client,
    ) -> None:
        self._targets = targets if callable(targets) else (lambda: list(targets))
        self._client = client

    def mark(self) -> Mark:
        return Mark(at=time.time(), counters=self._scrape_all())

    def increase_since(self, mark: Mark) -> Snapshot:
        now = self._scrape_all()
        return combine(increase(snapshot, mark.counters.get(url, {}))
                       for url, snapshot in now.items())  # fmt: skip

    def _scrape_all(self) -> dict[str, Snapshot]:
        named = self._targets()
        targets = named if isinstance(named, Mapping) else beside(named)
        snapshots, failed = {}, []
        for name, endpoint in targets.items():
            try:
                response = self._client.get(endpoint)
                response.raise_for_status()
                snapshots[name] = parse(response.text)
            except httpx.HTTPError as exc:
                failed.append(f"{endpoint} ({_why(exc)})")
        if failed:
            raise MetricsUnavailable("cannot scrape " + ", ".join(failed))
        return snapshots


def _why(exc: httpx.HTTPError) -> str:
    if isinstance(exc, httpx.HTTPStatusError):
        return f"HTTP {exc.response.status_code}"
    return exc.__class__.__name__

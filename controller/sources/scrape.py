"""The default source: scrape every gateway's ``/metrics`` and difference the counters."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import httpx

from controller.promtext import Snapshot, combine, increase, parse
from controller.sources.base import Mark, MetricsSource, MetricsUnavailable


class ScrapeSource(MetricsSource):
    """``gateway_urls`` is a list, or a function that names the gateways at each scrape (a
    fleet's registry): a gateway that joined counts from its start, one that left is dropped."""

    def __init__(
        self, gateway_urls: Sequence[str] | Callable[[], Sequence[str]], client: httpx.Client
    ) -> None:
        self._urls = gateway_urls if callable(gateway_urls) else (lambda: list(gateway_urls))
        self._client = client

    def mark(self) -> Mark:
        return Mark(at=time.time(), counters=self._scrape_all())

    def increase_since(self, mark: Mark) -> Snapshot:
        now = self._scrape_all()
        return combine(increase(snapshot, mark.counters.get(url, {}))
                       for url, snapshot in now.items())  # fmt: skip

    def _scrape_all(self) -> dict[str, Snapshot]:
        snapshots, failed = {}, []
        for url in self._urls():
            try:
                response = self._client.get(f"{url}/metrics")
                response.raise_for_status()
                snapshots[url] = parse(response.text)
            except httpx.HTTPError as exc:
                failed.append(f"{url} ({exc.__class__.__name__})")
        if failed:
            raise MetricsUnavailable("cannot scrape " + ", ".join(failed))
        return snapshots

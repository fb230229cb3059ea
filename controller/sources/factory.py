"""Picks the metrics source: Prometheus when its URL is given, else scraping the gateways."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import httpx

from controller.sources.base import MetricsSource


def create_source(
    gateway_urls: Sequence[str] | Callable[[], Sequence[str] | Mapping[str, str]],
    prometheus_url: str | None,
    model: str,
    client: httpx.Client,
    prometheus_selector: str = "",
) -> MetricsSource:
    if prometheus_url:
        from controller.sources.prometheus import PrometheusSource

        return PrometheusSource(prometheus_url, model, client, prometheus_selector)
    from controller.sources.scrape import ScrapeSource

    return ScrapeSource(gateway_urls, client)

"""Where the scrape source reads each gateway's counters: beside its admin API, or where the
gateway advertises them (``metrics_url``, when ``metrics.port`` gives /metrics a port of its
own). HTTP through httpx's MockTransport; the real thing is tests/controller/test_metrics_apart.py.
"""

from __future__ import annotations

import httpx
import pytest

from controller.actuator import GatewayFleet
from controller.gateway_paths import traffic_path
from controller.sources import MetricsUnavailable
from controller.sources.scrape import ScrapeSource

ADMIN = "http://gw:8081"
METRICS = "http://gw:9101/metrics"
EXPOSITION = 'gateway_requests_total{model="digits",backend="student",code="200"} 7.0\n'


def transport(advertised: str | None) -> httpx.MockTransport:
    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == traffic_path("digits"):
            body = {"student_share": 0.05, "generation": 2}
            return httpx.Response(200, json={**body, "metrics_url": advertised} if advertised
                                  else body)  # fmt: skip
        if str(request.url) == (advertised or f"{ADMIN}/metrics"):
            return httpx.Response(200, text=EXPOSITION)
        return httpx.Response(404, text="not found")

    return httpx.MockTransport(answer)


@pytest.mark.parametrize("advertised", [METRICS, None])
def test_the_scrape_source_reads_the_metrics_where_the_gateway_says(advertised: str | None) -> None:
    with httpx.Client(transport=transport(advertised)) as client:
        fleet = GatewayFleet([ADMIN], "token", client, "digits")
        assert fleet.scrape_targets() == {ADMIN: advertised or f"{ADMIN}/metrics"}
        mark = ScrapeSource(fleet.scrape_targets, client).mark()
    assert list(mark.counters) == [ADMIN]  # marks stay keyed by the gateway, as persisted
    assert sum(mark.counters[ADMIN].values()) == 7.0


def test_a_gateway_whose_metrics_are_elsewhere_is_named_with_the_status_it_answered() -> None:
    refused = r"cannot scrape http://gw:8081/metrics \(HTTP 404\)"
    with (
        httpx.Client(transport=transport(METRICS)) as client,
        pytest.raises(MetricsUnavailable, match=refused),
    ):
        ScrapeSource([ADMIN], client).mark()  # what the controller did before metrics_url

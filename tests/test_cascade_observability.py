"""The dashboard's cascade row (issue 33), proven against a real Prometheus that scraped a real
gateway in cascade mode (the shipped digits pair, a threshold chosen from shadowed traffic)
during real traffic with labels: every cascade panel's query returns data."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from models.data import Split
from tests.servers import LABELLER, PrometheusProcess, TestGateway, wait_until
from tests.test_observability import RATE_WINDOW, _panel_queries

pytestmark = pytest.mark.e2e
TRAFFIC_SECONDS = 5.0
Scraped = tuple[PrometheusProcess, float, float]


@pytest.fixture(scope="module")
def scraped(
    start_gateway: Callable[..., TestGateway], tmp_path_factory: pytest.TempPathFactory,
    test_split: Split,
) -> Iterator[Scraped]:  # fmt: skip
    cascade = {"min_confidence": 0.9, "max_disagreement": 0.05, "min_samples": 20}
    gateway = start_gateway({
        "traffic": {"student_share": 1.0, "mode": "cascade", "cascade": cascade},
        "shadow": {"sample_rate": 1.0, "max_delay_ms": 0},
    })  # fmt: skip
    prometheus = PrometheusProcess(tmp_path_factory.mktemp("cascade-observed"),
                                   {"distill-gateway": [gateway.address]}).start()  # fmt: skip
    started = time.time()
    try:
        with httpx.Client(base_url=gateway.url, timeout=10) as client:
            sent = 0
            while time.time() < started + TRAFFIC_SECONDS:
                row = sent % len(test_split.y)
                body = {"id": f"c{sent}", "inputs": [{"name": "pixels", "shape": [1, 64],
                        "datatype": "FP32", "data": test_split.x[row].tolist()}]}  # fmt: skip
                assert client.post("/v2/models/digits/infer", json=body).status_code == 200
                scored = client.post(
                    "/v2/models/digits/feedback",
                    headers=LABELLER,
                    json={"id": f"c{sent}", "label": [int(test_split.y[row])]},
                )
                assert scored.status_code == 200, scored.text
                sent += 1
        done = time.time()
        wait_until(lambda: bool(prometheus.query(f"timestamp(up) > {done}")), 30,
                   "a scrape after the traffic")  # fmt: skip
        yield prometheus, started, time.time()
    finally:
        prometheus.stop()


@pytest.mark.parametrize(("title", "expr"), _panel_queries(cascade=True),
                         ids=[t for t, _ in _panel_queries(cascade=True)])  # fmt: skip
def test_every_cascade_panel_returns_data_for_a_cascade_gateway(
    scraped: Scraped, title: str, expr: str
) -> None:
    prometheus, started, ended = scraped
    concrete = expr.replace("$model", "digits").replace("$__rate_interval", RATE_WINDOW)
    result = prometheus.query(concrete, start=started, end=ended, step=1)
    values = [float(v) for series in result for _, v in series["values"]]
    assert any(not math.isnan(v) for v in values), f"{title}: no data for {concrete}"


def test_the_cascade_row_has_its_five_panels() -> None:
    assert len({title for title, _ in _panel_queries(cascade=True)}) == 5

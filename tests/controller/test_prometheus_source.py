"""The --prometheus source against a real Prometheus server scraping a real gateway: the same
numbers (within one scrape's lag) and the same verdicts as scraping the gateway directly."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from controller.analysis import assess
from controller.policy import Policy
from controller.sources.prometheus import BadSelector, PrometheusSource, window_query
from controller.sources.scrape import ScrapeSource
from models import MODELS_DIR
from tests.rollouts import (
    FAST_POLICY,
    canary_command,
    gateway_config,
    run_canary,
    share_of,
    traffic,
    write_policy,
)
from tests.servers import PrometheusProcess, TestGateway, wait_until

StartGateway = Callable[..., TestGateway]


@pytest.fixture
def prometheus_for(tmp_path: Path) -> Iterator[Callable[[list[TestGateway]], PrometheusProcess]]:
    started: list[PrometheusProcess] = []

    def start(gateways: list[TestGateway]) -> PrometheusProcess:
        server = PrometheusProcess(tmp_path, {"gateway": [g.address for g in gateways]}).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def test_same_numbers_and_verdicts_as_the_direct_source(
    start_gateway: StartGateway, prometheus_for: Callable[..., PrometheusProcess]
) -> None:
    gateway = start_gateway(gateway_config())
    gateway.set_share(0.25)
    prometheus = prometheus_for([gateway])
    with httpx.Client(timeout=10) as client:
        direct = ScrapeSource([gateway.url], client)
        through_prometheus = PrometheusSource(prometheus.url, "digits", client)
        this_job = PrometheusSource(prometheus.url, "digits", client, 'job="gateway"')
        another_fleet = PrometheusSource(prometheus.url, "digits", client, 'job=~"other.*"')
        direct_mark, prometheus_mark = direct.mark(), through_prometheus.mark()
        with traffic(gateway):
            wait_until(
                lambda: direct.window_since(direct_mark, "digits").student.requests >= 800,
                120, "student traffic",
            )  # fmt: skip
        stopped = time.time()
        # Prometheus sees the last of the traffic one scrape later.
        wait_until(lambda: _last_scrape(prometheus) > stopped + 1, 30, "a scrape after traffic")
        exact = direct.window_since(direct_mark, "digits")
        promql = through_prometheus.window_since(prometheus_mark, "digits")
        scoped = this_job.window_since(prometheus_mark, "digits")
        elsewhere = another_fleet.window_since(prometheus_mark, "digits")

    # A selector keeps the rollout to its own fleet: the same numbers for its job, none elsewhere.
    assert scoped.student.requests == pytest.approx(promql.student.requests, rel=0.05)
    assert elsewhere.student.requests == 0 and elsewhere.comparisons == 0

    for name in ("requests", "feedback_total"):
        ours, theirs = getattr(exact.student, name), getattr(promql.student, name)
        assert theirs == pytest.approx(ours, rel=0.15), name
    assert promql.comparisons == pytest.approx(exact.comparisons, rel=0.15)
    policy = Policy.model_validate({**FAST_POLICY, "min_requests": 100})
    direct_verdicts = {r.gate: r.verdict for r in assess(exact, exact, policy, False)}
    prometheus_verdicts = {r.gate: r.verdict for r in assess(promql, promql, policy, False)}
    assert prometheus_verdicts == direct_verdicts
    assert set(direct_verdicts.values()) == {"pass"}  # enough data that no gate is borderline


def _last_scrape(prometheus: PrometheusProcess) -> float:
    result = prometheus.query("timestamp(up)")
    return float(result[0]["value"][1]) if result else 0.0


def test_a_rollout_through_prometheus_rolls_a_bad_student_back(
    start_gateway: StartGateway,
    prometheus_for: Callable[..., PrometheusProcess],
    tmp_path: Path,
) -> None:
    gateway = start_gateway(gateway_config(MODELS_DIR / "student_bad.onnx"))
    prometheus = prometheus_for([gateway])
    state = tmp_path / "rollout.db"
    command = canary_command(
        [gateway], write_policy(tmp_path, interval_seconds=1), state,
        "--prometheus", prometheus.url, "--prometheus-selector", 'job="gateway"',
    )  # fmt: skip
    with traffic(gateway):
        result = run_canary(command)
    assert result.returncode == 3, result.stdout + result.stderr
    assert "min_agreement" in result.stdout
    assert share_of(gateway) == 0.0


def test_queries_escape_the_model_and_take_only_label_matchers() -> None:
    query = window_query("gateway_requests_total", 'di"g\\its', 60, 'namespace="ml", job!~"x.*"')
    assert '{model="di\\"g\\\\its",namespace="ml", job!~"x.*"}' in query
    for bad in ('job="a"} or vector(1) #', "job=a", 'job="a",', "} or up{"):
        with pytest.raises(BadSelector, match="not a list of label matchers"):
            PrometheusSource("http://127.0.0.1:9", "digits", httpx.Client(), bad)

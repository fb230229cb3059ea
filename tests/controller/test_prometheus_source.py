"""The --prometheus source against a real Prometheus server scraping a real gateway: the same
numbers (within one scrape's lag) and the same verdicts as scraping the gateway directly."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from controller.analysis import WindowMetrics, assess
from controller.policy import Policy
from controller.promtext import histogram_quantile
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


def _both_windows(
    gateway: TestGateway, prometheus: PrometheusProcess
) -> tuple[WindowMetrics, WindowMetrics, WindowMetrics, WindowMetrics]:
    """The same traffic seen by scraping the gateway, through PromQL, through PromQL scoped to
    this job, and through PromQL scoped to another fleet."""
    with httpx.Client(timeout=10) as client:
        direct = ScrapeSource([gateway.url], client)
        sources = [PrometheusSource(prometheus.url, "digits", client, selector)
                   for selector in ("", 'job="gateway"', 'job=~"other.*"')]  # fmt: skip
        direct_mark, prometheus_mark = direct.mark(), sources[0].mark()
        # Quiet edges: Prometheus samples the counters once more before the traffic starts and
        # once after it stops, so both windows hold exactly the same requests.
        marked = time.time()
        wait_until(lambda: _last_scrape(prometheus) > marked, 30, "a scrape before traffic")
        with traffic(gateway):
            wait_until(
                lambda: direct.window_since(direct_mark, "digits").student.requests >= 800,
                120, "student traffic",
            )  # fmt: skip
        stopped = time.time()
        # Prometheus sees the last of the traffic one scrape later.
        wait_until(lambda: _last_scrape(prometheus) > stopped + 1, 30, "a scrape after traffic")
        exact = direct.window_since(direct_mark, "digits")
        promql, scoped, elsewhere = (s.window_since(prometheus_mark, "digits") for s in sources)
    return exact, promql, scoped, elsewhere


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else math.nan


def _assert_same_inputs(exact: WindowMetrics, promql: WindowMetrics) -> None:
    """Every number a gate reads, with the tolerance each needs:

    - counts (requests, errors, labels, comparisons, KL count and sum, dollars): 15 %. Both
      windows hold the same requests (quiet edges), but PromQL's increase() extrapolates from
      the first and last samples toward the window's edges, by up to half a scrape interval
      (0.5 s) at the end of a window of about 20 s, and its start is a scrape later;
    - ratios and means (accuracy, agreement, mean KL, cost per request): 3 %, since numerator
      and denominator are sampled at the same instants and extrapolated by the same factor;
    - latency: the p50 and p99 the histograms give, within one bucket's width (the same buckets,
      counts off by the extrapolation above).
    """
    counts = 0.15
    for backend in ("teacher", "student"):
        ours, theirs = getattr(exact, backend), getattr(promql, backend)
        for name in (
            "requests",
            "feedback_total",
            "feedback_correct",
            "cost_dollars",
            "cpu_seconds",
        ):
            assert getattr(theirs, name) == pytest.approx(getattr(ours, name), rel=counts), (
                backend, name)  # fmt: skip
        assert theirs.errors == pytest.approx(ours.errors, rel=counts, abs=2)
        assert _ratio(theirs.feedback_correct, theirs.feedback_total) == pytest.approx(
            _ratio(ours.feedback_correct, ours.feedback_total), rel=0.03)  # fmt: skip
        assert _ratio(theirs.cost_dollars, theirs.requests) == pytest.approx(
            _ratio(ours.cost_dollars, ours.requests), rel=0.03)  # fmt: skip
        for q in (0.5, 0.99):
            mine, other = histogram_quantile(q, ours.latency), histogram_quantile(q, theirs.latency)
            edges = sorted({bound for bound, _ in ours.latency})
            assert _bucket_index(edges, other) - _bucket_index(edges, mine) in (-1, 0, 1), (
                backend, q, mine, other)  # fmt: skip
    for name in ("comparisons", "agreements", "kl_count", "kl_sum"):
        assert getattr(promql, name) == pytest.approx(getattr(exact, name), rel=counts), name
    assert _ratio(promql.agreements, promql.comparisons) == pytest.approx(
        _ratio(exact.agreements, exact.comparisons), rel=0.03)  # fmt: skip
    assert _ratio(promql.kl_sum, promql.kl_count) == pytest.approx(
        _ratio(exact.kl_sum, exact.kl_count), rel=0.03)  # fmt: skip
    # Labels by true class, as the per-class gate reads them.
    for backend in ("teacher", "student"):
        ours_by_class = getattr(exact, backend).feedback_by_class
        theirs_by_class = getattr(promql, backend).feedback_by_class
        assert set(theirs_by_class) == set(ours_by_class) and len(ours_by_class) == 10
        mine = sum(c.total for c in ours_by_class.values())
        assert sum(c.total for c in theirs_by_class.values()) == pytest.approx(mine, rel=counts)
    # The paired labels (shadowed requests that got a label): both accuracies on them.
    ours, theirs = exact.paired, promql.paired
    assert ours.total > 0
    assert theirs.total == pytest.approx(ours.total, rel=counts)
    for right in (("both_correct", "teacher_only"), ("both_correct", "student_only")):
        accuracy = [
            _ratio(sum(getattr(p, cell) for cell in right), p.total) for p in (ours, theirs)
        ]
        assert accuracy[1] == pytest.approx(accuracy[0], rel=0.03), right


def _bucket_index(edges: list[float], value: float) -> int:
    return next(i for i, edge in enumerate(edges) if value <= edge)


# Per student, the policies judged on the same windows, and what each must conclude.
SCENARIOS: dict[str, list[tuple[dict[str, object], set[str]]]] = {
    "student.onnx": [({}, {"pass"}), ({"min_requests": 10**9}, {"inconclusive"})],
    "student_bad.onnx": [({}, {"fail"})],  # wrong answers: agreement, accuracy, KL fail
}


@pytest.mark.parametrize("student", list(SCENARIOS), ids=["good", "bad"])
def test_same_numbers_and_verdicts_as_the_direct_source(
    start_gateway: StartGateway,
    prometheus_for: Callable[..., PrometheusProcess],
    student: str,
) -> None:
    gateway = start_gateway(gateway_config(MODELS_DIR / student))
    gateway.set_share(0.25)
    prometheus = prometheus_for([gateway])
    exact, promql, scoped, elsewhere = _both_windows(gateway, prometheus)

    _assert_same_inputs(exact, promql)
    for policy_changes, expected in SCENARIOS[student]:
        policy = Policy.model_validate({**FAST_POLICY, "min_requests": 100, **policy_changes})
        direct_verdicts = {r.gate: r.verdict for r in assess(exact, exact, policy, False)}
        prometheus_verdicts = {r.gate: r.verdict for r in assess(promql, promql, policy, False)}
        assert prometheus_verdicts == direct_verdicts, policy_changes
        assert expected <= set(direct_verdicts.values())  # the scenario is what it claims to be
    # A selector keeps the rollout to its own fleet: the same numbers for its job, none elsewhere.
    assert scoped.student.requests == pytest.approx(promql.student.requests, rel=0.05)
    assert elsewhere.student.requests == 0 and elsewhere.comparisons == 0


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

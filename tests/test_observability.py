"""The dashboards and rules, proven against a real Prometheus that scraped a real gateway and the
real controller during real traffic and real rollouts (one promoted, one aborted)."""

from __future__ import annotations

import gc
import json
import math
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from controller.local.traffic import TrafficGenerator, TrafficReport
from controller.promtext import Snapshot, increase, parse, select
from controller.rollout_store import RolloutStore
from gateway.metrics import LATENCY_BUCKETS
from tests.rollouts import (
    FAST_POLICY,
    canary_command,
    canary_env,
    gateway_config,
    operator,
    traffic,
    write_policy,
)
from tests.servers import BIN, PrometheusProcess, TestGateway, free_port, wait_until

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "grafana" / "dashboards" / "distill-gateway.json"
RULES = ROOT / "deploy" / "prometheus" / "rules"
RATE_WINDOW = "20s"


@dataclass
class Observed:
    gateway: TestGateway
    prometheus: PrometheusProcess
    started: float
    ended: float
    state: Path
    measured: TrafficReport  # client-side latencies at share 0.5
    measured_window: tuple[float, float]  # scrape times just before and just after
    measured_counters: Snapshot  # the gateway's own counters' increase over that traffic


def _fast_rules(tmp: Path) -> list[Path]:
    """The shipped rule files, evaluated every second instead of every 30 s."""
    copies = []
    for source in sorted(RULES.glob("*.yml")):
        rules = yaml.safe_load(source.read_text())
        for group in rules["groups"]:
            group["interval"] = "1s"
        copy = tmp / source.name
        copy.write_text(yaml.safe_dump(rules))
        copies.append(copy)
    return copies


@pytest.fixture(scope="module")
def observed(
    start_gateway: Callable[..., TestGateway], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Observed]:
    tmp = tmp_path_factory.mktemp("observed")
    gateway = start_gateway(gateway_config())
    metrics_port = free_port()
    controller_target = f"127.0.0.1:{metrics_port}"
    policy = write_policy(tmp, bake_seconds=3, interval_seconds=0.5)
    promoted_state, aborted_state = tmp / "promoted.db", tmp / "aborted.db"
    linger = ("--metrics-port", str(metrics_port), "--metrics-linger", "3")
    started = time.time()
    prometheus: PrometheusProcess | None = None
    try:
        with traffic(gateway):
            promoted = subprocess.Popen(
                canary_command([gateway], policy, promoted_state, *linger),
                stdout=subprocess.DEVNULL, env=canary_env(),
            )  # fmt: skip
            prometheus = PrometheusProcess(
                tmp,
                {"distill-gateway": [gateway.address], "distill-canary": [controller_target]},
                rule_files=_fast_rules(tmp),
            ).start()
            assert promoted.wait(timeout=180) == 0
            aborted = subprocess.Popen(
                canary_command([gateway], write_policy(tmp, bake_seconds=300, max_step_seconds=600),
                               aborted_state, *linger, "--reset"),  # the fleet is at 100 %
                stdout=subprocess.DEVNULL, env=canary_env(),
            )  # fmt: skip
            wait_until(lambda: gateway.metric("gateway_traffic_share", backend="student") == 0.05,
                       60, "the second rollout's first step")  # fmt: skip
            stepped = time.time()  # Prometheus must scrape both at this step before it ends

            def scraped_at_step() -> bool:
                jobs = ("distill-canary", "distill-gateway")
                return all(_last_scrape(prometheus, job) > stepped for job in jobs)

            wait_until(scraped_at_step, 30, "a scrape at the step")
            assert operator("abort", aborted_state).returncode == 0
            assert aborted.wait(timeout=60) == 3

        gateway.set_share(0.5)
        # The measured window runs from a scrape taken after all earlier traffic to one taken after
        # the measured traffic, so it holds exactly the measured requests.
        quiet = time.time()
        wait_until(lambda: _last_scrape(prometheus) > quiet, 30, "a scrape of the quiet gateway")
        window_start = _last_scrape(prometheus)
        before = parse(gateway.metrics_text())  # quiet: nothing moves until the traffic below
        gc.disable()  # no collector pauses in the client's own numbers
        try:
            measured = TrafficGenerator(gateway.url).run(requests=1500, workers=1)
        finally:
            gc.enable()
        done = time.time()
        after = parse(gateway.metrics_text())
        wait_until(lambda: _last_scrape(prometheus) > done, 30, "a scrape after the traffic")
        window_end = _last_scrape(prometheus)
        yield Observed(gateway, prometheus, started, time.time(), promoted_state, measured,
                       (window_start, window_end), increase(after, before))  # fmt: skip
    finally:  # stopped also when the fixture fails half-way
        if prometheus is not None:
            prometheus.stop()


def _last_scrape(prometheus: PrometheusProcess | None, job: str = "distill-gateway") -> float:
    assert prometheus is not None
    result = prometheus.query(f'timestamp(up{{job="{job}"}})')
    return float(result[0]["value"][1]) if result else 0.0


TASK_PANELS = ("Regression:", "Embedding:", "Multilabel:")
CASCADE_PANELS = "Cascade:"
"""A cascade gateway's panels (traffic.mode: cascade): tests/test_cascade_observability.py."""
TASK_RULES = "distill-gateway.tasks"
"""The panels and rules of other tasks than this classifier's: tests/test_task_observability.py."""


def _panel_queries(tasks: bool = False, cascade: bool = False) -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [
        (panel["title"], target["expr"])
        for panel in dashboard["panels"]
        for target in panel["targets"]
        if panel["title"].startswith(TASK_PANELS) == tasks
        and panel["title"].startswith(CASCADE_PANELS) == cascade
    ]


def _concrete(expr: str, window: str = RATE_WINDOW, model: str = "digits") -> str:
    """The query of a panel in ``model``'s repeat of its row, as Grafana sends it."""
    return expr.replace("$model", model).replace("$__rate_interval", window)


def _has_data(observed: Observed, expr: str) -> bool:
    result = observed.prometheus.query(
        _concrete(expr), start=observed.started, end=observed.ended, step=1
    )
    values = [float(v) for series in result for _, v in series["values"]]
    return any(not math.isnan(v) for v in values)


@pytest.mark.parametrize(("title", "expr"), _panel_queries(), ids=[t for t, _ in _panel_queries()])
def test_every_panel_query_parses_and_returns_data(
    observed: Observed, title: str, expr: str
) -> None:
    assert _has_data(observed, expr), f"{title}: no data for {_concrete(expr)}"


def _recorded_rules(tasks: bool = False) -> list[str]:
    names = []
    for path in sorted(RULES.glob("*.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            if (group["name"] == TASK_RULES) == tasks:
                names += [rule["record"] for rule in group["rules"] if "record" in rule]
    return names


@pytest.mark.parametrize("record", _recorded_rules())
def test_every_recording_rule_returns_data(observed: Observed, record: str) -> None:
    assert _has_data(observed, record), record


def test_rollbacks_and_promotions_show_as_annotations(observed: Observed) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    annotations = {a["name"]: a["expr"] for a in dashboard["annotations"]["list"]}
    assert set(annotations) == {"Rollbacks", "Promotions"}
    for name, expr in annotations.items():
        assert _has_data(observed, expr), name


def test_gateway_p99_agrees_with_what_the_traffic_generator_measured(observed: Observed) -> None:
    """The dashboard's time-in-gateway p99 per backend against the client's own p99.

    A client sees the gateway's time plus its own overhead (HTTP, tritonclient). So the gateway's
    p99 can be no higher than the client's p99 (to the bucket that holds it). Below, it must be at
    least the client's p90 less the overhead seen at the median (one bucket of slack): the client's
    own rare stalls on a shared 2-core machine (up to twice the gateway's p99 here) sit in its p99
    but are not gateway latency, so the client's p99 cannot bound it from below.
    """
    start, end = observed.measured_window
    window = f"{round((end - start + 0.5) * 1000)}ms"  # (end - window, end] holds ``start``
    at = end
    queries = [t["expr"] for p in json.loads(DASHBOARD.read_text())["panels"]
               if p["title"] == "Time in gateway p50 and p99" for t in p["targets"]]  # fmt: skip
    assert "0.5," in queries[0] and "0.99," in queries[1]
    p50s = _by_backend(observed.prometheus.query(_concrete(queries[0], window), time=at))
    p99s = _by_backend(observed.prometheus.query(_concrete(queries[1], window), time=at))
    for backend in ("teacher", "student"):
        client = np.array([s.latency_seconds for s in observed.measured.by_backend(backend)])
        assert len(client) > 300
        client_p99 = float(np.quantile(client, 0.99))
        overhead = float(np.median(client)) - p50s[backend]
        assert overhead >= 0, "no client is faster than the gateway"
        client_p90 = float(np.quantile(client, 0.90))
        low = _buckets_below(client_p90 - overhead, 2)
        high = _bucket_ceiling(client_p99)
        assert low <= p99s[backend] <= high, (
            f"{backend}: gateway p99 {p99s[backend] * 1000:.2f} ms, client p99 "
            f"{client_p99 * 1000:.2f} ms, client overhead at the median {overhead * 1000:.2f} ms"
        )


PRICES = {"teacher": 3.0, "student": 0.5}  # gateway_config()'s cost_per_hour
FAST_POLICY_GATES: dict[str, float] = FAST_POLICY["gates"]


def _expected_panel_values(counters: Snapshot) -> dict[tuple[str, int], dict[str, float]]:
    """(panel title, target index) -> series label -> the value the measured traffic must show,
    from the gateway's own counters (and, for cost, from the configured prices)."""

    def delta(name: str, **labels: str) -> float:
        return select(counters, name, model="digits", **labels)

    backends = ("teacher", "student")
    requests = {b: delta("gateway_requests_total", backend=b) for b in backends}
    served = {b: delta("gateway_requests_total", backend=b, code="200") for b in backends}
    live_seconds = {b: delta("gateway_backend_duration_seconds_sum", backend=b, path="live")
                    for b in backends}  # fmt: skip
    return {
        ("Student share", 0): {"": 0.5},
        ("Requests per second by backend", 0): dict(requests),  # times the window, below
        ("Error rate by backend", 0): {b: 0.0 for b in backends},
        ("Backend up (ready, circuit not open)", 0): {b: 1.0 for b in backends},
        ("Shadow agreement (top-1, student vs teacher)", 0): {"": delta(
            "gateway_shadow_agreements_total") / delta("gateway_shadow_comparisons_total")},
        ("Mean KL divergence (teacher || student)", 0): {"": delta(
            "gateway_shadow_kl_divergence_sum") / delta("gateway_shadow_kl_divergence_count")},
        ("Accuracy by backend (ground-truth feedback)", 0): {
            b: delta("gateway_feedback_correct_total", backend=b)
            / delta("gateway_feedback_total", backend=b) for b in backends},
        ("Cost per 1,000 requests by backend", 0): {
            b: 1000 * live_seconds[b] * PRICES[b] / 3600 / served[b] for b in backends},
        ("Shadow comparisons dropped per second", 0): {"": 0.0},
        ("Requests shed per second (overload, 503), by reason", 0): {"": 0.0},
        ("Queue delay p50 and p99 by backend, against the target", 2): {"": 0.1},
        ("CPU per request by backend (in-process backends)", 0): {
            b: delta("gateway_backend_cpu_seconds_total", backend=b, path="live") / served[b]
            for b in backends},
    }  # fmt: skip


# Means of measured values depend on which requests sit at the window's edges (KL, cost, CPU: 8 %);
# counts and ratios of counts get the default 3 %.
TOLERANCE = {"Mean KL divergence (teacher || student)": 0.08,
             "Cost per 1,000 requests by backend": 0.08,
             "CPU per request by backend (in-process backends)": 0.08}  # fmt: skip


CHECKED_PANELS = [
    ("Student share", 0), ("Requests per second by backend", 0), ("Error rate by backend", 0),
    ("Backend up (ready, circuit not open)", 0),
    ("Shadow agreement (top-1, student vs teacher)", 0),
    ("Mean KL divergence (teacher || student)", 0),
    ("Accuracy by backend (ground-truth feedback)", 0),
    ("Cost per 1,000 requests by backend", 0), ("Shadow comparisons dropped per second", 0),
    ("Requests shed per second (overload, 503), by reason", 0),
    ("Queue delay p50 and p99 by backend, against the target", 2),
    ("CPU per request by backend (in-process backends)", 0),
]  # fmt: skip


@pytest.mark.parametrize("panel", [f"{title} #{index}" for title, index in CHECKED_PANELS])
def test_each_gateway_panel_shows_what_the_traffic_did(observed: Observed, panel: str) -> None:
    """At share 0.5, 1,500 requests with labels and 25 % shadow: each panel's value over that
    window, against the gateway's own counters for the same traffic."""
    title, index = panel.rsplit(" #", 1)
    values = _expected_panel_values(observed.measured_counters)
    assert set(values) == set(CHECKED_PANELS)
    expected = values[(title, int(index))]
    start, end = observed.measured_window
    seconds = end - start + 0.5
    expr = next(p for p in json.loads(DASHBOARD.read_text())["panels"]
                if p["title"] == title)["targets"][int(index)]["expr"]  # fmt: skip
    result = observed.prometheus.query(_concrete(expr, f"{round(seconds * 1000)}ms"), time=end)
    shown = {s["metric"].get("backend", ""): float(s["value"][1]) for s in result}
    if title == "Requests per second by backend":
        # The first sample sits 0.5 s after the range's start, under 1.1 scrape intervals, so
        # rate() extrapolates the increase to the whole range: rate = increase / (end - start),
        # not / seconds (that read 10 % high on a 5 s window in CI).
        shown = {backend: rate * (end - start) for backend, rate in shown.items()}
    assert set(shown) == set(expected), (shown, expected)
    for series, value in expected.items():
        assert shown[series] == pytest.approx(value, rel=TOLERANCE.get(title, 0.03), abs=1e-9), (
            series, shown[series], value)  # fmt: skip


CANARY_SCALED = "Canary gates against their thresholds (1 = the threshold)"


def _panel(title: str, index: int) -> str:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    expr: str = next(p for p in panels if p["title"] == title)["targets"][index]["expr"]
    return _concrete(expr)


def test_the_canary_panels_show_how_the_aborted_rollout_ended(observed: Observed) -> None:
    """At the aborted controller's last scrape: rolled back at step 1, share 0, each gate's
    verdict one of pass / inconclusive / fail with its value inside its own interval."""
    prometheus = observed.prometheus
    series = prometheus.query('canary_phase{phase="RolledBack"} == 1', start=observed.started,
                              end=observed.ended, step=0.5)  # fmt: skip
    assert series, "Prometheus never saw the rollback"
    last = float(series[0]["values"][-1][0])

    def at_end(title: str, index: int = 0) -> dict[str, float]:
        result = prometheus.query(_panel(title, index), time=last)
        return {"/".join(s["metric"].values()): float(s["value"][1]) for s in result}

    assert at_end("Canary phase") == {"RolledBack": 1.0}
    assert at_end("Canary step") == {"": 1.0}
    assert at_end("Student share", 1) == {"": 0.0}
    gates = set(FAST_POLICY_GATES)
    verdicts = at_end("Canary gate verdicts: 1 pass, 0 inconclusive, -1 fail")
    assert set(verdicts) == gates and set(verdicts.values()) <= {-1.0, 0.0, 1.0}
    title = "Canary gates: value, interval and threshold"
    bounds = {(s["metric"]["gate"], s["metric"]["bound"]): float(s["value"][1])
              for s in prometheus.query(_panel(title, 0), time=last)}  # fmt: skip
    thresholds = at_end(title, 1)
    assert thresholds == {gate: float(limit) for gate, limit in FAST_POLICY_GATES.items()}
    assert {gate for gate, _ in bounds} == gates
    for gate in gates:
        low, value, high = (bounds[(gate, b)] for b in ("lower", "estimate", "upper"))
        if not math.isnan(value):
            assert low <= value <= high, gate
    # The same on one scale: each bound over its gate's threshold.
    scaled = {
        (s["metric"]["gate"], s["metric"]["bound"]): float(s["value"][1])
        for s in prometheus.query(_panel(CANARY_SCALED, 0), time=last)
    }
    for (gate, bound), value in bounds.items():
        if not math.isnan(value):
            assert scaled[(gate, bound)] == pytest.approx(value / thresholds[gate]), gate
    assert at_end("Canary step: bake elapsed, failures in a row, share drifts", 2) == {"": 0.0}
    (age,) = at_end("Seconds since the controller's last heartbeat").values()
    assert 0 <= age <= 10  # it ticked until shortly before its last scrape (3 s linger)


def _by_backend(result: list[dict[str, Any]]) -> dict[str, float]:
    return {series["metric"]["backend"]: float(series["value"][1]) for series in result}


def _bucket_floor(seconds: float) -> float:
    return max([0.0, *(bound for bound in LATENCY_BUCKETS if bound <= seconds)])


def _buckets_below(seconds: float, count: int) -> float:
    """The lower edge of the bucket ``count - 1`` buckets below the one that holds ``seconds``."""
    for _ in range(count):
        seconds = _bucket_floor(seconds) - 1e-12
    return max(0.0, seconds + 1e-12)


def _bucket_ceiling(seconds: float) -> float:
    return min([math.inf, *(bound for bound in LATENCY_BUCKETS if bound >= seconds)])


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium package")
def test_the_rollout_report_renders_its_charts_in_chromium(
    observed: Observed, tmp_path: Path
) -> None:
    report = tmp_path / "report.html"
    written = subprocess.run(
        [str(BIN / "distill-canary"), "report", "--state", str(observed.state), "--out",
         str(report)], capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert written.returncode == 0, written.stderr
    page = report.read_text()
    assert "Outcome:</b> Promoted" in page
    # The seed's comparison, from what this rollout measured: the student needs less CPU.
    cpu = re.search(r"<td>CPU per request \(ms\)</td><td>([0-9.]+)</td><td>([0-9.]+)</td>", page)
    assert cpu is not None and float(cpu[1]) > float(cpu[2]) > 0, page
    assert re.search(r"<td>accuracy</td><td>[0-9.]+%</td><td>[0-9.]+%</td>", page)
    assert "http" not in page.replace("http-equiv", "")  # self-contained: nothing to fetch
    # Five charts of the rollout, and one per gate with what its judge saw.
    gates = re.findall(r"Gate (\w+): what the judge saw", page)
    assert "min_agreement" in gates and "max_accuracy_drop" in gates
    charts = page.count("data:image/png;base64,")
    assert charts == 5 + len(set(gates))
    dom = _chromium("--dump-dom", f"file://{report}", tmp_path)
    assert f'data-charts-loaded="{charts}"' in dom  # every chart decoded to a real image
    screenshot = tmp_path / "report.png"
    _chromium(f"--screenshot={screenshot}", f"file://{report}", tmp_path)
    assert screenshot.stat().st_size > 20_000


def _chromium(action: str, url: str, tmp_path: Path) -> str:
    result = subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={tmp_path / 'chromium'}",
         "--window-size=1000,3000", "--virtual-time-budget=5000", action, url],
        capture_output=True, text=True, timeout=120, env={**os.environ, "HOME": str(tmp_path)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_the_aborted_rollout_is_recorded(observed: Observed) -> None:
    aborted = RolloutStore.open_existing(observed.state.with_name("aborted.db")).load()
    assert aborted is not None and aborted.rollback_reason is not None
    assert aborted.rollback_reason.startswith("aborted by an operator")

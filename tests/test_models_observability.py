"""The dashboard with several models (issue 27), proven against a real Prometheus that scraped one
real gateway serving two models and two real controllers rolling both out at once (a promoted,
b rolled back): every panel of the repeated rows returns data for each model, and each model's
row shows that model's rollout, not the other's."""

from __future__ import annotations

import json
import math
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from controller.local.processes import PrometheusProcess
from tests.conftest import StartGateway
from tests.rollouts import canary_command, canary_env, gateway_config, traffic, write_policy
from tests.servers import free_port, wait_until
from tests.test_observability import (
    DASHBOARD,
    _concrete,
    _fast_rules,
    _last_scrape,
    _panel_queries,
)

pytestmark = pytest.mark.e2e
MODELS = ("a", "b")  # both the shipped digits pair; a's rollout is promoted, b's rolled back
ALL = "(a|b)"  # what Grafana writes for $model with both chosen (a regex of the values)


@dataclass
class Scraped:
    prometheus: PrometheusProcess
    started: float
    ended: float

    def range(self, expr: str) -> list[dict[str, Any]]:
        return self.prometheus.query(expr, start=self.started, end=self.ended, step=1)


@pytest.fixture(scope="module")
def scraped(
    start_gateway: StartGateway, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Scraped]:
    tmp = tmp_path_factory.mktemp("models-observed")
    gateway = start_gateway({**gateway_config(), "models": [{"name": m} for m in MODELS]})
    (tmp / "a").mkdir()
    (tmp / "b").mkdir()
    policies = {
        "a": write_policy(tmp / "a", bake_seconds=3, interval_seconds=0.5),
        # b's gate cannot pass (no student answers within a microsecond): b is rolled back
        "b": write_policy(tmp / "b", failure_limit=1, gates={"max_latency_ms": 0.001}),
    }
    ports = {model: free_port() for model in MODELS}
    state = tmp / "rollouts.db"
    prometheus: PrometheusProcess | None = None
    started = time.time()
    try:
        with traffic(gateway, model=MODELS[0]):
            controllers = {
                model: subprocess.Popen(
                    [*canary_command([gateway], policies[model], state), "--model", model,
                     "--metrics-port", str(ports[model]), "--metrics-linger", "3"],
                    stdout=subprocess.DEVNULL, env=canary_env(),
                ) for model in MODELS
            }  # fmt: skip
            # ready once it has scraped every target, the gateway included
            prometheus = PrometheusProcess(
                tmp,
                {"distill-gateway": [gateway.address],
                 "distill-canary": [f"127.0.0.1:{port}" for port in ports.values()]},
                rule_files=_fast_rules(tmp),
            ).start()  # fmt: skip
            # b's traffic starts only now: b's student serves just the seconds before its
            # rollback, and counters that moved only before Prometheus's first scrape show no
            # increase (CI once saw b's drift panels all NaN, 0/0, when b finished first).
            with traffic(gateway, model=MODELS[1]):
                assert controllers["a"].wait(timeout=180) == 0  # promoted
                assert controllers["b"].wait(timeout=60) == 3  # rolled back
        done = time.time()
        wait_until(lambda: _last_scrape(prometheus) > done, 30, "a scrape after it all")
        yield Scraped(prometheus, started, time.time())
    finally:
        if prometheus is not None:
            prometheus.stop()


def _has_data(result: list[dict[str, Any]]) -> bool:
    return any(not math.isnan(float(v)) for s in result for _, v in s["values"])


PANELS = _panel_queries()


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize(("title", "expr"), PANELS, ids=[t for t, _ in PANELS])
def test_every_repeated_panel_returns_data_for_each_model(
    scraped: Scraped, model: str, title: str, expr: str
) -> None:
    query = _concrete(expr, model=model)
    assert _has_data(scraped.range(query)), f"{title}: no data for {query}"


def _last(scraped: Scraped, expr: str) -> dict[str, float]:
    """The series at the last step the query returned any (its controller's last scrape, for a
    controller's series), by their labels."""
    result = scraped.range(expr)
    last = max(float(s["values"][-1][0]) for s in result)
    return {"/".join(map(str, s["metric"].values())): float(s["values"][-1][1])
            for s in result if float(s["values"][-1][0]) == last}  # fmt: skip


def _panel(title: str, index: int = 0) -> str:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    expr: str = next(p for p in panels if p["title"] == title)["targets"][index]["expr"]
    return expr


def test_each_models_row_shows_its_own_rollout(scraped: Scraped) -> None:
    """a's row ends promoted at share 1, b's rolled back at share 0: a panel that mixed the two
    models (or read the other's) would show both phases, or a share between."""
    phase, share = _panel("Canary phase"), _panel("Student share")
    assert _last(scraped, _concrete(phase, model="a")) == {"Promoted": 1.0}
    assert _last(scraped, _concrete(phase, model="b")) == {"RolledBack": 1.0}
    assert set(_last(scraped, _concrete(share, model="a")).values()) == {1.0}
    assert set(_last(scraped, _concrete(share, model="b")).values()) == {0.0}
    gates = _panel("Canary gate verdicts: 1 pass, 0 inconclusive, -1 fail")
    verdicts = _last(scraped, _concrete(gates, model="b"))
    assert verdicts["max_latency_ms"] == -1.0  # b's failing gate, in b's row


def test_the_annotations_mark_each_chosen_models_own_end(scraped: Scraped) -> None:
    """With both models chosen, the rollback marker names b alone, the promotion marker a."""
    annotations = {a["name"]: a["expr"] for a in json.loads(DASHBOARD.read_text())["annotations"]
                   ["list"]}  # fmt: skip
    models = {name: {s["metric"]["model"] for s in scraped.range(expr.replace("$model", ALL))}
              for name, expr in annotations.items()}  # fmt: skip
    assert models == {"Rollbacks": {"b"}, "Promotions": {"a"}}


def test_the_model_variable_lists_both_models(scraped: Scraped) -> None:
    """The variable's query, label_values(gateway_requests_total, model), as Grafana asks it."""
    variable = {v["name"]: v for v in json.loads(DASHBOARD.read_text())["templating"]["list"]}
    metric = variable["model"]["definition"].removeprefix("label_values(").split(",")[0]
    result = scraped.prometheus.query(f"count by (model) ({metric})")
    assert sorted(s["metric"]["model"] for s in result) == list(MODELS)

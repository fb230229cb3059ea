"""The per-task dashboard panels and recording rules (issue 26), proven against a real Prometheus
that scraped three real gateways, a regression, an embedding and a multilabel model (real ONNX
files, tests/model_shapes.py), during real traffic with labels: each returns data for its task.
(tests/test_observability.py proves the rest on the shipped classifier.)"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests import model_shapes
from tests.servers import LABELLER, PrometheusProcess, TestGateway, wait_until
from tests.test_observability import (
    RATE_WINDOW,
    TASK_PANELS,
    _fast_rules,
    _panel_queries,
    _recorded_rules,
)

pytestmark = pytest.mark.e2e
MODELS = {"Regression:": "prices", "Embedding:": "vectors", "Multilabel:": "tags"}
TRAFFIC_SECONDS = 6.0


def _body(inputs: dict[str, np.ndarray], request_id: str) -> dict[str, Any]:
    datatypes = {np.dtype("float32"): "FP32", np.dtype("int64"): "INT64"}
    return {"id": request_id, "inputs": [
        {"name": name, "shape": list(a.shape), "datatype": datatypes[a.dtype],
         "data": a.reshape(-1).tolist()} for name, a in inputs.items()]}  # fmt: skip


@pytest.fixture(scope="module")
def scraped(
    start_gateway: Callable[..., TestGateway], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[PrometheusProcess, float, float]]:
    tmp = tmp_path_factory.mktemp("task-observed")
    writers: dict[str, tuple[Callable[..., Path], str]] = {
        "prices": (model_shapes.write_regression_model, "regression"),
        "vectors": (model_shapes.write_text_embedder, "embedding"),
        "tags": (model_shapes.write_multilabel_model, "multilabel"),
    }
    gateways = {}
    for model, (write, task) in writers.items():
        paths = [write(tmp / f"{model}-{seed}.onnx", seed=seed) for seed in (0, 1)]
        gateways[model] = start_gateway({
            "model": model, "task": task,
            "teacher": {"path": str(paths[0])}, "student": {"path": str(paths[1])},
            "shadow": {"sample_rate": 1.0, "max_delay_ms": 0},
            "traffic": {"student_share": 0.5},
        })  # fmt: skip
    prometheus = PrometheusProcess(
        tmp, {"distill-gateway": [g.address for g in gateways.values()]},
        rule_files=_fast_rules(tmp),
    ).start()  # fmt: skip
    started = time.time()
    rng = np.random.default_rng(3)
    try:
        with httpx.Client(timeout=10) as client:
            sent = 0
            while time.time() < started + TRAFFIC_SECONDS:
                _send(client, gateways, rng, sent)
                sent += 1
        done = time.time()
        wait_until(lambda: bool(prometheus.query(f"timestamp(up) > {done}")), 30,
                   "a scrape after the traffic")  # fmt: skip
        yield prometheus, started, time.time()
    finally:
        prometheus.stop()


def _send(client: httpx.Client, gateways: dict[str, TestGateway], rng: np.random.Generator,
          n: int) -> None:  # fmt: skip
    """One request to each gateway; the regression's and the multilabel's get labelled."""
    features = {"features": rng.standard_normal((2, 6)).astype(np.float32)}
    inputs = {"prices": features, "tags": features,
              "vectors": model_shapes.text_rows(rng, [3, 5])}  # fmt: skip
    for model, gateway in gateways.items():
        answer = client.post(f"{gateway.url}/v2/models/{model}/infer",
                             json=_body(inputs[model], f"{model}-{n}"))  # fmt: skip
        assert answer.status_code == 200, answer.text
        label = {"prices": [[1.0, 2.0], [0.0, 1.0]], "tags": [[0, 1, 0, 1, 1], [1, 0, 0, 0, 1]]}
        if model in label:
            scored = client.post(f"{gateway.url}/v2/models/{model}/feedback", headers=LABELLER,
                                 json={"id": f"{model}-{n}", "label": label[model]})  # fmt: skip
            assert scored.status_code == 200, scored.text


def _has_data(scraped: tuple[PrometheusProcess, float, float], expr: str) -> bool:
    prometheus, started, ended = scraped
    result = prometheus.query(expr, start=started, end=ended, step=1)
    return any(not math.isnan(float(v)) for series in result for _, v in series["values"])


@pytest.mark.parametrize(("title", "expr"), _panel_queries(tasks=True),
                         ids=[t for t, _ in _panel_queries(tasks=True)])  # fmt: skip
def test_every_task_panel_returns_data_for_a_model_of_its_task(
    scraped: tuple[PrometheusProcess, float, float], title: str, expr: str
) -> None:
    model = next(m for prefix, m in MODELS.items() if title.startswith(prefix))
    concrete = expr.replace("$model", model).replace("$__rate_interval", RATE_WINDOW)
    assert _has_data(scraped, concrete), f"{title}: no data for {concrete}"


@pytest.mark.parametrize("record", _recorded_rules(tasks=True))
def test_every_task_recording_rule_returns_data(
    scraped: tuple[PrometheusProcess, float, float], record: str
) -> None:
    assert _has_data(scraped, record), record


def test_the_task_prefixes_name_every_task_panel() -> None:
    assert set(MODELS) == set(TASK_PANELS)
    assert {t.split(":")[0] for t, _ in _panel_queries(tasks=True)} == {
        "Regression",
        "Embedding",
        "Multilabel",
    }

"""Drift summaries through a real gateway: the digits pair and a two-input text classifier
(tests/model_shapes.py) answer real requests over HTTP, and ``/metrics`` holds the counts the
same requests give when summarised directly (gateway.drift on ONNX Runtime's own answers)."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from controller.local.processes import RedisProcess
from gateway import metric_names as names
from gateway.drift import DriftCollector, DriftSummary, OutputKind
from gateway.drift_config import DriftConfig
from gateway.signature import Signature, TensorSpec
from models import TEST_SPLIT_PATH
from models.data import load_test_split
from tests import model_shapes
from tests.servers import ADMIN_TOKEN, BIN, TestGateway, free_port, read_metric, wait_until

pytestmark = pytest.mark.e2e
Start = Callable[..., TestGateway]
Key = tuple[str, tuple[tuple[str, str], ...]]  # a sample's name and its labels but the model
DRIFT_NAMES = (names.DRIFT_ROWS, names.DRIFT_STUDENT_ROWS, names.DRIFT_INPUT_VALUES,
               names.DRIFT_SEQUENCE_LENGTH, names.DRIFT_TOKEN_IDS, names.DRIFT_PREDICTIONS,
               names.DRIFT_CONFIDENCE, names.DRIFT_CONFIDENCE_SUM)  # fmt: skip


def _body(inputs: Mapping[str, np.ndarray]) -> dict[str, Any]:
    datatypes = {np.dtype("float32"): "FP32", np.dtype("int64"): "INT64"}
    return {"inputs": [{"name": name, "shape": list(a.shape), "datatype": datatypes[a.dtype],
                        "data": a.reshape(-1).tolist()} for name, a in inputs.items()]}  # fmt: skip


def _expected(signature: Signature, output: str, requests: list[dict[str, np.ndarray]],
              answers: list[dict[str, np.ndarray]]) -> dict[Key, float]:  # fmt: skip
    summary = DriftSummary(
        "m", signature, OutputKind(output, True), DriftConfig(sample_rate=1.0), {}
    )
    for inputs, outputs in zip(requests, answers, strict=True):
        summary.observe(inputs, outputs, True)
    registry = CollectorRegistry()
    registry.register(DriftCollector(summary))
    return {(s.name, tuple(sorted((k, v) for k, v in s.labels.items() if k != "model"))): s.value
            for family in registry.collect() for s in family.samples}  # fmt: skip


def _found(gateway: TestGateway, model: str, keys: list[Key]) -> list[float]:
    text = gateway.metrics_text()
    return [read_metric(text, name, model=model, **dict(labels)) for name, labels in keys]


def _send(gateway: TestGateway, model: str, requests: list[dict[str, np.ndarray]]) -> None:
    with httpx.Client(base_url=gateway.url, timeout=10) as client:
        for inputs in requests:
            answer = client.post(f"/v2/models/{model}/infer", json=_body(inputs))
            assert answer.status_code == 200, answer.text


def test_the_digits_student_counts_equal_its_requests_summarised_directly(
    start_gateway: Start, student_direct: Callable[[np.ndarray], np.ndarray]
) -> None:
    gateway = start_gateway({"traffic": {"student_share": 1.0}, "shadow": {"sample_rate": 0.0},
                             "drift": {"sample_rate": 1.0}})  # fmt: skip
    x = load_test_split(TEST_SPLIT_PATH).x[:40]
    requests = [{"pixels": x[at : at + rows]} for at, rows in ((0, 1), (1, 4), (5, 1), (6, 34))]
    _send(gateway, "digits", requests)
    answers = [{"logits": student_direct(r["pixels"])} for r in requests]
    signature = Signature(
        (TensorSpec("pixels", "FP32", (-1, 64)),), (TensorSpec("logits", "FP32", (-1, 10)),)
    )
    expected = _expected(signature, "logits", requests, answers)
    keys = sorted(expected)
    found = _found(gateway, "digits", keys)
    assert found == pytest.approx([expected[k] for k in keys], rel=1e-5)
    assert expected[(names.DRIFT_ROWS, ())] == 40


def test_a_two_input_text_classifier_counts_lengths_and_tokens(
    start_gateway: Start, tmp_path: Path
) -> None:
    teacher = model_shapes.write_text_classifier(tmp_path / "teacher.onnx", seed=0)
    student = model_shapes.write_text_classifier(tmp_path / "student.onnx", seed=1)
    gateway = start_gateway({"model": "text", "teacher": {"path": str(teacher)},
                             "student": {"path": str(student)},
                             "traffic": {"student_share": 1.0}, "shadow": {"sample_rate": 0.0},
                             "drift": {"sample_rate": 1.0}})  # fmt: skip
    rng = np.random.default_rng(5)
    requests = [model_shapes.text_rows(rng, lengths) for lengths in ([3], [8, 2], [17], [1, 30, 5])]
    _send(gateway, "text", requests)
    answers = [{"logits": model_shapes.run_onnx(student, r)["logits"]} for r in requests]
    signature = Signature(
        (
            TensorSpec("input_ids", "INT64", (-1, -1)),
            TensorSpec("attention_mask", "INT64", (-1, -1)),
        ),
        (TensorSpec("logits", "FP32", (-1, 4)),),
    )
    expected = _expected(signature, "logits", requests, answers)
    keys = sorted(expected)
    assert _found(gateway, "text", keys) == pytest.approx([expected[k] for k in keys], rel=1e-5)
    lengths = {dict(labels)["bin"]: v for (name, labels), v in expected.items()
               if name == names.DRIFT_SEQUENCE_LENGTH
               and dict(labels)["input"] == "input_ids"}  # fmt: skip
    # lengths 3 | 8 2 | 17 | 1 30 5, in buckets 1, 2-3, 4-7, 8-15, 16-31
    assert [lengths[b] for b in ("1", "3", "7", "15", "31")] == [1, 2, 1, 1, 2]


def test_two_workers_summaries_add_up_in_one_metrics_page(
    redis_server: RedisProcess, tmp_path: Path
) -> None:
    """--workers 2: each worker's counts reach the files every /metrics reads (the mirror), so
    the page counts every summarised row once whichever worker answered."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    environment = {**os.environ, "DISTILL_GATEWAY_STATE__URL": redis_server.url,
                   "DISTILL_GATEWAY_STATE__KEY_PREFIX": "test-drift-workers",
                   "DISTILL_GATEWAY_DRIFT__SAMPLE_RATE": "1.0",
                   "DISTILL_GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN}  # fmt: skip
    with (tmp_path / "workers.log").open("wb") as log:
        process = subprocess.Popen([str(BIN / "distill-gateway"), "--port", str(port),
                                    "--workers", "2"], env=environment, stdout=log,
                                   stderr=subprocess.STDOUT)  # fmt: skip
    try:
        wait_until(lambda: _ready(url), 60, "the workers")
        body = {"inputs": [{"name": "pixels", "shape": [1, 64], "datatype": "FP32",
                            "data": [16.0] * 64}]}  # fmt: skip
        for _ in range(40):
            with httpx.Client() as fresh:  # a new connection lands on either worker
                assert fresh.post(f"{url}/v2/models/digits/infer", json=body).status_code == 200

        def counted() -> float:
            text = httpx.get(f"{url}/metrics").text
            return read_metric(text, names.DRIFT_INPUT_VALUES, model="digits", input="pixels",
                               block="0", bin="31.6228")  # fmt: skip

        # 40 rows x 4 features of block 0, all 16.0: in (10, 31.6]
        wait_until(lambda: counted() == 160, 15, "both workers' counts on one page")
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/v2/health/ready", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False

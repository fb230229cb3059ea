"""Comparisons per task through a real gateway (issue 26): a real ONNX teacher and student of each
task (tests/model_shapes.py, two seeds of one signature), every request shadowed; the gateway's
comparison metrics hold the numbers ONNX Runtime's own answers on the same rows imply, labels of
the task's type are scored, and a label of the wrong type is a 400 naming the task."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests import model_shapes
from tests.servers import LABELLER, TestGateway, wait_until

pytestmark = pytest.mark.e2e
ROWS = 24  # sent as 8 requests of 3 rows
Start = Callable[..., TestGateway]


def _pair(tmp_path: Path, write: Callable[..., Path]) -> tuple[Path, Path]:
    return write(tmp_path / "teacher.onnx", seed=0), write(tmp_path / "student.onnx", seed=1)


def _start(start: Start, model: str, paths: tuple[Path, Path], task: Any) -> TestGateway:
    return start({
        "model": model,
        "teacher": {"path": str(paths[0])},
        "student": {"path": str(paths[1])},
        "task": task,
        "shadow": {"sample_rate": 1.0, "max_delay_ms": 0},
        "traffic": {"student_share": 0.0},
    })  # fmt: skip


def _body(inputs: Mapping[str, np.ndarray], request_id: str) -> dict[str, Any]:
    datatypes = {np.dtype("float32"): "FP32", np.dtype("int64"): "INT64"}
    return {"id": request_id, "inputs": [
        {"name": name, "shape": list(array.shape), "datatype": datatypes[array.dtype],
         "data": array.reshape(-1).tolist()}
        for name, array in inputs.items()
    ]}  # fmt: skip


def _send_all(
    gateway: TestGateway, model: str, batches: list[dict[str, np.ndarray]]
) -> list[httpx.Response]:
    """Every batch as one request; returns once all their shadow comparisons are counted."""
    with httpx.Client(base_url=gateway.url, timeout=10) as client:
        answers = [client.post(f"/v2/models/{model}/infer", json=_body(batch, f"{model}-{n}"))
                   for n, batch in enumerate(batches)]  # fmt: skip
    assert [a.status_code for a in answers] == [200] * len(batches), answers[0].text
    rows = sum(len(next(iter(batch.values()))) for batch in batches)
    wait_until(lambda: gateway.metric("gateway_shadow_comparisons_total", model=model) == rows,
               timeout=30, what="every row's shadow comparison")  # fmt: skip
    return answers


def _label(gateway: TestGateway, model: str, request_id: str, label: object) -> httpx.Response:
    return httpx.post(f"{gateway.url}/v2/models/{model}/feedback", headers=LABELLER,
                      json={"id": request_id, "label": label}, timeout=10)  # fmt: skip


def _features(rows: int = ROWS, width: int = 6, seed: int = 7) -> list[dict[str, np.ndarray]]:
    x = np.random.default_rng(seed).standard_normal((rows, width)).astype(np.float32)
    return [{"features": x[at : at + 3]} for at in range(0, rows, 3)]


def _reference(paths: tuple[Path, Path], batches: list[dict[str, np.ndarray]], output: str
               ) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """The teacher's and the student's answers from ONNX Runtime directly, row after row."""
    answers = [np.concatenate([model_shapes.run_onnx(path, batch)[output] for batch in batches])
               for path in paths]  # fmt: skip
    return answers[0], answers[1]


def test_a_regression_model_is_compared_by_its_errors_and_labelled_with_numbers(
    start_gateway: Start, tmp_path: Path
) -> None:
    paths = _pair(tmp_path, model_shapes.write_regression_model)  # value FP32 [batch, 2]
    gateway = _start(start_gateway, "prices", paths, "regression")
    batches = _features()
    _send_all(gateway, "prices", batches)
    teacher, student = _reference(paths, batches, "value")
    difference = np.abs(student.astype(np.float64) - teacher).mean(axis=1)
    relative = np.minimum(difference / np.abs(teacher.astype(np.float64)).mean(axis=1), 10.0)
    metric = gateway.metric
    assert metric("gateway_shadow_abs_error_count", model="prices") == ROWS
    assert metric("gateway_shadow_abs_error_sum", model="prices") == pytest.approx(
        difference.sum(), rel=1e-5)  # fmt: skip
    assert metric("gateway_shadow_relative_error_sum", model="prices") == pytest.approx(
        relative.sum(), rel=1e-5)  # fmt: skip
    assert metric("gateway_task_info", model="prices", task="regression") == 1
    assert "gateway_shadow_kl_divergence_count" not in _series(gateway, "kl")  # no KL to show

    # a label: one number per output element of each of the request's 3 rows
    truth = teacher[:3] + np.float32(0.5)
    scored = _label(gateway, "prices", "prices-0", truth.tolist())
    assert scored.status_code == 200, scored.text
    assert scored.json()["mean_abs_error"] == pytest.approx(0.5, rel=1e-5)
    assert metric("gateway_feedback_abs_error_sum", model="prices", backend="teacher") == (
        pytest.approx(1.5, rel=1e-5))  # three rows, each 0.5 off  # fmt: skip
    for wrong in ("high", [[1.0, "2"]], None, True):
        refused = _label(gateway, "prices", "prices-1", wrong)
        assert refused.status_code == 400
        assert "this model's task is regression" in refused.json()["error"]
    assert _label(gateway, "prices", "prices-1", [1.0, 2.0]).status_code == 422  # 2 of 6 numbers


def test_a_multilabel_model_is_compared_label_by_label(
    start_gateway: Start, tmp_path: Path
) -> None:
    paths = _pair(tmp_path, model_shapes.write_multilabel_model)  # logits FP32 [batch, 5]
    gateway = _start(start_gateway, "tags", paths, {"kind": "multilabel", "threshold": 0.5})
    batches = _features()
    _send_all(gateway, "tags", batches)
    teacher, student = (answer >= 0.0 for answer in _reference(paths, batches, "logits"))
    agree = teacher == student
    for label in range(5):
        assert gateway.metric("gateway_shadow_label_agreements_total", model="tags",
                              label=str(label)) == agree[:, label].sum()  # fmt: skip
    assert gateway.metric("gateway_shadow_agreements_total", model="tags") == agree.all(1).sum()
    assert gateway.metric("gateway_shadow_hamming_loss_sum", model="tags") == pytest.approx(
        (1.0 - agree.mean(axis=1)).sum())  # fmt: skip

    truth = teacher[:3].astype(int)
    truth[:, 0] = 1 - truth[:, 0]  # the teacher is wrong about label 0 on every row
    scored = _label(gateway, "tags", "tags-0", truth.tolist())
    assert scored.status_code == 200 and scored.json()["correct"] == 12  # of 15 label slots
    assert gateway.metric("gateway_feedback_correct_total", model="tags", backend="teacher",
                          **{"class": "0"}) == 0  # fmt: skip
    assert gateway.metric("gateway_feedback_correct_total", model="tags", backend="teacher",
                          **{"class": "1"}) == 3  # fmt: skip
    for wrong in (3, [0, 1], [0.5, 1, 0, 0, 1], "yes"):
        refused = _label(gateway, "tags", "tags-1", wrong)
        assert refused.status_code == 400
        assert "this model's task is multilabel" in refused.json()["error"]


def test_an_embedding_model_with_two_int64_inputs_is_compared_by_cosine(
    start_gateway: Start, tmp_path: Path
) -> None:
    paths = _pair(tmp_path, model_shapes.write_text_embedder)  # embedding FP32 [batch, 16]
    gateway = _start(start_gateway, "vectors", paths, "embedding")
    rng = np.random.default_rng(5)
    batches = [model_shapes.text_rows(rng, [4, 7, 2]) for _ in range(ROWS // 3)]
    _send_all(gateway, "vectors", batches)
    teacher, student = (a.astype(np.float64) for a in _reference(paths, batches, "embedding"))
    cosine = (teacher * student).sum(1) / (np.linalg.norm(teacher, axis=1)
                                           * np.linalg.norm(student, axis=1))  # fmt: skip
    assert gateway.metric("gateway_shadow_cosine_distance_count", model="vectors") == ROWS
    assert gateway.metric("gateway_shadow_cosine_distance_sum", model="vectors") == pytest.approx(
        (1.0 - cosine).sum(), rel=1e-5)  # fmt: skip
    refused = _label(gateway, "vectors", "vectors-0", 1)
    assert refused.status_code == 400
    assert "this model's task is embedding: its answers take no labels" in refused.json()["error"]


def test_a_classifier_whose_scores_are_not_its_first_output(
    start_gateway: Start, tmp_path: Path
) -> None:
    """outputs[0] is the argmax label (INT64 [batch]): the task names the scores output."""
    paths = _pair(tmp_path, model_shapes.write_multi_output_model)
    task = {"kind": "classification", "output": "probabilities", "scores": "probabilities"}
    gateway = _start(start_gateway, "intents", paths, task)
    batches = _features()
    _send_all(gateway, "intents", batches)
    teacher, student = _reference(paths, batches, "probabilities")
    agreements = (teacher.argmax(1) == student.argmax(1)).sum()
    kl = (teacher * np.log(teacher / student)).sum(1)
    assert gateway.metric("gateway_shadow_agreements_total", model="intents") == agreements
    assert gateway.metric("gateway_shadow_kl_divergence_sum", model="intents") == pytest.approx(
        kl.sum(), rel=1e-4)  # fmt: skip
    first = _label(gateway, "intents", "intents-0", teacher[:3].argmax(1).tolist())
    assert first.status_code == 200 and first.json()["correct"] == 3
    refused = _label(gateway, "intents", "intents-1", [0.5, 1, 2])
    assert refused.status_code == 400
    assert "this model's task is classification" in refused.json()["error"]


def _series(gateway: TestGateway, word: str) -> str:
    return "\n".join(line for line in gateway.metrics_text().splitlines() if word in line
                     and not line.startswith("#"))  # fmt: skip

"""Rollouts of models that are not classifiers (issue 26), as a user runs them: a real gateway
serving a real ONNX regression or embedding pair (tests/model_shapes.py), real traffic, and the
real `distill-canary run` judging the task's gate from the gateway's own metrics."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml

from tests import model_shapes
from tests.rollouts import FAST_POLICY, canary_command, operator, run_canary
from tests.servers import TestGateway

pytestmark = pytest.mark.e2e
StartGateway = Callable[..., TestGateway]


def _gateway(start: StartGateway, model: str, task: str, teacher: Path,
             student: Path) -> TestGateway:  # fmt: skip
    return start({"model": model, "task": task, "teacher": {"path": str(teacher)},
                  "student": {"path": str(student)}, "shadow": {"sample_rate": 1.0}})  # fmt: skip


@contextmanager
def _traffic(gateway: TestGateway, model: str, rows: Callable[[np.random.Generator], Any]
             ) -> Iterator[None]:  # fmt: skip
    """Requests of one row each, back to back, until the block ends."""
    stop = threading.Event()

    def run() -> None:
        rng = np.random.default_rng(1)
        with httpx.Client(base_url=gateway.url, timeout=10) as client:
            while not stop.is_set():
                inputs = rows(rng)
                client.post(f"/v2/models/{model}/infer", json={"inputs": [
                    {"name": name, "shape": list(a.shape),
                     "datatype": "FP32" if a.dtype == np.float32 else "INT64",
                     "data": a.reshape(-1).tolist()} for name, a in inputs.items()]})  # fmt: skip

    thread = threading.Thread(target=run)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _policy(tmp_path: Path, model: str, task: str, gates: dict[str, float]) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump({**FAST_POLICY, "model": model, "task": task, "gates": gates}))
    return path


def _features(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {"features": rng.standard_normal((1, 6)).astype(np.float32)}


def test_a_regression_student_that_answers_like_its_teacher_is_promoted(
    start_gateway: StartGateway, tmp_path: Path
) -> None:
    teacher = model_shapes.write_regression_model(tmp_path / "teacher.onnx", seed=0)
    twin = model_shapes.write_regression_model(tmp_path / "student.onnx", seed=0)
    gateway = _gateway(start_gateway, "prices", "regression", teacher, twin)
    policy = _policy(tmp_path, "prices", "regression",
                     {"max_mean_abs_error": 0.05, "max_relative_error": 0.05,
                      "max_error_rate": 0.05})  # fmt: skip
    state = tmp_path / "rollout.db"
    with _traffic(gateway, "prices", _features):
        result = run_canary(canary_command([gateway], policy, state))
    assert result.returncode == 0, result.stdout + result.stderr
    status = operator("status", state)
    assert "phase: Promoted" in status.stdout and "max_mean_abs_error" in status.stdout


def test_an_embedding_student_far_from_its_teacher_is_rolled_back(
    start_gateway: StartGateway, tmp_path: Path
) -> None:
    teacher = model_shapes.write_text_embedder(tmp_path / "teacher.onnx", seed=0)
    other = model_shapes.write_text_embedder(tmp_path / "student.onnx", seed=1)
    gateway = _gateway(start_gateway, "vectors", "embedding", teacher, other)
    policy = _policy(tmp_path, "vectors", "embedding", {"min_cosine": 0.95,
                                                         "max_error_rate": 0.05})  # fmt: skip
    state = tmp_path / "rollout.db"
    with _traffic(gateway, "vectors", lambda rng: model_shapes.text_rows(rng, [6])):
        result = run_canary(canary_command([gateway], policy, state))
    assert result.returncode == 3, result.stdout + result.stderr  # rolled back
    assert "min_cosine" in operator("status", state).stdout
    assert gateway.metric("gateway_traffic_share", backend="student") == 0.0

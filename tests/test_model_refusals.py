"""Input only the model can refuse: a token id past its embedding table passes every check the
signature allows (INT64, the right shape) and makes ONNX Runtime raise INVALID_ARGUMENT. Real
gateways on real two-input text models: the teacher's refusal is a 400 that says what the model
said, the backend is not blamed for it, a student's refusal falls back to the teacher, and a
configured ``inputs.<name>.value_range`` refuses it before any model runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.model_shapes import run_onnx, write_text_classifier
from tests.servers import TestGateway

pytestmark = pytest.mark.e2e

TEACHER_VOCAB, STUDENT_VOCAB = 64, 16
INFER = "/v2/models/text/infer"


def body(ids: list[int]) -> dict[str, Any]:
    shape = [1, len(ids)]
    return {"inputs": [
        {"name": "input_ids", "datatype": "INT64", "shape": shape, "data": ids},
        {"name": "attention_mask", "datatype": "INT64", "shape": shape, "data": [1] * len(ids)},
    ]}  # fmt: skip


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A teacher of 64 tokens and a student of 16: ids 16-63 only the teacher can embed."""
    folder = tmp_path_factory.mktemp("refusals")
    teacher = write_text_classifier(folder / "teacher.onnx", vocab=TEACHER_VOCAB)
    return teacher, write_text_classifier(folder / "student.onnx", vocab=STUDENT_VOCAB, seed=1)


def start(tmp_path: Path, pair: tuple[Path, Path], share: float, **extra: Any) -> TestGateway:
    teacher, student = pair
    return TestGateway(tmp_path, {
        "model": "text", "teacher": {"path": str(teacher)}, "student": {"path": str(student)},
        "traffic": {"student_share": share}, "shadow": {"sample_rate": 0},
        "inputs": {"input_ids": {"max_shape": [-1, 64]}}, **extra,
    }).start()  # fmt: skip


def test_a_token_the_teacher_cannot_embed_is_a_400_that_blames_no_backend(
    tmp_path: Path, pair: tuple[Path, Path]
) -> None:
    gateway = start(tmp_path, pair, share=0.0)
    try:
        with httpx.Client(base_url=gateway.url, timeout=10) as client:
            for _ in range(12):  # more than any breaker's failure threshold
                refused = client.post(INFER, json=body([3, 70, 5]))
                assert refused.status_code == 400, refused.text
                error = refused.json()["error"]
                assert "teacher model refused this request's input" in error
                assert "idx=70" in error, error
            served = client.post(INFER, json=body([3, 7, 5]))
            assert served.status_code == 200, served.text
            ids = np.array([[3, 7, 5]], dtype=np.int64)
            expected = run_onnx(pair[0], {"input_ids": ids, "attention_mask": np.ones_like(ids)})
            got = np.array(served.json()["outputs"][0]["data"], dtype=np.float32)
            np.testing.assert_allclose(got, expected["logits"].ravel(), rtol=1e-5, atol=1e-6)
        assert gateway.metric("gateway_circuit_state", backend="teacher", state="closed") == 1
        assert gateway.total("gateway_requests_total", backend="teacher", code="400") == 12
    finally:
        gateway.stop()


def test_a_token_only_the_teacher_knows_falls_back_from_the_student_to_the_teacher(
    tmp_path: Path, pair: tuple[Path, Path]
) -> None:
    gateway = start(tmp_path, pair, share=1.0)
    try:
        with httpx.Client(base_url=gateway.url, timeout=10) as client:
            known = client.post(INFER, json=body([3, 7, 5]))
            only_teacher = client.post(INFER, json=body([3, 40, 5]))
        assert known.status_code == 200 and known.headers["x-served-by"] == "student"
        assert only_teacher.status_code == 200, only_teacher.text
        assert only_teacher.headers["x-served-by"] == "teacher"
        assert gateway.total("gateway_fallbacks_total", from_backend="student",
                             reason="error") == 1  # fmt: skip
        assert gateway.metric("gateway_circuit_state", backend="student", state="closed") == 1
    finally:
        gateway.stop()


def test_input_both_models_refuse_is_the_clients_400_and_never_the_students_error(
    tmp_path: Path, pair: tuple[Path, Path]
) -> None:
    """A token neither model can embed, sent to the student's share: the 400 is counted as the
    teacher's (the last to refuse), with no fallback, so no client can raise the student's error
    rate (and have a good student rolled back) by sending bad input."""
    gateway = start(tmp_path, pair, share=1.0)
    try:
        with httpx.Client(base_url=gateway.url, timeout=10) as client:
            for _ in range(10):
                refused = client.post(INFER, json=body([3, 70, 5]))
                assert refused.status_code == 400, refused.text
                assert "teacher model refused" in refused.json()["error"]
            for _ in range(10):
                assert client.post(INFER, json=body([3, 7, 5])).status_code == 200
        assert gateway.total("gateway_fallbacks_total", from_backend="student") == 0
        assert gateway.total("gateway_requests_total", backend="student", code="400") == 0
        assert gateway.total("gateway_requests_total", backend="teacher", code="400") == 10
        assert gateway.total("gateway_requests_total", backend="student", code="200") == 10
    finally:
        gateway.stop()


def test_a_configured_value_range_refuses_the_token_before_any_model_runs(
    tmp_path: Path, pair: tuple[Path, Path]
) -> None:
    gateway = start(tmp_path, pair, share=0.0, inputs={
        "input_ids": {"max_shape": [-1, 64], "value_range": [0, TEACHER_VOCAB - 1]},
        "attention_mask": {"value_range": [0, 1]}})  # fmt: skip
    try:
        calls_before = gateway.total("gateway_backend_duration_seconds_count", backend="teacher")
        with httpx.Client(base_url=gateway.url, timeout=10) as client:
            too_big = client.post(INFER, json=body([3, 70, 5]))
            negative = client.post(INFER, json=body([3, -1, 5]))
            bad_mask = client.post(INFER, json={**body([3, 4]), "inputs": [
                body([3, 4])["inputs"][0],
                {"name": "attention_mask", "datatype": "INT64", "shape": [1, 2], "data": [1, 2]},
            ]})  # fmt: skip
        for response, low, high in ((too_big, 3, 70), (negative, -1, 5), (bad_mask, 1, 2)):
            assert response.status_code == 400, response.text
            assert f"values from {low} to {high}" in response.json()["error"]
        assert "inputs.input_ids.value_range" in too_big.json()["error"]
        assert "inputs.attention_mask.value_range" in bad_mask.json()["error"]
        after = gateway.total("gateway_backend_duration_seconds_count", backend="teacher")
        assert after == calls_before  # no model ran
    finally:
        gateway.stop()


def test_a_value_range_on_an_input_the_model_lacks_stops_start_up(
    tmp_path: Path, pair: tuple[Path, Path]
) -> None:
    gateway = TestGateway(tmp_path, {
        "model": "text", "teacher": {"path": str(pair[0])}, "student": {"path": str(pair[1])},
        "inputs": {"token_type_ids": {"value_range": [0, 1]}},
    })  # fmt: skip
    with pytest.raises(RuntimeError, match=r"inputs\.token_type_ids: the model has no input"):
        gateway.start()

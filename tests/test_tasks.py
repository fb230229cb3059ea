"""Comparisons per task (issue 26): each task's math on answers whose right numbers are known by
hand, what a label is for each task (and the 400 naming the task for one of the wrong type), and
the task picked from the config against real model signatures (tests/model_shapes.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from gateway.backends.onnx import signature_of
from gateway.config import GatewaySettings
from gateway.errors import BadRequest, Unprocessable
from gateway.feedback import (
    ClassLabels,
    MultiLabels,
    NoLabels,
    NumberLabels,
    PredictionStore,
    as_words,
)
from gateway.metrics import GatewayMetrics
from gateway.signature import Signature
from gateway.task_config import ClassificationTask, RegressionTask
from gateway.tasks import (
    KL_CAP,
    Classification,
    Embedding,
    Multilabel,
    Regression,
    Task,
    TaskMismatch,
    build_task,
    compare_embeddings,
    compare_logits,
    compare_multilabel,
    compare_probabilities,
    compare_regression,
)
from tests import model_shapes
from tests.fake_backend import in_process_gateway, ticket_of


def test_regression_errors_are_the_mean_absolute_difference_per_row_and_its_share() -> None:
    teacher = np.array([[1.0, 3.0], [0.0, 0.0], [-2.0, 2.0]], dtype=np.float32)
    student = np.array([[1.5, 2.0], [0.0, 1e-3], [-2.0, 2.0]], dtype=np.float32)
    result = compare_regression(teacher, student, floor=1e-6, cap=100.0)
    assert result.examples == 3
    np.testing.assert_allclose(result.abs_errors, [0.75, 0.0005, 0.0], rtol=1e-6)
    # over the teacher's mean magnitude: 0.75 / 2; a reference of 0 hits the cap, not infinity
    np.testing.assert_allclose(result.relative_errors, [0.375, 10.0, 0.0], rtol=1e-6)


def test_a_huge_or_broken_regression_error_counts_as_the_cap() -> None:
    """The top finite bucket edge caps a row's absolute error (and a NaN or infinite answer is
    both caps): never inf, never a 1e30 that swallows every later increment of the sum."""
    teacher = np.zeros((4, 2), dtype=np.float32)
    student = np.array([[1e30, 0.0], [np.nan, 0.0], [np.inf, 1.0], [0.5, 0.5]], dtype=np.float32)
    result = compare_regression(teacher, student, floor=1e-6, cap=100.0)
    assert result.abs_errors.tolist() == [100.0, 100.0, 100.0, 0.5]
    assert result.relative_errors.tolist() == [10.0, 10.0, 10.0, 10.0]
    both_inf = compare_regression(np.full((1, 1), np.inf), np.full((1, 1), np.inf), 1e-6, 7.0)
    assert both_inf.abs_errors.tolist() == [7.0] and both_inf.relative_errors.tolist() == [10.0]
    assert RegressionTask(kind="regression").abs_error_cap == 10_000.0  # the top finite edge
    assert RegressionTask(kind="regression", abs_error_buckets=(1, 5)).abs_error_cap == 5.0


def test_cosine_distance_of_embeddings() -> None:
    teacher = np.array([[1.0, 0.0], [1.0, 1.0], [1.0, 0.0], [0.0, 0.0], [3.0, 4.0], [1.0, 2.0]])
    student = np.array([[1.0, 0.0], [-1.0, -1.0], [0.0, 2.0], [0.0, 0.0], [0.0, 0.0],
                        [np.nan, 1.0]])  # fmt: skip
    result = compare_embeddings(teacher, student)
    # same direction, opposite, orthogonal, both zero, one zero, NaN (as far as it gets)
    np.testing.assert_allclose(result.cosine_distance, [0.0, 2.0, 1.0, 0.0, 1.0, 2.0], atol=1e-12)
    scaled = compare_embeddings(teacher[4:5], 10 * teacher[4:5])
    assert scaled.cosine_distance[0] == pytest.approx(0.0, abs=1e-12)
    # a [batch, tokens, width] output is compared as one vector per example
    tokens = np.arange(12, dtype=np.float32).reshape(2, 3, 2)
    np.testing.assert_allclose(compare_embeddings(tokens, tokens).cosine_distance, 0.0, atol=1e-12)


def test_multilabel_agreement_per_label_exact_sets_and_hamming_loss() -> None:
    teacher = np.array([[1, 0, 1], [0, 0, 1], [1, 1, 1], [0, 0, 0]])
    student = np.array([[1, 0, 1], [1, 0, 1], [0, 1, 0], [0, 0, 0]])
    result = compare_multilabel(teacher, student)
    assert result.examples == 4 and result.agreements == 2
    assert result.label_agreements.tolist() == [2, 4, 3]
    np.testing.assert_allclose(result.hamming_loss, [0.0, 1 / 3, 2 / 3, 0.0])


def test_probabilities_compare_like_the_logits_they_came_from() -> None:
    rng = np.random.default_rng(3)
    teacher, student = rng.standard_normal((50, 4)), rng.standard_normal((50, 4))

    def softmax(x: np.ndarray) -> np.ndarray:
        e = np.exp(x - x.max(axis=1, keepdims=True))
        return np.asarray(e / e.sum(axis=1, keepdims=True))

    from_logits = compare_logits(teacher, student)
    from_probabilities = compare_probabilities(softmax(teacher), softmax(student))
    assert from_probabilities.agreements == from_logits.agreements
    np.testing.assert_allclose(from_probabilities.kl_per_example, from_logits.kl_per_example,
                               rtol=1e-9, atol=1e-12)  # fmt: skip
    # a probability of 0 where the teacher has mass: the cap, not infinity
    hard = compare_probabilities(np.array([[0.5, 0.5]]), np.array([[1.0, 0.0]]))
    assert hard.kl_per_example[0] == KL_CAP


def test_what_a_label_is_for_each_task() -> None:
    assert ClassLabels(4).check([3, 0]).tolist() == [3, 0]
    assert MultiLabels(3).check([0, 1, 1]).tolist() == [[0, 1, 1]]
    assert MultiLabels(3).check([[0, 1, 1], [1, 0, 0]]).shape == (2, 3)
    two_targets = NumberLabels(1e-6, per_row=2, cap=1e4)
    assert two_targets.check([1.5, 2, 0.5, 0]).shape == (2, 2)  # flat: cut into rows
    one_target = NumberLabels(1e-6, per_row=1, cap=1e4)
    assert one_target.check(2.5).shape == (1, 1)
    with pytest.raises(Unprocessable, match=r"classes 0\.\.3"):
        ClassLabels(4).check(4)  # the right type, out of range: 422 as before


@pytest.mark.parametrize(
    ("rules", "label", "task"),
    [
        (ClassLabels(4), 2.5, "classification"),
        (ClassLabels(4), [1, "2"], "classification"),
        (ClassLabels(4), [[0, 1]], "classification"),
        (MultiLabels(3), 2, "multilabel"),
        (MultiLabels(3), [0, 2, 1], "multilabel"),
        (MultiLabels(3), [0, 1], "multilabel"),
        (MultiLabels(3), [0.5, 1, 0], "multilabel"),
        (ClassLabels(4), 2**70, "classification"),  # past int64: not an OverflowError's 500
        (ClassLabels(4), [1, -(2**63) - 1], "classification"),
        (MultiLabels(3), [0, 2**64, 1], "multilabel"),
        (NumberLabels(1e-6, 1, 1e4), "1.5", "regression"),
        (NumberLabels(1e-6, 1, 1e4), [1.0, None], "regression"),
        (NumberLabels(1e-6, 1, 1e4), True, "regression"),
        (NumberLabels(1e-6, 1, 1e4), [1e39, 1.0], "regression"),  # inf as float32
        (NumberLabels(1e-6, 1, 1e4), -(10**400), "regression"),  # too big for a float64 too
        (NoLabels(), 3, "embedding"),
    ],
)
def test_a_label_of_the_wrong_type_is_a_400_naming_the_task(
    rules: Any, label: object, task: str
) -> None:
    with pytest.raises(BadRequest, match=f"this model's task is {task}"):
        rules.check(label)


def test_a_regression_label_scores_the_answer_it_joins_exactly() -> None:
    store = PredictionStore(60, 100, labels=NumberLabels(1e-6, per_row=2, cap=1e4))
    answer = np.array([[1.0, -3.0]], dtype=np.float32)
    store.remember("r", "student", as_words(answer))
    scored = store.score("r", [2.0, -1.0])
    assert scored.total == 1
    assert scored.abs_errors is not None and scored.relative_errors is not None
    np.testing.assert_allclose(scored.abs_errors, [1.5])  # (1 + 2) / 2
    np.testing.assert_allclose(scored.relative_errors, [1.0])  # over (2 + 1) / 2
    assert scored.summary() == {"total": 1, "mean_abs_error": 1.5, "mean_relative_error": 1.0}
    assert store.score("r", [2.0, -1.0]).repeat  # the same numbers again: a retry


def test_a_multilabel_label_scores_each_label_and_both_backends() -> None:
    store = PredictionStore(60, 100, labels=MultiLabels(3))
    store.remember("m", "teacher", np.array([[1, 0, 1], [0, 0, 0]]))
    assert store.pair("m", np.array([[1, 1, 1], [0, 0, 1]]))  # the student, on shadow traffic
    scored = store.score("m", [[1, 0, 0], [0, 0, 1]])
    assert (scored.correct, scored.total) == (4, 6)  # label slots
    assert scored.by_class == {0: (2, 2), 1: (2, 2), 2: (2, 0)}  # per label: (examples, right)
    assert scored.hamming_loss is not None
    np.testing.assert_allclose(scored.hamming_loss, [1 / 3, 1 / 3])
    assert scored.paired is not None
    assert scored.paired[1].teacher_only == 1 and scored.paired[2].student_only == 1


def read_signature(path: Path) -> Signature:
    """The signature the gateway's ONNX backend reads from the file."""
    return signature_of(ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]))


def test_the_task_follows_the_config_and_refuses_outputs_it_cannot_compare(
    tmp_path: Path,
) -> None:
    metrics = GatewayMetrics(CollectorRegistry(), "m", {})
    multi = read_signature(model_shapes.write_multi_output_model(tmp_path / "multi.onnx"))
    with pytest.raises(TaskMismatch, match="output 'label' has shape"):
        build_task(ClassificationTask(), multi, metrics)  # outputs[0] is the argmax, not scores
    task = build_task(ClassificationTask(output="probabilities", scores="probabilities"), multi,
                      metrics)  # fmt: skip
    assert isinstance(task, Classification) and task.output == "probabilities"
    with pytest.raises(TaskMismatch, match="no output 'scores'"):
        build_task(ClassificationTask(output="scores"), multi, GatewayMetrics(
            CollectorRegistry(), "m", {}))  # fmt: skip
    strings = read_signature(model_shapes.write_string_model(tmp_path / "strings.onnx"))
    with pytest.raises(TaskMismatch, match="output 'echo' is BYTES"):
        build_task(RegressionTask(kind="regression"), strings,
                   GatewayMetrics(CollectorRegistry(), "m", {}))  # fmt: skip
    kinds: dict[str, tuple[Callable[..., Path], type[Task]]] = {
        "regression": (model_shapes.write_regression_model, Regression),
        "multilabel": (model_shapes.write_multilabel_model, Multilabel),
        "embedding": (model_shapes.write_text_embedder, Embedding),
    }
    for kind, (write, expected) in kinds.items():
        settings = GatewaySettings.model_validate({"task": kind})  # the short form
        signature = read_signature(write(tmp_path / f"{kind}.onnx"))
        built = build_task(settings.task, signature, GatewayMetrics(CollectorRegistry(), "m", {}))
        assert isinstance(built, expected) and built.output == signature.outputs[0].name


def test_a_task_config_error_names_the_key() -> None:
    with pytest.raises(ValidationError, match="threshold"):
        GatewaySettings.model_validate({"task": {"kind": "multilabel", "threshold": 1.5}})
    with pytest.raises(ValidationError, match="scores"):
        GatewaySettings.model_validate(
            {"task": {"kind": "regression", "scores": "logits"}}
        )  # not a regression key
    with pytest.raises(ValidationError):
        GatewaySettings.model_validate({"task": "ranking"})


@pytest.mark.parametrize(
    ("task", "label", "shown"),
    [
        ("classification", "1" + "0" * 30, "an integer of about 31 digits, outside int64's range"),
        ("classification", "[3, -9223372036854775809]", "outside int64's range"),
        ("multilabel", "[[0, 1, 0, 0, 0, 0, 0, 0, 0, 18446744073709551616]]", "int64's range"),
        ("regression", "[1e39, 0, 0, 0, 0, 0, 0, 0, 0, 0]", "1e+39, outside float32's range"),
        ("regression", "-1" + "0" * 400, "outside float32's range"),
    ],
)
def test_a_label_past_its_number_type_is_a_400_from_the_app(task: str, label: str,
                                                             shown: str) -> None:  # fmt: skip
    """Through the real app (in process): what the JSON parser gives as a big integer or a float
    past float32 is refused naming the task, not a 500 (and not stored as inf)."""

    async def main() -> None:
        async with in_process_gateway(task=task) as gateway:
            served = await gateway.infer()
            assert served.status_code == 200
            request_id = served.headers["x-request-id"]
            answer = await gateway.client.post(
                "/v2/models/digits/feedback", content=f'{{"id": "{request_id}", "label": {label}}}',
                headers={**ticket_of(served), "content-type": "application/json"})  # fmt: skip
            assert answer.status_code == 400, answer.text
            error = answer.json()["error"]
            assert error.startswith(f"this model's task is {task}: a label is") and shown in error

    asyncio.run(main())

"""The cascade's decisions as pure logic (``gateway.cascade``), on a classification task built
from a signature: what confidence a request has, when it escalates, what the shadow's comparison
is given in the student's place, and what counts as evidence."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from gateway.cascade import Cascade, CascadeRefused
from gateway.cascade_config import CascadeConfig
from gateway.metrics import GatewayMetrics
from gateway.signature import Signature, TensorSpec
from gateway.task_config import ClassificationTask, RegressionTask
from gateway.tasks import build_task

SIGNATURE = Signature(inputs=(TensorSpec("x", "FP32", (-1, 4)),),
                      outputs=(TensorSpec("scores", "FP32", (-1, 3)),))  # fmt: skip


def _cascade(scores: str = "logits", **config: object) -> tuple[Cascade, CollectorRegistry]:
    registry = CollectorRegistry()
    metrics = GatewayMetrics(registry, "m", {})
    task = build_task(ClassificationTask(scores=scores), SIGNATURE, metrics)  # type: ignore[arg-type]
    return Cascade(CascadeConfig(**config), task, metrics), registry  # type: ignore[arg-type]


def test_a_request_is_as_sure_as_its_least_sure_row_and_a_nan_is_not_sure() -> None:
    cascade, _ = _cascade(scores="probabilities", confidence="margin", min_confidence=0.5)
    rows = np.array([[0.9, 0.05, 0.05], [0.5, 0.4, 0.1]])
    assert cascade.confidence(rows) == pytest.approx(0.1)  # the second row's margin
    assert cascade.escalates(cascade.confidence(rows))
    assert not cascade.escalates(cascade.confidence(rows[:1]))  # margin 0.85
    assert cascade.escalates(cascade.confidence(np.array([[np.nan, 1.0, 0.0]])))


def test_top_probability_is_the_softmax_of_logits() -> None:
    cascade, _ = _cascade(min_confidence=0.9)
    logits = np.array([[2.0, 0.0, -1.0]])
    expected = np.exp(2.0) / np.exp([2.0, 0.0, -1.0]).sum()
    assert cascade.confidence(logits) == pytest.approx(expected)
    assert expected < 0.9 and cascade.escalates(cascade.confidence(logits))
    assert cascade.escalates(0.8999) and not cascade.escalates(0.9)  # below escalates, at does not


def test_the_shadow_compares_what_the_cascade_would_have_answered() -> None:
    cascade, registry = _cascade(min_confidence=0.9)
    teacher = np.array([[0.0, 5.0, 0.0]])
    unsure, sure = np.array([[1.0, 0.9, 0.0]]), np.array([[9.0, 0.0, 0.0]])
    # a teacher-served request shadowed on the student: the student's answer only if it is sure
    assert cascade.served(teacher, unsure, lane="teacher") is teacher
    assert cascade.served(teacher, sure, lane="teacher") is sure
    # a cascade-served one: what was returned (the student's), counted as cascade evidence
    assert cascade.served(teacher, sure, lane="student") is sure
    assert registry.get_sample_value("gateway_cascade_comparisons_total", {"model": "m"}) == 1
    assert registry.get_sample_value("gateway_cascade_agreements_total", {"model": "m"}) == 0
    # an escalated one (shadowed on the teacher too): the teacher's answer, which agrees
    assert cascade.served(teacher, unsure, lane="escalated") is teacher
    assert registry.get_sample_value("gateway_cascade_comparisons_total", {"model": "m"}) == 2
    assert registry.get_sample_value("gateway_cascade_agreements_total", {"model": "m"}) == 1


def test_until_the_data_shows_a_threshold_safe_min_confidence_or_everything_escalates() -> None:
    assert _cascade(max_disagreement=0.01)[0].threshold == 1.0
    cascade, registry = _cascade(max_disagreement=0.01, min_confidence=0.8, min_samples=10)
    assert cascade.threshold == 0.8 and cascade.source == "no_evidence"
    sure, teacher = np.array([[9.0, 0.0, 0.0]]), np.array([[9.0, 0.0, 0.0]])
    for _ in range(10):  # 10 agreeing pairs: 0 of 10 cannot show 1 % at 95 %
        cascade.served(teacher, sure, lane="teacher")
    assert cascade.threshold == 0.8 and cascade.source == "no_evidence"
    assert registry.get_sample_value("gateway_cascade_calibration_samples", {"model": "m"}) == 10


def test_a_task_without_a_confidence_is_refused() -> None:
    metrics = GatewayMetrics(CollectorRegistry(), "m", {})
    task = build_task(RegressionTask(kind="regression"), SIGNATURE, metrics)
    with pytest.raises(CascadeRefused, match="task regression has no confidence"):
        Cascade(CascadeConfig(min_confidence=0.5), task, metrics)


def _scored(rows: int, right: int) -> Any:
    return SimpleNamespace(repeat=False, by_class={0: (rows, right)})


def test_a_reused_request_id_replaces_the_earlier_lane_and_is_counted() -> None:
    cascade, registry = _cascade(min_confidence=0.5)
    cascade.remember("a", "true")
    cascade.remember("a", "false")  # the label now scores the later request, sure
    cascade.labelled("a", _scored(1, 1))
    assert registry.get_sample_value("gateway_cascade_feedback_total",
                                     {"model": "m", "escalated": "false"}) == 1  # fmt: skip
    assert registry.get_sample_value("gateway_cascade_feedback_total",
                                     {"model": "m", "escalated": "true"}) == 0  # fmt: skip
    cascade.remember("b", "true")
    cascade.forget("b")  # a later request with its id went to the teacher outside the cascade
    cascade.labelled("b", _scored(1, 0))
    assert registry.get_sample_value("gateway_cascade_feedback_total",
                                     {"model": "m", "escalated": "true"}) == 0  # fmt: skip
    assert registry.get_sample_value("gateway_cascade_reused_ids_total", {"model": "m"}) == 2
    assert cascade.lane_bytes == 0


def test_lanes_are_bounded_by_bytes_as_well_as_entries() -> None:
    registry = CollectorRegistry()
    metrics = GatewayMetrics(registry, "m", {})
    task = build_task(ClassificationTask(), SIGNATURE, metrics)
    cascade = Cascade(CascadeConfig(min_confidence=0.5), task, metrics, remembered=1000,
                      max_bytes=10_000)  # fmt: skip
    for n in range(1000):
        cascade.remember(f"{n:0256d}", "false")  # 256-character ids: about 400 bytes a lane
    assert 0 < cascade.lane_bytes <= 10_000
    cascade.labelled(f"{999:0256d}", _scored(1, 1))  # the newest is kept
    cascade.labelled(f"{0:0256d}", _scored(1, 1))  # the oldest is forgotten
    assert registry.get_sample_value("gateway_cascade_feedback_total",
                                     {"model": "m", "escalated": "false"}) == 1  # fmt: skip

"""The cascade's decisions as pure logic (``gateway.cascade``), on a classification task built
from a signature: what confidence a request has, when it escalates, what the shadow's comparison
is given in the student's place, and what counts as evidence."""

from __future__ import annotations

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from gateway.cascade import Cascade, CascadeRefused, LaneRules, carried, lane_of
from gateway.cascade_config import CascadeConfig
from gateway.errors import NotFound
from gateway.feedback import ClassLabels, PredictionStore
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


def _store(cascade_rules: bool = True, max_bytes: int | None = None) -> PredictionStore:
    rules = ClassLabels(num_classes=3)
    return PredictionStore(60.0, 1000, LaneRules(rules) if cascade_rules else rules,
                           max_bytes=max_bytes)  # fmt: skip


def test_a_lane_travels_in_the_prediction_and_scores_as_its_plain_backend() -> None:
    """The lane is in the one field a fleet's store keeps besides the classes: the label finds
    it wherever it lands, and the paired table is the plain backend's (whose answer it was)."""
    store, cascade, registry = _store(), *_cascade(min_confidence=0.5)
    store.remember("esc", carried("teacher", "true"), np.array([1]))
    store.pair("esc", np.array([2]))  # the student's answer, not returned
    scored = store.score("esc", [1])
    assert lane_of(scored.backend) == ("teacher", "true")
    assert scored.paired is not None and scored.paired[1].teacher_only == 1
    store.remember("sure", carried("student", "false"), np.array([0]))
    store.pair("sure", np.array([1]))  # the teacher's, from its shadow call
    sure = store.score("sure", [1])
    assert lane_of(sure.backend) == ("student", "false")
    assert sure.paired is not None and sure.paired[1].teacher_only == 1
    cascade.labelled("false", sure)
    sample = registry.get_sample_value
    assert sample("gateway_cascade_feedback_total", {"model": "m", "escalated": "false"}) == 1
    assert sample("gateway_cascade_feedback_correct_total",
                  {"model": "m", "escalated": "false"}) == 0  # fmt: skip
    assert sample("gateway_cascade_feedback_paired_total",
                  {"model": "m", "escalated": "false", "outcome": "teacher_only"}) == 1  # fmt: skip
    assert lane_of("teacher") == ("teacher", None) and lane_of("student@x") == ("student@x", None)


def test_a_reused_request_id_replaces_the_earlier_lane_with_its_prediction() -> None:
    store = _store()
    store.remember("a", carried("teacher", "true"), np.array([1]))
    store.remember("a", carried("student", "false"), np.array([1]))  # the later, sure
    assert lane_of(store.score("a", [1]).backend) == ("student", "false")
    store.remember("b", carried("teacher", "true"), np.array([1]))
    store.remember("b", "teacher", np.array([1]))  # a later request outside the cascade
    assert lane_of(store.score("b", [1]).backend) == ("teacher", None)


def test_a_lane_costs_no_bytes_of_its_own_and_goes_with_its_prediction() -> None:
    """No map of lanes beside the predictions: nothing to budget apart from feedback.max_bytes,
    and nothing remembered once the prediction is gone."""
    plain, laned = _store(cascade_rules=False), _store()
    for n in range(100):
        plain.remember(f"r{n}", "student", np.array([1]))
        laned.remember(f"r{n}", carried("student", "false"), np.array([1]))
    assert laned.bytes == plain.bytes
    small = _store(max_bytes=2_000)
    for n in range(100):
        small.remember(f"{n:064d}", carried("student", "false"), np.array([1]))
    assert small.bytes <= 2_000
    with pytest.raises(NotFound):
        small.score(f"{0:064d}", [1])  # the oldest: its lane went with it
    assert lane_of(small.score(f"{99:064d}", [1]).backend) == ("student", "false")

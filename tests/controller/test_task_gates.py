"""The controller's gates per task (issue 26): a regression, an embedding and a multilabel rollout
judged from what the gateway's own task code measured (the real ``gateway.tasks`` comparisons,
its real metrics, read back through ``/metrics`` text and the sources' ``window_metrics``): a
good student passes, a bad one fails, too little data is inconclusive; and a policy refuses
gates that do not fit its task."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from pydantic import TypeAdapter, ValidationError

from controller.analysis import (
    BackendWindow,
    GateResult,
    Mean,
    TaskWindow,
    Verdict,
    WindowMetrics,
    assess,
)
from controller.policy import Policy
from controller.promtext import Snapshot, increase, parse
from controller.sources.base import window_metrics
from gateway.metrics import GatewayMetrics
from gateway.signature import Signature, TensorSpec
from gateway.task_config import TaskConfig
from gateway.tasks import build_task

MODEL = "m"
FEATURES = (TensorSpec("x", "FP32", (-1, 4)),)


def measured(task: Any, output: TensorSpec, teacher: np.ndarray, student: np.ndarray,
             labels: np.ndarray | None = None) -> WindowMetrics:  # fmt: skip
    """What a gateway of ``task`` shows after comparing ``student`` with ``teacher`` on shadow
    traffic (and, given ``labels``, after each backend's answers were labelled), as the
    controller reads it."""
    metrics = GatewayMetrics(CollectorRegistry(), MODEL, {})
    config = TypeAdapter(TaskConfig).validate_python(task)
    built = build_task(config, Signature(FEATURES, (output,)), metrics)
    built.record(built.compare(teacher, student))
    if labels is not None:
        for role, answer in (("teacher", teacher), ("student", student)):
            prediction = built.prediction(answer)
            assert prediction is not None
            checked = built.labels.check(labels.tolist())
            built.record_feedback(built.labels.score(role, prediction, None, checked))
    text = generate_latest(metrics.registry).decode()
    return window_metrics(parse(text), MODEL)


def judged(window: WindowMetrics, task: str, gates: dict[str, float],
           min_requests: int = 200, dark: bool = True) -> dict[str, GateResult]:  # fmt: skip
    steps = [0, 100] if dark else [5, 100]
    policy = Policy(model=MODEL, task=task, steps=steps, gates=gates,  # type: ignore[arg-type]
                    min_requests=min_requests)  # fmt: skip
    return {r.gate: r for r in assess(window, window, policy, dark_launch=dark)}


RNG = np.random.default_rng(11)
TEACHER_VALUES = RNG.normal(5.0, 2.0, size=(2000, 2)).astype(np.float32)
VALUE = TensorSpec("value", "FP32", (-1, 2))


def test_a_regression_student_within_its_error_passes_and_one_off_by_more_fails() -> None:
    gates = {"max_mean_abs_error": 0.05, "max_relative_error": 0.02}
    close = TEACHER_VALUES + RNG.normal(0, 0.01, TEACHER_VALUES.shape).astype(np.float32)
    good = judged(measured("regression", VALUE, TEACHER_VALUES, close), "regression", gates)
    assert {g: r.verdict for g, r in good.items()} == dict.fromkeys(gates, Verdict.PASS)
    mae = good["max_mean_abs_error"]
    assert mae.value == pytest.approx(np.abs(close - TEACHER_VALUES).mean(), rel=1e-5)
    assert mae.low <= mae.value <= mae.high <= 0.05 and mae.samples == 2000

    off = TEACHER_VALUES + np.float32(0.2)  # every output 0.2 off: 4 % of a typical 5
    bad = judged(measured("regression", VALUE, TEACHER_VALUES, off), "regression", gates)
    assert {g: r.verdict for g, r in bad.items()} == dict.fromkeys(gates, Verdict.FAIL)
    assert bad["max_mean_abs_error"].low > 0.05

    few = judged(measured("regression", VALUE, TEACHER_VALUES[:50], off[:50]), "regression",
                 gates)  # fmt: skip
    assert {r.verdict for r in few.values()} == {Verdict.INCONCLUSIVE}


def test_a_regression_students_error_against_labels_counts_beyond_the_teachers() -> None:
    """Labels alone (no shadow comparisons in the window): the student's error over the
    teacher's decides, so a teacher that is itself 0.3 off does not fail a student as good."""
    truth = TEACHER_VALUES + np.float32(0.3)
    as_good = TEACHER_VALUES + RNG.normal(0, 0.01, TEACHER_VALUES.shape).astype(np.float32)
    window = measured("regression", VALUE, TEACHER_VALUES, as_good, labels=truth)
    live = BackendWindow(requests=2000)  # a live step: the student's answers were labelled
    labels_only = WindowMetrics(student=live, task=TaskWindow(
        label_abs_error=window.task.label_abs_error))  # fmt: skip
    # two means whose variance is bounded by 1-2-5 bucket edges: about +/- 0.05 at 2,000 each
    result = judged(labels_only, "regression", {"max_mean_abs_error": 0.1}, dark=False)
    gate = result["max_mean_abs_error"]
    assert gate.verdict is Verdict.PASS and "against labels" in gate.reason
    assert abs(gate.value) < 0.02  # about 0.3 for both: their difference is near 0
    worse = measured("regression", VALUE, TEACHER_VALUES, TEACHER_VALUES - 0.2, labels=truth)
    labels_only = WindowMetrics(student=live, task=TaskWindow(
        label_abs_error=worse.task.label_abs_error))  # fmt: skip
    failed = judged(labels_only, "regression", {"max_mean_abs_error": 0.1}, dark=False)
    assert failed["max_mean_abs_error"].verdict is Verdict.FAIL  # 0.5 off against 0.3


def test_an_embedding_student_is_judged_by_its_cosine_to_the_teacher() -> None:
    spec = TensorSpec("embedding", "FP32", (-1, 16))
    teacher = RNG.standard_normal((1000, 16)).astype(np.float32)
    near = teacher + RNG.normal(0, 0.1, teacher.shape).astype(np.float32)  # cosine about 0.995
    good = judged(measured("embedding", spec, teacher, near), "embedding", {"min_cosine": 0.98})
    assert good["min_cosine"].verdict is Verdict.PASS
    assert 0.98 <= good["min_cosine"].low <= good["min_cosine"].value < 1.0
    far = teacher + RNG.normal(0, 0.6, teacher.shape).astype(np.float32)  # cosine about 0.86
    bad = judged(measured("embedding", spec, teacher, far), "embedding", {"min_cosine": 0.98})
    assert bad["min_cosine"].verdict is Verdict.FAIL and bad["min_cosine"].high < 0.98


def test_a_multilabel_student_is_judged_by_its_hamming_agreement() -> None:
    spec = TensorSpec("logits", "FP32", (-1, 8))
    teacher = RNG.standard_normal((1000, 8)).astype(np.float32)
    flips = RNG.random(teacher.shape) < 0.02  # the student disagrees on 2 % of labels
    student = np.where(flips, -teacher, teacher)
    task = {"kind": "multilabel"}
    good = judged(measured(task, spec, teacher, student), "multilabel",
                  {"min_hamming_agreement": 0.95})  # fmt: skip
    assert good["min_hamming_agreement"].verdict is Verdict.PASS
    assert good["min_hamming_agreement"].value == pytest.approx(1 - flips.mean())
    bad = judged(measured(task, spec, teacher, student), "multilabel",
                 {"min_hamming_agreement": 0.995})  # fmt: skip
    assert bad["min_hamming_agreement"].verdict is Verdict.FAIL


@pytest.mark.parametrize(
    ("task", "gates", "refused"),
    [
        ("regression", {"max_kl": 0.1}, "max_kl"),
        ("regression", {"min_agreement": 0.9, "max_mean_abs_error": 1}, "min_agreement"),
        ("embedding", {"max_accuracy_drop": 0.02}, "max_accuracy_drop"),
        ("multilabel", {"max_accuracy_drop": 0.02}, "max_accuracy_drop"),
        ("classification", {"min_cosine": 0.9}, "min_cosine"),
    ],
)
def test_a_policy_refuses_gates_that_do_not_fit_its_task(
    task: str, gates: dict[str, float], refused: str
) -> None:
    with pytest.raises(ValidationError, match=f"{refused} do not fit task {task}"):
        Policy(task=task, gates=gates)  # type: ignore[arg-type]
    fits = {"max_error_rate": 0.01, "max_latency_ratio": 1.5}  # every task's
    assert Policy(task=task, gates=fits).task == task  # type: ignore[arg-type]


def test_a_multilabel_student_is_judged_by_its_hamming_accuracy_on_labels() -> None:
    """Labels alone: the student's mean Hamming loss on labelled examples less the teacher's."""
    spec = TensorSpec("logits", "FP32", (-1, 8))
    teacher = RNG.standard_normal((2000, 8)).astype(np.float32)
    truth = (teacher >= 0).astype(int)
    truth[:, 0] = 1 - truth[:, 0]  # the teacher is wrong about label 0 on every row: 7/8 right
    live = BackendWindow(requests=2000)

    def drop(flip_rate: float) -> GateResult:
        flips = RNG.random(teacher.shape) < flip_rate
        student = np.where(flips, -teacher, teacher)
        window = measured({"kind": "multilabel"}, spec, teacher, student, labels=truth)
        labels_only = WindowMetrics(student=live, task=TaskWindow(
            label_hamming_loss=window.task.label_hamming_loss))  # fmt: skip
        gates = {"max_hamming_accuracy_drop": 0.05}
        return judged(labels_only, "multilabel", gates, dark=False)["max_hamming_accuracy_drop"]

    close = drop(0.005)  # about half a point of Hamming accuracy
    assert close.verdict is Verdict.PASS and close.value == pytest.approx(0.005, abs=0.004)
    far = drop(0.2)  # about 15 points (flips of the wrong label 0 help it)
    assert far.verdict is Verdict.FAIL and far.low > 0.05


def test_one_wild_answer_earlier_in_the_gateways_life_does_not_pass_a_bad_student() -> None:
    """The reviewer's probe: a student answered 1e30 once on a shadowed row, long before the
    rollout; then every one of 5,000 rows is 0.5 off. Before the cap, the float64 ``_sum`` of
    1e30 swallowed every later increment: the window's mean read 0 and the gate passed."""
    metrics = GatewayMetrics(CollectorRegistry(), MODEL, {})
    config = TypeAdapter(TaskConfig).validate_python("regression")
    task = build_task(config, Signature(FEATURES, (TensorSpec("y", "FP32", (-1, 1)),)), metrics)
    task.record(task.compare(np.zeros((1, 1), np.float32), np.full((1, 1), 1e30, np.float32)))
    task.record(task.compare(np.zeros((1, 1), np.float32), np.full((1, 1), np.nan, np.float32)))

    def snapshot() -> Snapshot:
        return parse(generate_latest(metrics.registry).decode())

    before = snapshot()
    truth = RNG.normal(size=(5000, 1)).astype(np.float32)
    task.record(task.compare(truth, truth + np.float32(0.5)))
    window = window_metrics(increase(snapshot(), before), MODEL)
    assert window.task.abs_error.total == pytest.approx(2500.0, rel=1e-5)  # not 0, not NaN
    gate = judged(window, "regression", {"max_mean_abs_error": 0.1})["max_mean_abs_error"]
    assert gate.verdict is Verdict.FAIL and gate.value == pytest.approx(0.5, rel=1e-5)


def _broken(mean: Mean, total: float) -> Mean:
    return replace(mean, total=total)


@functools.cache
def _bad_windows() -> dict[str, tuple[str, WindowMetrics, Callable[[WindowMetrics, float],
                                                                   WindowMetrics]]]:  # fmt: skip
    """Per gate on a histogram's mean: a bad student's window, and how to break its sum."""
    off = TEACHER_VALUES + np.float32(0.2)
    regression = measured("regression", VALUE, TEACHER_VALUES, off)
    scores = TensorSpec("logits", "FP32", (-1, 8))
    teacher = RNG.standard_normal((2000, 8)).astype(np.float32)
    student = np.where(RNG.random(teacher.shape) < 0.05, -teacher, teacher)
    spread = teacher + RNG.normal(0, 1.5, teacher.shape).astype(np.float32)
    truth = (teacher >= 0).astype(int)
    multilabel = measured({"kind": "multilabel"}, scores, teacher, student, labels=truth)
    labelled = WindowMetrics(student=BackendWindow(requests=2000), task=TaskWindow(
        label_hamming_loss=multilabel.task.label_hamming_loss))  # fmt: skip
    return {
        "max_kl": ("classification", measured("classification", scores, teacher, spread),
                   lambda w, t: replace(w, kl_sum=t)),
        "max_mean_abs_error": ("regression", regression, lambda w, t: replace(w, task=replace(
            w.task, abs_error=_broken(w.task.abs_error, t)))),
        "max_relative_error": ("regression", regression, lambda w, t: replace(w, task=replace(
            w.task, relative_error=_broken(w.task.relative_error, t)))),
        "min_cosine": ("embedding", measured("embedding", scores, teacher, spread),
                       lambda w, t: replace(w, task=replace(
                           w.task, cosine_distance=_broken(w.task.cosine_distance, t)))),
        "min_hamming_agreement": ("multilabel", multilabel, lambda w, t: replace(w, task=replace(
            w.task, hamming_loss=_broken(w.task.hamming_loss, t)))),
        "max_hamming_accuracy_drop": ("multilabel", labelled, lambda w, t: replace(w, task=replace(
            w.task, label_hamming_loss={**w.task.label_hamming_loss, "student": _broken(
                w.task.label_hamming_loss["student"], t)}))),
    }  # fmt: skip


BAD_THRESHOLDS = {"max_kl": 0.05, "max_mean_abs_error": 0.05, "max_relative_error": 0.02,
                  "min_cosine": 0.98, "min_hamming_agreement": 0.99,
                  "max_hamming_accuracy_drop": 0.01}  # fmt: skip


@pytest.mark.parametrize("gate", sorted(BAD_THRESHOLDS))
@pytest.mark.parametrize("total", [0.0, math.inf, math.nan])
def test_a_window_whose_sum_its_buckets_rule_out_is_judged_from_the_buckets(
    gate: str, total: float
) -> None:
    """Every gate that reads a histogram's mean: a sum of 0 (swallowed by an earlier 1e30), inf
    or NaN is not the mean. The buckets still bound it (each value lies between its bucket's
    edges), so a bad student still fails, and the value shown lies in that range."""
    task, window, breaking = _bad_windows()[gate]
    gates = {gate: BAD_THRESHOLDS[gate]}
    intact = judged(window, task, gates, dark=gate != "max_hamming_accuracy_drop")[gate]
    broken = judged(breaking(window, total), task, gates,
                    dark=gate != "max_hamming_accuracy_drop")[gate]  # fmt: skip
    assert intact.verdict is Verdict.FAIL and broken.verdict is Verdict.FAIL, broken
    assert broken.low <= intact.value <= broken.high  # wider, and still around the true mean
    assert math.isfinite(broken.value)

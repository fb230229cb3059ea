"""How a cascade request is counted when something fails, through the real service and app over
scripted backends (the faults are the seam): a student that fails falls back and counts like split
mode, a teacher that fails an escalation leaves the student's answer marked ``x-escalated:
failed``, the evidence is dropped alike for sure and escalated requests when the teacher's shadow
calls fail, the drift summaries see the student's answers of escalated requests, and the
controller's accuracy gates refuse to judge a cascade."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pytest
from prometheus_client import generate_latest

from controller import error_rate
from controller.analysis import CASCADE_REFUSAL, Verdict, assess
from controller.policy import Policy
from controller.promtext import parse
from controller.sources.base import window_metrics
from gateway import metric_names as names
from gateway.backends.base import Lane
from gateway.errors import BackendUnavailable
from tests.fake_backend import (
    ALWAYS,
    NEVER,
    Behaviour,
    ScriptedBackend,
    in_process_gateway,
    run,
)


@pytest.mark.parametrize("mode", ["split", "cascade"])
@run
async def test_a_student_that_always_fails_reads_100_percent_errors_in_either_mode(
    mode: str,
) -> None:
    """The reviewer's probe: in cascade mode the fallback was also a student 200 (50 %)."""
    traffic: dict[str, object] = {"student_share": 1.0}
    if mode == "cascade":
        traffic.update({"mode": "cascade", "cascade": {"min_confidence": NEVER}})
    async with in_process_gateway(traffic=traffic, resilience={"failure_threshold": 1000}) as gw:
        gw.student.behaviour = Behaviour.FAIL
        answers = [await gw.infer() for _ in range(20)]
        assert {a.status_code for a in answers} == {200}
        assert {a.headers["x-served-by"] for a in answers} == {"teacher"}
        snapshot = parse(generate_latest(gw.registry).decode())
        routed = error_rate.count(error_rate.ROUTED, snapshot, "digits", "student")
        failed = error_rate.count(error_rate.FAILED, snapshot, "digits", "student")
        assert (routed, failed) == (20, 20)
        for flag in names.CASCADE_ESCALATED:  # no cascade answer among them
            assert gw.metric(names.CASCADE_REQUESTS, escalated=flag) == 0


@run
async def test_a_teacher_failing_an_escalation_leaves_the_students_answer_marked_failed() -> None:
    traffic = {"student_share": 1.0, "mode": "cascade", "cascade": {"min_confidence": ALWAYS}}
    async with in_process_gateway(traffic=traffic, resilience={"failure_threshold": 1000}) as gw:
        gw.student.answer_class = 3
        sure = await gw.infer()  # the teacher answers an escalation while it can
        assert sure.headers["x-escalated"] == "true" and sure.headers["x-served-by"] == "teacher"
        gw.teacher.behaviour = Behaviour.FAIL
        answer = await gw.infer()
        assert answer.status_code == 200
        assert answer.headers["x-escalated"] == "failed"
        assert answer.headers["x-served-by"] == "student"
        assert int(np.argmax(answer.json()["outputs"][0]["data"])) == 3  # the student's
        assert gw.metric(names.CASCADE_REQUESTS, escalated="failed") == 1
        assert gw.metric(names.CASCADE_REQUESTS, escalated="true") == 1
        assert gw.metric(names.REQUESTS, backend="student", code="200", protocol="http") == 2


class ShadowLaneFails(ScriptedBackend):
    """Answers live calls; every shadow call fails (a teacher whose shadow lane is broken)."""

    async def infer(
        self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str], lane: Lane = "live"
    ) -> dict[str, np.ndarray]:
        if lane == "shadow":
            self.calls += 1
            raise BackendUnavailable("teacher shadow lane broken (scripted)")
        return await super().infer(inputs, output_names, lane)


@pytest.mark.parametrize("threshold", [NEVER, ALWAYS])
@run
async def test_failed_shadow_calls_drop_sure_and_escalated_requests_alike(
    threshold: float,
) -> None:
    """Escalated requests were evidence whether or not the shadow lane worked, sure ones only
    when it did: now both need their shadow call to answer, and the drops are counted."""
    traffic = {"student_share": 1.0, "mode": "cascade",
               "cascade": {"min_confidence": threshold, "max_disagreement": 0.05}}  # fmt: skip
    shadow = {"sample_rate": 1.0, "max_delay_ms": 0}
    async with in_process_gateway(traffic=traffic, shadow=shadow) as gw:
        cascade = gw.service.cascade
        assert cascade is not None and cascade.selector is not None
        for _ in range(6):
            assert (await gw.infer()).status_code == 200
        await gw.service.shadow.drain()
        assert cascade.selector.samples == 6  # both kinds: evidence once the teacher answered
        broken = ShadowLaneFails("teacher", 7)
        await broken.load()
        gw.service.shadow._backends = {**gw.service.shadow._backends, "teacher": broken}
        for _ in range(5):
            assert (await gw.infer()).status_code == 200
        await gw.service.shadow.drain()
        assert broken.calls >= 1  # every one was drawn and tried (in batches)
        assert cascade.selector.samples == 6  # and none of them is evidence
        assert gw.metric(names.CASCADE_EVIDENCE_DROPPED, reason="error") == 5


@run
async def test_drift_summaries_see_the_students_answer_of_an_escalated_request() -> None:
    traffic = {"student_share": 1.0, "mode": "cascade", "cascade": {"min_confidence": ALWAYS}}
    async with in_process_gateway(traffic=traffic, drift={"sample_rate": 1.0}) as gw:
        for _ in range(4):
            answer = await gw.infer()
            assert answer.headers["x-escalated"] == "true"
        drift = gw.service.drift
        assert drift is not None
        drift.flush()
        assert gw.metric(names.DRIFT_ROWS) == 4
        assert gw.metric(names.DRIFT_STUDENT_ROWS) == 4  # was 0: the teacher's answers


@run
async def test_the_controllers_class_accuracy_gate_refuses_to_judge_a_cascade() -> None:
    """Per-backend labels score only a cascade's sure answers (an escalated request's label
    scores the teacher): max_class_accuracy_drop would judge the wrong answers, so it says to use
    min_agreement and never passes; the same page from split mode is judged. (max_accuracy_drop
    judges the cascade's own labels: ``controller.cascade_gates``, tests/test_cascade_gates.py.)"""
    pages = {}
    for mode in ("split", "cascade"):
        traffic: dict[str, object] = {"student_share": 1.0}
        if mode == "cascade":
            traffic.update({"mode": "cascade", "cascade": {"min_confidence": NEVER}})
        async with in_process_gateway(traffic=traffic) as gw:
            for _ in range(12):
                assert (await gw.infer()).status_code == 200
            pages[mode] = parse(generate_latest(gw.registry).decode())
    policy = Policy(model="digits", steps=[5, 100], min_requests=10,
                    gates={"max_class_accuracy_drop": 0.02, "max_error_rate": 0.5})  # type: ignore[arg-type]  # fmt: skip
    for mode, page in pages.items():
        window = window_metrics(page, "digits")
        results = {r.gate: r for r in assess(window, window, policy, dark_launch=False)}
        refused = results["max_class_accuracy_drop"].reason == CASCADE_REFUSAL
        assert refused == (mode == "cascade")
        assert results["max_error_rate"].verdict is Verdict.PASS  # the others judge as before
    assert "min_agreement" in CASCADE_REFUSAL

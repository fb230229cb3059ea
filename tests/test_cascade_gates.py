"""The controller's gates on a cascade (``controller.cascade_gates``): the cascade's returned
answers against the teacher's accuracy (paired where the teacher's answer is known), and its
end-to-end latency against the teacher-only lane's; judged on real in-process gateways' metrics
pages (scripted backends whose answers are known) and on windows whose numbers are chosen."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from prometheus_client import generate_latest

from controller import error_rate
from controller.analysis import BackendWindow, Levels, Verdict, WindowMetrics
from controller.cascade_gates import GATES, accuracy_drop, judge, latency_ratio
from controller.cascade_window import CascadeWindow, cascade_window
from controller.labels import Labels, PairedLabels
from controller.policy import Gates, Policy
from controller.promtext import Snapshot, parse
from controller.sources.base import window_metrics
from controller.status import cascade_note, fleet_cascade_line
from gateway.metric_names import CASCADE_ESCALATION_CALLS
from tests.fake_backend import ALWAYS, NEVER, Behaviour, in_process_gateway, run, ticket_of

POLICY = Policy(model="digits", steps=[5, 100], min_requests=100,
                gates={"max_accuracy_drop": 0.05, "max_latency_ratio": 1.5})  # type: ignore[arg-type]  # fmt: skip
LEVELS = Levels.of(POLICY, "max_accuracy_drop")


async def _page(threshold: float, student_class: int, requests: int = 200) -> Snapshot:
    """A cascade gateway (teacher answers 7, right) after ``requests`` labelled requests through
    the cascade and as many to the teacher alone (x-canary), every one shadowed."""
    traffic = {"student_share": 1.0, "mode": "cascade", "cascade": {"min_confidence": threshold}}
    shadow = {"sample_rate": 1.0, "max_delay_ms": 0}
    async with in_process_gateway(traffic=traffic, shadow=shadow) as gw:
        gw.student.answer_class = student_class
        for n in range(2 * requests):
            lane = "student" if n % 2 else "teacher"
            answer = await gw.infer({"x-canary": lane})
            assert answer.status_code == 200
            await gw.service.shadow.drain()  # its teacher answer joins before the label
            request_id = answer.json()["id"]
            scored = await gw.client.post("/v2/models/digits/feedback", headers=ticket_of(answer),
                                          json={"id": request_id, "label": [7]})  # fmt: skip
            assert scored.status_code == 200, scored.text
        return parse(generate_latest(gw.registry).decode())


def _judge(gate: str, page: Snapshot) -> Any:
    window = window_metrics(page, "digits")
    return GATES[gate](window, window, POLICY, POLICY.gates.configured()[gate], LEVELS)


@run
async def test_a_cascade_as_right_as_its_teacher_passes_the_accuracy_gate() -> None:
    """Every cascade request escalated (the teacher's answers): the drop is 0, and the teacher's
    reference is its own lane's labels, the escalated ones taken out."""
    page = await _page(ALWAYS, student_class=3)
    result = _judge("max_accuracy_drop", page)
    assert result.verdict is Verdict.PASS, result
    assert cascade_window(page, "digits").labels["true"] == Labels(200, 200)


@run
async def test_a_cascade_whose_sure_answers_are_wrong_fails_it_paired() -> None:
    page = await _page(NEVER, student_class=3)  # never escalates, always wrong
    result = _judge("max_accuracy_drop", page)
    assert result.verdict is Verdict.FAIL, result
    assert result.value == 1.0 and "paired and unpaired" in result.reason
    assert cascade_window(page, "digits").paired == PairedLabels(0, 200, 0, 0)  # teacher_only


def _window(labels: Labels, cascade: CascadeWindow) -> WindowMetrics:
    teacher = BackendWindow(feedback_total=labels.total, feedback_correct=labels.correct)
    return WindowMetrics(teacher=teacher, cascade=cascade)


def test_the_teachers_reference_leaves_out_the_escalated_requests_labels() -> None:
    """Escalated requests are the hard ones: left in the teacher's labels (here 2,000 of its own
    at 99 %, 1,000 escalated at 70 %) they pull its reference to 89.3 %, and a cascade at 91 %
    would pass a 0.02 drop; against the teacher's own 99 % it fails."""
    cascade = CascadeWindow(labels={"false": Labels(9_000, 8_400),
                                    "true": Labels(1_000, 700)})  # fmt: skip
    teacher = _window(Labels(3_000, 1_980 + 700), cascade)
    result = accuracy_drop(teacher, teacher, POLICY, 0.02, LEVELS)
    assert result.verdict is Verdict.FAIL, result
    assert abs(result.value - 0.08) < 1e-9 and result.reason.endswith("(cascade: unpaired)")


def test_the_paired_interval_counts_only_the_students_share_of_the_labels() -> None:
    """A drop of 2 points where the student answered (from 500 shadowed pairs) on the 10 % of
    rows it answered is 0.2 points: the paired product passes a 1-point gate that the unpaired
    interval alone (the teacher's own 2,000 labels at 98 %) cannot decide."""
    cascade = CascadeWindow(labels={"false": Labels(1_000, 960), "true": Labels(9_000,
                            8_820)}, paired=PairedLabels(480, 10, 0, 10))  # fmt: skip
    teacher = _window(Labels(2_000 + 9_000, 1_960 + 8_820), cascade)
    both = accuracy_drop(teacher, teacher, POLICY, 0.01, LEVELS)
    assert both.verdict is Verdict.PASS, both
    assert abs(both.value - 0.002) < 1e-9
    unpaired = replace(teacher, cascade=CascadeWindow(labels=cascade.labels))
    alone = accuracy_drop(unpaired, teacher, POLICY, 0.01, LEVELS)
    assert alone.verdict is Verdict.INCONCLUSIVE, alone


def test_no_labels_is_inconclusive() -> None:
    empty = WindowMetrics()
    result = accuracy_drop(empty, empty, POLICY, 0.02, LEVELS)
    assert result.verdict is Verdict.INCONCLUSIVE


def _latency(milliseconds: float, count: float) -> list[tuple[float, float]]:
    """A histogram whose ``count`` observations all sit just under ``milliseconds``."""
    edges = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, float("inf")]
    return [(edge, count if edge * 1000 >= milliseconds else 0.0) for edge in edges]


def test_the_latency_gate_compares_the_cascade_end_to_end_with_the_teacher_alone() -> None:
    """An escalated request pays both calls: what the client waits is the cascade's duration,
    set against the teacher-only lane's requests, not the backends' call latency (which here
    says the student is 10x faster)."""
    calls = WindowMetrics(teacher=BackendWindow(latency=_latency(20, 1_000)),
                          student=BackendWindow(latency=_latency(2, 1_000)))  # fmt: skip
    slow = replace(calls, cascade=CascadeWindow(latency=_latency(50, 1_000),
                                                teacher_latency=_latency(20, 1_000)))  # fmt: skip
    fast = replace(calls, cascade=CascadeWindow(latency=_latency(5, 1_000),
                                                teacher_latency=_latency(20, 1_000)))  # fmt: skip
    failed = latency_ratio(slow, slow, POLICY, 1.5, LEVELS)
    assert failed.verdict is Verdict.FAIL and "end to end" in failed.reason, failed
    passed = latency_ratio(fast, fast, POLICY, 1.5, LEVELS)
    assert passed.verdict is Verdict.PASS, passed
    # at 100 % the teacher-only lane is empty: the rollout's earlier steps are the reference
    alone = replace(calls, cascade=CascadeWindow(latency=_latency(50, 1_000)))
    pooled = latency_ratio(alone, slow, POLICY, 1.5, LEVELS)
    assert pooled.verdict is Verdict.FAIL and "earlier steps" in pooled.reason, pooled


@run
async def test_a_teacher_failing_an_escalation_is_the_teachers_failure_counted_once() -> None:
    """The request is the cascade lane's 200 (the student's answer); the teacher's call is a 503
    in the escalation calls, which the teacher's error rate adds to its requests and failures
    (``controller.error_rate``'s terms with the escalation calls), and its breaker counted it."""
    traffic = {"student_share": 1.0, "mode": "cascade", "cascade": {"min_confidence": ALWAYS}}
    async with in_process_gateway(traffic=traffic, resilience={"failure_threshold": 1000}) as gw:
        assert (await gw.infer()).headers["x-escalated"] == "true"
        gw.teacher.behaviour = Behaviour.FAIL
        for _ in range(3):
            assert (await gw.infer()).headers["x-escalated"] == "failed"
        assert gw.metric(CASCADE_ESCALATION_CALLS, backend="teacher", code="200",
                         reason="ok") == 1  # fmt: skip
        assert gw.metric(CASCADE_ESCALATION_CALLS, backend="teacher", code="503",
                         reason="error") == 3  # fmt: skip
        page = parse(generate_latest(gw.registry).decode())
        # the teacher's error rate: its 4 escalation calls routed, the 3 it failed
        assert error_rate.count(error_rate.ROUTED, page, "digits", "teacher") == 4
        assert error_rate.count(error_rate.FAILED, page, "digits", "teacher") == 3
        assert error_rate.count(error_rate.ROUTED, page, "digits", "student") == 4  # once each
        assert cascade_window(page, "digits").escalation_failures == 3
        assert len(gw.service._breakers["teacher"]._failures) == 3


@run
async def test_status_reports_every_gateways_threshold_and_what_holds_for_the_fleet() -> None:
    """Each gateway chooses from its own evidence; ``status`` shows each one's threshold and
    source as its admin API answers them, and for the fleet the highest threshold, the gateways
    whose threshold is chosen from data with the confidence at which all their guarantees hold
    at once (a union bound), and those on a fixed or fallback threshold, which none covers."""
    configs: dict[str, dict[str, object]] = {
        "fixed": {"mode": "cascade", "cascade": {"min_confidence": 0.3}},
        "waiting": {"mode": "cascade", "cascade": {"max_disagreement": 0.01,
                                                   "min_confidence": 0.6}},
    }  # fmt: skip
    answers = {}
    for name, traffic in configs.items():
        async with in_process_gateway(traffic={"student_share": 1.0, **traffic}) as gw:
            answers[name] = (await gw.client.get("/admin/traffic")).json()["cascade"]
    assert cascade_note(answers["fixed"]) == "cascade escalates below 0.30 (fixed)"
    assert cascade_note(answers["waiting"]) == (
        "cascade escalates below 0.60 (no_evidence: no threshold shown safe yet, a fallback)"
    )
    # two gateways that have chosen (the admin API's shape once a look shows one safe: the
    # e2e test reads it from real gateways), at 99 % and 98 %
    chosen = [{**answers["waiting"], "threshold": t, "source": "chosen", "confidence_level": level,
               "evidence": {"samples": 800, "upper_bound": 0.008}}
              for t, level in ((0.55, 0.99), (0.5, 0.98))]  # fmt: skip
    line = fleet_cascade_line([answers["fixed"], answers["waiting"], *chosen], unanswered=1)
    assert line == (
        "cascade on 4 gateways (and 1 that did not answer): highest threshold 0.60; chosen from "
        "data on 2, each within its max_disagreement, all at once at confidence >= 97%; 2 on a "
        "fixed or fallback threshold, with no bound"
    )
    assert fleet_cascade_line([answers["fixed"]]) is None  # one gateway: its own line says it all


def test_a_paired_and_an_unpaired_interval_that_disagree_decide_nothing() -> None:
    """The cascade 90 % right on 5,000 labels against the teacher's 98 %, but 2,000 pairs with no
    discordant one (a shadow sample unlike the traffic): the two intervals cannot both hold, so
    the gate neither passes (the paired one alone would) nor fails."""
    policy = Policy(model="digits", steps=[5, 100], min_requests=100,
                    gates=Gates(max_accuracy_drop=0.02))  # fmt: skip
    cascade = CascadeWindow(requests=5000, labels={"false": Labels(5000, 4500)},
                            paired=PairedLabels(1800, 0, 0, 200))  # fmt: skip
    step = WindowMetrics(cascade=cascade)
    rollout = WindowMetrics(teacher=BackendWindow(feedback_total=5000, feedback_correct=4900),
                            cascade=cascade)  # fmt: skip
    result = judge(
        "max_accuracy_drop", step, rollout, policy, 0.02, Levels.of(policy, "max_accuracy_drop")
    )
    assert result.verdict is Verdict.INCONCLUSIVE and "disagree" in result.reason


def test_the_failed_lane_counts_at_its_worst_in_the_paired_interval() -> None:
    """Sure answers paired and as good as the teacher's, but a tenth of the labelled answers came
    from escalations the teacher failed (rarely paired): the paired interval's top is at least
    that tenth, so the sure pairs alone cannot pass a 2-point gate."""
    policy = Policy(model="digits", steps=[5, 100], min_requests=100,
                    gates=Gates(max_accuracy_drop=0.02))  # fmt: skip
    cascade = CascadeWindow(requests=5000, labels={"false": Labels(4500, 4410),
                                                   "failed": Labels(500, 250)},
                            paired=PairedLabels(4000, 0, 0, 80))  # fmt: skip
    step = WindowMetrics(cascade=cascade)
    result = judge(
        "max_accuracy_drop", step, step, policy, 0.02, Levels.of(policy, "max_accuracy_drop")
    )
    assert result.high >= 0.1 and result.verdict is not Verdict.PASS

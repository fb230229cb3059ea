"""Gates judged on windows of metrics: pass, fail, inconclusive, never a pass without data."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from controller import stats
from controller.analysis import BackendWindow, Verdict, WindowMetrics, assess
from controller.labels import Labels, PairedLabels
from controller.policy import Gates, Policy

ALL_GATES = Gates(
    max_latency_ms=10, max_latency_ratio=2, max_error_rate=0.01, min_agreement=0.9,
    max_accuracy_drop=0.02, max_kl=0.2, max_cost_per_1k=0.001,
)  # fmt: skip
POLICY = Policy(min_requests=100, gates=ALL_GATES)


def latency(n: int, seconds: float) -> list[tuple[float, float]]:
    """n samples all in the bucket that ends at ``seconds``."""
    bounds = [0.001, 0.002, 0.004, 0.008, 0.016, 0.032]
    return [(b, float(n if b >= seconds else 0)) for b in bounds] + [(math.inf, float(n))]


def window(
    *,
    requests: float = 5000,
    errors: float = 0,
    correct: float = 4850,
    agreements: float = 4900,
    student_latency: float = 0.002,
    kl: float = 0.05,
    cost: float = 0.5,
) -> WindowMetrics:
    student = BackendWindow(
        requests=requests, errors=errors, latency=latency(int(requests), student_latency),
        feedback_total=requests, feedback_correct=correct, cost_dollars=cost * requests / 1000,
    )  # fmt: skip
    teacher = BackendWindow(
        requests=5000, latency=latency(5000, 0.004), feedback_total=5000, feedback_correct=4875
    )
    return WindowMetrics(
        teacher=teacher, student=student, comparisons=5000, agreements=agreements,
        kl_sum=kl * 5000, kl_count=5000,  # buckets that agree with the sum (else it is unused)
        kl_buckets=[(0.1, 5000.0 if kl <= 0.1 else 0.0), (1.0, 5000.0), (math.inf, 5000.0)],
    )  # fmt: skip


def verdicts(step: WindowMetrics, dark: bool = False) -> dict[str, Verdict]:
    return {r.gate: r.verdict for r in assess(step, step, POLICY, dark)}


def test_a_good_student_passes_every_gate() -> None:
    good = window(cost=0.0005)
    assert set(verdicts(good).values()) == {Verdict.PASS}


def test_no_data_is_inconclusive_never_a_pass() -> None:
    empty = WindowMetrics()
    assert set(verdicts(empty).values()) == {Verdict.INCONCLUSIVE}


def test_too_few_requests_is_inconclusive_even_when_bad() -> None:
    few = window(requests=50, errors=25, correct=5, cost=0.0005)
    assert set(verdicts(few).values()) == {Verdict.INCONCLUSIVE}


def test_each_broken_gate_fails() -> None:
    assert verdicts(window(errors=200))["max_error_rate"] is Verdict.FAIL
    assert verdicts(window(agreements=3000))["min_agreement"] is Verdict.FAIL
    assert verdicts(window(correct=4000))["max_accuracy_drop"] is Verdict.FAIL
    assert verdicts(window(kl=0.5))["max_kl"] is Verdict.FAIL
    assert verdicts(window(student_latency=0.032))["max_latency_ms"] is Verdict.FAIL
    assert verdicts(window(student_latency=0.032))["max_latency_ratio"] is Verdict.FAIL
    assert verdicts(window(cost=0.002))["max_cost_per_1k"] is Verdict.FAIL


def test_close_to_a_threshold_is_inconclusive() -> None:
    # 1 % errors against a 1 % limit: the data cannot tell either way.
    assert verdicts(window(errors=50))["max_error_rate"] is Verdict.INCONCLUSIVE
    assert verdicts(window(agreements=4500))["min_agreement"] is Verdict.INCONCLUSIVE


def test_the_accuracy_reference_is_the_teachers_over_the_whole_rollout() -> None:
    step = window(correct=4850)
    step_without_teacher = WindowMetrics(
        teacher=BackendWindow(), student=step.student, comparisons=step.comparisons,
        agreements=step.agreements, kl_sum=step.kl_sum, kl_count=step.kl_count,
        kl_buckets=step.kl_buckets,
    )  # fmt: skip
    results = {r.gate: r for r in assess(step_without_teacher, step, POLICY, False)}
    assert results["max_accuracy_drop"].verdict is Verdict.PASS


def test_at_the_last_step_the_latency_ratio_reads_the_teacher_from_earlier_steps() -> None:
    """Decisions issue: at 100 % the teacher answers no one (its batched shadow calls are timed
    apart), so a good student once waited for teacher samples until the timeout rolled it back.
    The rollout's pooled teacher latency decides instead, both ways."""
    rollout = window()
    for student_seconds, expected in ((0.002, Verdict.PASS), (0.032, Verdict.FAIL)):
        last = replace(window(student_latency=student_seconds), teacher=BackendWindow())
        result = next(r for r in assess(last, rollout, POLICY, False)
                      if r.gate == "max_latency_ratio")  # fmt: skip
        assert result.verdict is expected, result
        assert result.reason.endswith("(teacher: the rollout's earlier steps)")
        assert result.samples == 5000


def test_a_dark_launch_judges_shadow_gates_and_skips_live_ones() -> None:
    dark = window(requests=0, correct=0)
    dark = WindowMetrics(
        teacher=dark.teacher,
        student=BackendWindow(latency=latency(5000, 0.002)),
        comparisons=5000, agreements=4900, kl_sum=250, kl_count=5000,
        kl_buckets=[(0.1, 5000.0), (math.inf, 5000.0)],
    )  # fmt: skip
    result = verdicts(dark, dark=True)
    for gate in ("max_error_rate", "max_accuracy_drop", "max_cost_per_1k"):
        assert result[gate] is Verdict.SKIPPED
    for gate in ("min_agreement", "max_kl", "max_latency_ms", "max_latency_ratio"):
        assert result[gate] is Verdict.PASS


def test_results_carry_their_numbers() -> None:
    result = next(r for r in assess(window(), window(), POLICY, False) if r.gate == "min_agreement")
    assert result.value == 0.98 and result.low < 0.98 < result.high
    assert result.threshold == 0.9 and result.samples == 5000


def test_accuracy_on_the_same_requests_decides_where_two_samples_cannot() -> None:
    """At a 5 % step the student's own labels are few; shadow traffic gives many more labelled
    examples that both backends answered, and the paired interval on them is tight."""
    few = window(requests=300, correct=291)  # 97 % on 300 labels: the drop's interval is wide
    assert verdicts(few)["max_accuracy_drop"] is Verdict.INCONCLUSIVE
    as_good = PairedLabels(both_correct=9400, teacher_only=80, student_only=70, both_wrong=450)
    paired = next(r for r in assess(replace(few, paired=as_good), few, POLICY, False)
                  if r.gate == "max_accuracy_drop")  # fmt: skip
    assert paired.verdict is Verdict.PASS and paired.samples == 10_000
    assert paired.value == (80 - 70) / 10_000 and "paired" in paired.reason
    worse = PairedLabels(both_correct=9200, teacher_only=330, student_only=20, both_wrong=450)
    assert verdicts(replace(few, paired=worse))["max_accuracy_drop"] is Verdict.FAIL


def test_the_students_own_labels_decide_when_they_outnumber_the_paired_ones() -> None:
    step = replace(window(correct=4500), paired=PairedLabels(both_correct=100))
    result = next(r for r in assess(step, step, POLICY, False) if r.gate == "max_accuracy_drop")
    assert result.verdict is Verdict.FAIL and "paired" not in result.reason
    assert result.samples == 5000


def _per_class(*classes: tuple[float, float]) -> dict[str, Labels]:
    return {str(c): Labels(total, correct) for c, (total, correct) in enumerate(classes)}


CLASS_POLICY = Policy(min_requests=100, gates=Gates(max_accuracy_drop=0.03,
                                                    max_class_accuracy_drop=0.05))  # fmt: skip


def _class_window(student: dict[str, Labels], teacher: dict[str, Labels]) -> WindowMetrics:
    def backend(by_class: dict[str, Labels]) -> BackendWindow:
        return BackendWindow(requests=sum(x.total for x in by_class.values()),
                             feedback_total=sum(x.total for x in by_class.values()),
                             feedback_correct=sum(x.correct for x in by_class.values()),
                             feedback_by_class=by_class)  # fmt: skip

    return WindowMetrics(teacher=backend(teacher), student=backend(student))


def test_a_student_as_accurate_overall_that_fails_one_class_is_caught() -> None:
    """The seed's warning: ten classes of 1,000 examples; the student is better on nine and 20
    points worse on class 3. Overall it is 0.2 points behind, and passes that gate."""
    teacher = _per_class(*[(1000, 950)] * 10)
    student = _per_class(*[(1000, 975)] * 3, (1000, 750), *[(1000, 975)] * 6)
    step = _class_window(student, teacher)
    results = {r.gate: r for r in assess(step, step, CLASS_POLICY, False)}
    assert results["max_accuracy_drop"].verdict is Verdict.PASS
    failed = results["max_class_accuracy_drop"]
    assert failed.verdict is Verdict.FAIL and failed.value == pytest.approx(0.2)
    assert "class 3" in failed.reason and "Bonferroni over 10 classes" in failed.reason


def test_the_per_class_intervals_are_corrected_for_the_number_of_classes() -> None:
    """A class 8 points worse on 1,000 examples: its 95 % interval alone is above 5 points, but
    not at the 99.5 % that ten classes call for, so it is not failed on that evidence."""
    teacher = _per_class(*[(1000, 950)] * 10)
    student = _per_class(*[(1000, 950)] * 9, (1000, 870))
    step = _class_window(student, teacher)
    one = stats.newcombe_difference(950, 1000, 870, 1000, stats.z_value(0.95))
    assert one[0] > 0.05  # uncorrected, this class would fail
    result = next(r for r in assess(step, step, CLASS_POLICY, False)
                  if r.gate == "max_class_accuracy_drop")  # fmt: skip
    assert result.verdict is Verdict.INCONCLUSIVE and "class 9" in result.reason


def test_a_class_the_student_has_no_labels_for_keeps_the_gate_from_passing() -> None:
    teacher = _per_class((500, 480), (500, 480))
    student = _per_class((500, 480))
    step = _class_window(student, teacher)
    result = next(r for r in assess(step, step, CLASS_POLICY, False)
                  if r.gate == "max_class_accuracy_drop")  # fmt: skip
    assert result.verdict is Verdict.INCONCLUSIVE and "class 1" in result.reason


def test_a_dry_run_gate_is_judged_and_shown_but_never_decides() -> None:
    from controller.decisions import Action, judge

    policy = Policy(min_requests=100, bake_seconds=0, gates=ALL_GATES, dry_run=["max_error_rate"])
    bad = window(errors=500, cost=0.0005)
    results = assess(bad, bad, policy, dark_launch=False)
    by_gate = {r.gate: r for r in results}
    assert by_gate["max_error_rate"].verdict is Verdict.FAIL
    assert by_gate["max_error_rate"].dry_run and by_gate["max_error_rate"].as_dict()["dry_run"]
    assert not by_gate["max_kl"].dry_run
    judged = judge(results, 100.0, 5, policy, is_last_step=False, paused=False)
    assert judged.action is Action.ADVANCE  # the failing gate is a dry run: the others pass
    undecided = Policy(min_requests=100, bake_seconds=0, gates=ALL_GATES)
    assert judge(assess(bad, bad, undecided, False), 100.0, 5,
                 undecided, is_last_step=False, paused=False).action is Action.ROLLBACK  # fmt: skip


@pytest.mark.parametrize(
    ("dry_run", "message"),
    [(["max_kl"], "max_kl is not a configured gate"), (["max_error_rate"], "at least one gate")],
)
def test_a_dry_run_names_configured_gates_and_leaves_one_deciding(
    dry_run: list[str], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        Policy(gates=Gates(max_error_rate=0.01), dry_run=dry_run)


def test_dry_run_gates_spend_none_of_the_steps_error() -> None:
    from controller.analysis import Levels

    policy = Policy(gates=ALL_GATES, confidence=0.95)
    # Six gates with intervals (cost is measured): the accuracy drop, on labels, fails at half of
    # 0.05; the five others split the other half.
    assert Levels.of(policy, "max_accuracy_drop").fail_alpha == pytest.approx(0.05 / 2)
    assert Levels.of(policy, "max_kl").fail_alpha == pytest.approx(0.05 / 2 / 5)
    assert Levels.of(policy, "max_kl").pass_alpha == pytest.approx(0.05)
    dry = Policy(gates=ALL_GATES, confidence=0.95, dry_run=["max_kl", "min_agreement"])
    assert Levels.of(dry, "max_error_rate").fail_alpha == pytest.approx(0.05 / 2 / 3)
    # a dry-run gate is judged at the share it would have if it decided, and spends none of it
    assert Levels.of(dry, "max_kl").fail_alpha == pytest.approx(0.05 / 2 / 4)
    only_drop = Policy(gates=Gates(max_accuracy_drop=0.01, max_kl=0.1), dry_run=["max_kl"])
    assert Levels.of(only_drop, "max_kl").fail_alpha == pytest.approx(0.05 / 2)
    assert Levels.of(only_drop, "max_accuracy_drop").fail_alpha == pytest.approx(0.05)


def test_the_gates_on_labels_share_half_the_fail_side_the_others_the_other_half() -> None:
    """Weighted Bonferroni: every gate's fail share sums to the step's alpha, whatever mix of
    gates the policy has; without gates of both kinds the split is even."""
    from controller.analysis import Levels

    both = Policy(gates=Gates(max_accuracy_drop=0.01, max_class_accuracy_drop=0.05,
                              max_error_rate=0.01), confidence=0.9)  # fmt: skip
    shares = {g: Levels.of(both, g).fail_alpha for g in both.gates.configured()}
    assert shares == pytest.approx({"max_accuracy_drop": 0.025, "max_class_accuracy_drop": 0.025,
                                    "max_error_rate": 0.05})  # fmt: skip
    assert sum(shares.values()) == pytest.approx(0.1)
    only_labels = Policy(gates=Gates(max_accuracy_drop=0.01), confidence=0.9)
    assert Levels.of(only_labels, "max_accuracy_drop").fail_alpha == pytest.approx(0.1)
    no_labels = Policy(gates=Gates(max_error_rate=0.01, max_kl=0.1), confidence=0.9)
    assert Levels.of(no_labels, "max_kl").fail_alpha == pytest.approx(0.05)


def test_a_slower_student_fails_the_ratio_gate_on_its_median_when_the_teachers_tail_is_noise() -> (
    None
):
    """The teacher's tail is stalls (a busy gateway): at p99 it is slower than a student 7x
    slower at its median; the gate fails on the median and says so."""
    teacher = [(0.001, 4900.0), (0.002, 4900.0), (0.004, 4900.0), (0.008, 4900.0),
               (0.016, 4900.0), (0.032, 5000.0), (math.inf, 5000.0)]  # fmt: skip
    student = latency(5000, 0.008)  # everything in (4, 8] ms: a median of 6 ms vs 0.5 ms
    step = replace(window(), teacher=replace(window().teacher, latency=teacher),
                   student=replace(window().student, latency=student))  # fmt: skip
    policy = Policy(min_requests=100, gates=Gates(max_latency_ratio=2))
    (result,) = assess(step, step, policy, dark_launch=False)
    assert result.verdict is Verdict.FAIL
    assert "at p50" in result.reason and result.low > 2


def test_a_dark_launch_splits_the_fail_side_over_the_gates_that_can_fail_there() -> None:
    """Error rate, accuracy drop and cost are skipped at share 0: they cannot fail there, so
    the fail side's 5 % is split over the four gates shadow traffic answers, not six."""
    from controller.analysis import Levels

    policy = Policy(gates=ALL_GATES, confidence=0.95)
    assert Levels.of(policy, "max_kl", dark_launch=True).fail_alpha == pytest.approx(0.05 / 4)
    assert Levels.of(policy, "max_kl", dark_launch=True).pass_alpha == pytest.approx(0.05)


def test_a_drop_whose_pairs_all_lean_one_way_fails_at_the_first_look_that_can_tell() -> None:
    """A student 3 points worse with a tenth of the labels, at a 25 % step's first look with
    enough requests: 16 of 540 pairs the teacher's alone, none the student's, under six gates
    with intervals. The drop's fail end is the betting sequence at half the step's 5 % (the
    gates on labels share half): 0.0112, above a 0.01 threshold. Tango's interval at this
    policy's ``min_requests`` (100) could not tell at a sixth of it (0.0046), nor at half of it
    (0.0091)."""
    gates = ALL_GATES.model_copy(update={"max_accuracy_drop": 0.01})
    policy = Policy(min_requests=100, gates=gates)
    pairs = PairedLabels(both_correct=508, teacher_only=16, student_only=0, both_wrong=16)
    step = replace(window(requests=3000, correct=2900), paired=pairs)
    step = replace(step, student=replace(step.student, feedback_total=270, feedback_correct=262))
    results = {r.gate: r for r in assess(step, step, policy, dark_launch=False)}
    result = results["max_accuracy_drop"]
    assert result.verdict is Verdict.FAIL and "paired" in result.reason
    assert result.low > 0.01

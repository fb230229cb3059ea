"""Decision quality as a regression test: the shipped production policy, through the
controller's own analysis and decisions, on simulated rollouts at a 5 % step with realistic
traffic (60 req/s over the fleet: three gateways at 20 req/s). A change to the statistics that
makes it roll back good students, pass bad ones, or decide on too little data fails here."""

from __future__ import annotations

from dataclasses import replace

import pytest

from controller.cli import PRODUCTION_POLICY
from controller.policy import load_policy
from controller.simulation.runner import Summary, run_scenarios
from controller.simulation.scenarios import Scenario

# 1,500 rollouts in worker processes (about 9 s): CI's run and `make test`'s, not the inner loop's
pytestmark = pytest.mark.e2e

RUNS = 300
POLICY = load_policy(PRODUCTION_POLICY)
GOOD = Scenario("good", "promote", share=0.05)
BAD = [
    Scenario("3 points worse", "rollback", share=0.05, accuracy_drop=0.03, agreement=0.97),
    Scenario("p99 2x", "rollback", share=0.05, p99_ratio=2.0),
]
# Labels on one request in ten: the gates on labels are the ones still waiting for evidence.
SPARSE_LABELS = Scenario("3 points worse, 10 % labelled", "rollback", share=0.25,
                         accuracy_drop=0.03, agreement=0.97, label_fraction=0.1)  # fmt: skip


@pytest.fixture(scope="module")
def results() -> dict[str, Summary]:
    scenarios = [GOOD, *BAD, SPARSE_LABELS,
                 replace(GOOD, name="no traffic at all", requests_per_second=0.0)]  # fmt: skip
    summaries = run_scenarios(scenarios, POLICY, RUNS, seed=2026, judges=("controller",),
                              workers=2)  # fmt: skip
    return {summary.scenario: summary for summary in summaries}


def test_a_good_student_is_falsely_rolled_back_in_under_1_percent(
    results: dict[str, Summary],
) -> None:
    good = results["good"]
    assert good.false_rollback_rate is not None and good.false_rollback_rate < 0.01
    assert good.inconclusive_rate < 0.01


@pytest.mark.parametrize("scenario", [s.name for s in BAD])
def test_a_bad_student_is_rolled_back_within_two_intervals_of_having_enough_data(
    results: dict[str, Summary], scenario: str
) -> None:
    bad = results[scenario]
    assert bad.rolled_back_rate >= 0.99
    assert bad.max_intervals_after_enough is not None and bad.max_intervals_after_enough <= 2


def test_a_worse_student_with_sparse_labels_is_mostly_rolled_back_as_soon_as_one_with_all(
    results: dict[str, Summary],
) -> None:
    """At 25 %, the first look with ``min_requests`` has about 16 pairs of 540 that only the
    teacher got right: the accuracy drop's fail end (the betting sequence, at the half of the
    step's fail side that the gates on labels share) fails there in most rollouts, so the median
    rollback comes two intervals after enough data, as with every request labelled."""
    sparse = results[SPARSE_LABELS.name]
    assert sparse.rolled_back_rate >= 0.99
    assert sparse.median_intervals_after_enough == 2


def test_no_verdict_on_fewer_requests_than_min_requests(results: dict[str, Summary]) -> None:
    for summary in results.values():
        if summary.min_samples_at_decision is not None:
            assert summary.min_samples_at_decision >= POLICY.min_requests


def test_no_traffic_never_passes(results: dict[str, Summary]) -> None:
    assert results["no traffic at all"].promoted_rate == 0


AT_THRESHOLD_RUNS = 200
# One gate at a time, its step half an hour long: a student exactly at the threshold is promoted at
# most 1 - confidence of the time (plus three Monte Carlo standard errors); fixed 1.96 intervals
# promoted 10-12 % here.
ONE_GATE = {"max_error_rate": 0.001, "max_accuracy_drop": 0.01, "min_agreement": 0.97,
            "max_latency_ratio": 1.2}  # fmt: skip


@pytest.mark.parametrize("gate", list(ONE_GATE))  # 800 rollouts a gate
def test_a_student_at_a_gates_threshold_is_promoted_at_most_1_minus_confidence(gate: str) -> None:
    from controller.policy import Gates, Policy
    from controller.simulation.scenarios import at_threshold_scenarios

    threshold = {gate: ONE_GATE[gate]}
    policy = Policy(bake_seconds=300, interval_seconds=60, min_requests=1000,
                    max_step_seconds=1800, gates=Gates(**threshold))  # fmt: skip
    scenarios = at_threshold_scenarios(threshold, (0.05, 0.25))  # both shares, one process each
    summaries = run_scenarios(scenarios, policy, AT_THRESHOLD_RUNS, seed=29,
                              judges=("controller",), workers=2)  # fmt: skip
    slack = 3 * (0.05 * 0.95 / AT_THRESHOLD_RUNS) ** 0.5
    for summary in summaries:
        assert summary.promoted_rate <= 0.05 + slack, (summary.share, summary.promoted_rate)


@pytest.mark.parametrize(
    "scenario",
    [
        Scenario("7x, noisy teacher", "rollback", p99_ratio=7.0, teacher_stall_rate=0.05),
        Scenario("2x, noisy teacher", "rollback", p99_ratio=2.0, teacher_stall_rate=0.05),
        Scenario("2x, last step", "rollback", share=1.0, p99_ratio=2.0, last_step=True),
    ],
    ids=lambda s: s.name,
)
def test_slower_students_are_rolled_back_on_latency_within_two_intervals_of_enough_data(
    scenario: Scenario,
) -> None:
    """A teacher whose tail is stalls makes a 2x slower student look faster at p99: the ratio's
    median decides. At the last step the teacher's reference is the rollout's earlier steps."""
    from controller.policy import Gates, Policy

    policy = Policy(bake_seconds=300, interval_seconds=60, min_requests=300,
                    max_step_seconds=1800, failure_limit=2,
                    gates=Gates(max_latency_ratio=1.2))  # fmt: skip
    (summary,) = run_scenarios([scenario], policy, 100, seed=7, judges=("controller",))
    assert summary.rolled_back_rate == 1.0
    assert summary.max_intervals_after_enough is not None
    assert summary.max_intervals_after_enough <= 2


@pytest.mark.parametrize(
    "scenario",
    [Scenario("good, noisy teacher", "promote", teacher_stall_rate=0.05),
     Scenario("good, last step", "promote", share=1.0, last_step=True)],
    ids=lambda s: s.name,
)  # fmt: skip
def test_a_good_student_passes_the_latency_gate_beside_a_noisy_teacher_and_at_the_last_step(
    scenario: Scenario,
) -> None:
    from controller.policy import Gates, Policy

    policy = Policy(bake_seconds=300, interval_seconds=60, min_requests=300,
                    max_step_seconds=3600, gates=Gates(max_latency_ratio=1.2))  # fmt: skip
    (summary,) = run_scenarios([scenario], policy, 100, seed=8, judges=("controller",))
    assert summary.promoted_rate >= 0.99

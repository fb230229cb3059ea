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

RUNS = 300
POLICY = load_policy(PRODUCTION_POLICY)
GOOD = Scenario("good", "promote", share=0.05)
BAD = [
    Scenario("3 points worse", "rollback", share=0.05, accuracy_drop=0.03, agreement=0.97),
    Scenario("p99 2x", "rollback", share=0.05, p99_ratio=2.0),
]


@pytest.fixture(scope="module")
def results() -> dict[str, Summary]:
    scenarios = [GOOD, *BAD, replace(GOOD, name="no traffic at all", requests_per_second=0.0)]
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


def test_no_verdict_on_fewer_requests_than_min_requests(results: dict[str, Summary]) -> None:
    for summary in results.values():
        if summary.min_samples_at_decision is not None:
            assert summary.min_samples_at_decision >= POLICY.min_requests


def test_no_traffic_never_passes(results: dict[str, Summary]) -> None:
    assert results["no traffic at all"].promoted_rate == 0

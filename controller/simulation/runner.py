"""Runs scenarios through the judges and sums up how often each decided right, and how fast."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass

import numpy as np

from controller.policy import Policy
from controller.simulation.judges import JUDGES, Decision
from controller.simulation.scenarios import Scenario
from controller.simulation.traffic import draw


@dataclass(frozen=True)
class Summary:
    """One scenario under one judge: the JSON row ``distill-canary simulate`` writes."""

    judge: str
    scenario: str
    expected: str
    share: float
    requests_per_second: float
    accuracy_drop: float
    agreement: float
    p99_ratio: float
    error_rate: float
    label_fraction: float
    label_delay_seconds: float
    gap_intervals: int
    runs: int
    promoted_rate: float
    rolled_back_rate: float  # a gate failed
    inconclusive_rate: float  # the step's deadline passed without a verdict
    right_decision_rate: float  # promoted when it should be; not promoted when it should not
    false_rollback_rate: float | None  # a good student not promoted (None for a bad one)
    miss_rate: float | None  # a bad student promoted (None for a good one)
    median_time_to_decision_s: float
    p95_time_to_decision_s: float
    min_samples_at_decision: float | None  # student requests behind a verdict (not a timeout)
    median_intervals_after_enough: float | None  # rollbacks: intervals after min_requests
    max_intervals_after_enough: float | None

    def as_dict(self) -> dict[str, object]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


def simulate_step(scenario: Scenario, policy: Policy, judges: Iterable[str],
                  rng: np.random.Generator) -> dict[str, Decision]:  # fmt: skip
    """One run: the same drawn traffic, judged by each judge until it decides or time runs out."""
    intervals = math.floor(policy.max_step_seconds / policy.interval_seconds) + 1
    traffic = draw(scenario, intervals, policy.interval_seconds, rng)
    decisions = {}
    for name in judges:
        judge = JUDGES[name](policy)
        decision = None
        for analysed in range(1, intervals + 1):
            decision = judge.analyse(traffic, analysed)
            if decision is not None:
                break
        decisions[name] = decision or Decision(
            "inconclusive", intervals * policy.interval_seconds,
            float(traffic.student.requests.sum()), None,
        )  # fmt: skip
    return decisions


def run_scenario(scenario: Scenario, index: int, policy: Policy, runs: int, seed: int,
                 judges: tuple[str, ...] = tuple(JUDGES)) -> list[Summary]:  # fmt: skip
    """``runs`` runs of one scenario; seeded by (seed, index), so it draws the same numbers
    whichever process runs it."""
    rng = np.random.default_rng([seed, index])
    decided: dict[str, list[Decision]] = {name: [] for name in judges}
    for _ in range(runs):
        for name, decision in simulate_step(scenario, policy, judges, rng).items():
            decided[name].append(decision)
    return [_summarize(scenario, name, decisions, policy) for name, decisions in decided.items()]


def run_scenarios(
    scenarios: list[Scenario],
    policy: Policy,
    runs: int,
    seed: int,
    judges: tuple[str, ...] = tuple(JUDGES),
    workers: int = 1,
    progress: Callable[[], None] | None = None,
) -> list[Summary]:
    """Every scenario, across ``workers`` processes; the results in the scenarios' order."""
    jobs = [(scenario, index, policy, runs, seed, judges) for index, scenario in
            enumerate(scenarios)]  # fmt: skip
    results: dict[int, list[Summary]] = {}
    if workers <= 1:
        for job in jobs:
            results[job[1]] = run_scenario(*job)
            if progress is not None:
                progress()
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = {pool.submit(run_scenario, *job): job[1] for job in jobs}
            for future in as_completed(futures):
                results[futures[future]] = future.result()
                if progress is not None:
                    progress()
    return [summary for index in sorted(results) for summary in results[index]]


def _summarize(scenario: Scenario, judge: str, decisions: list[Decision],
               policy: Policy) -> Summary:  # fmt: skip
    runs = len(decisions)

    def rate(outcome: str) -> float:
        return sum(d.outcome == outcome for d in decisions) / runs

    promoted = rate("promoted")
    good = scenario.expected == "promote"
    times = np.array([d.seconds for d in decisions])
    verdicts = [d.samples for d in decisions if d.outcome != "inconclusive"]
    after_enough = [
        (d.seconds - d.enough_at) / policy.interval_seconds
        for d in decisions
        if d.outcome == "rolled_back" and d.enough_at is not None
    ]
    return Summary(
        judge=judge, scenario=scenario.name, expected=scenario.expected, share=scenario.share,
        requests_per_second=scenario.requests_per_second,
        accuracy_drop=scenario.accuracy_drop, agreement=scenario.agreement,
        p99_ratio=scenario.p99_ratio, error_rate=scenario.error_rate,
        label_fraction=scenario.label_fraction,
        label_delay_seconds=scenario.label_delay_seconds, gap_intervals=scenario.gap_intervals,
        runs=runs, promoted_rate=promoted, rolled_back_rate=rate("rolled_back"),
        inconclusive_rate=rate("inconclusive"),
        right_decision_rate=promoted if good else 1.0 - promoted,
        false_rollback_rate=1.0 - promoted if good else None,
        miss_rate=None if good else promoted,
        median_time_to_decision_s=float(np.median(times)),
        p95_time_to_decision_s=float(np.percentile(times, 95)),
        min_samples_at_decision=min(verdicts) if verdicts else None,
        median_intervals_after_enough=float(np.median(after_enough)) if after_enough else None,
        max_intervals_after_enough=max(after_enough) if after_enough else None,
    )  # fmt: skip

"""``distill-canary simulate``: the simulated traffic is what gateways would export, and the
command writes what it promises."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from controller.cli import PRODUCTION_POLICY, app
from controller.policy import Gates, Policy, load_policy
from controller.simulation.report import at_threshold_table, before_after_table, markdown_table
from controller.simulation.runner import run_scenarios
from controller.simulation.scenarios import Scenario, simulated_scenarios, standard_scenarios
from controller.simulation.traffic import draw

JSON_KEYS = {
    "judge", "share", "accuracy_drop", "agreement", "p99_ratio", "error_rate", "runs",
    "promoted_rate", "rolled_back_rate", "inconclusive_rate", "median_time_to_decision_s",
    "p95_time_to_decision_s",
}  # fmt: skip


def test_drawn_counts_hold_together_like_a_gateways() -> None:
    scenario = Scenario("bad", "rollback", share=0.25, error_rate=0.05, label_fraction=0.5,
                        agreement=0.9, gap_intervals=2)  # fmt: skip
    traffic = draw(scenario, 40, 10.0, np.random.default_rng(5))
    window = traffic.window(0, 40)
    student, teacher = window.student, window.teacher
    total = student.requests + teacher.requests
    assert student.requests / total == np.clip(student.requests / total, 0.22, 0.28)
    assert student.errors / student.requests == np.clip(student.errors / student.requests,
                                                        0.03, 0.07)  # fmt: skip
    assert window.agreements <= window.comparisons
    assert window.agreements / window.comparisons == np.clip(
        window.agreements / window.comparisons, 0.88, 0.92)  # fmt: skip
    # Every call lands in one latency bucket: live ones, the teacher's for a student's failure
    # (a fallback), and shadow ones.
    calls = total + student.errors + window.comparisons
    assert student.latency[-1][1] + teacher.latency[-1][1] == calls
    assert window.kl_count == window.comparisons
    assert student.feedback_total <= student.requests - student.errors
    # The gap: no request in the second and third intervals.
    assert traffic.window(1, 3).student.requests + traffic.window(1, 3).teacher.requests == 0


def test_late_labels_arrive_whole_intervals_later() -> None:
    late = Scenario("late", "promote", label_delay_seconds=30.0)
    traffic = draw(late, 10, 10.0, np.random.default_rng(1))
    assert traffic.window(0, 3).teacher.feedback_total == 0
    assert traffic.window(3, 10).teacher.feedback_total > 0


def test_the_same_seed_gives_the_same_results_in_one_process_or_several() -> None:
    policy = Policy(bake_seconds=60, interval_seconds=10, min_requests=50, max_step_seconds=300,
                    gates=Gates(max_error_rate=0.05, min_agreement=0.9))  # fmt: skip
    scenarios = [replace(s, requests_per_second=20.0) for s in standard_scenarios((0.25,))[:3]]
    alone = run_scenarios(scenarios, policy, runs=5, seed=3, workers=1)
    pooled = run_scenarios(scenarios, policy, runs=5, seed=3, workers=2)
    assert [s.as_dict() for s in alone] == [s.as_dict() for s in pooled]


def test_simulate_writes_a_row_per_scenario_and_judge(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("bake_seconds: 60\ninterval_seconds: 10\nmin_requests: 50\n"
                      "max_step_seconds: 300\ngates: {max_error_rate: 0.02, min_agreement: 0.95,"
                      " max_accuracy_drop: 0.03}\n")  # fmt: skip
    out, png = tmp_path / "simulation.json", tmp_path / "power.png"
    result = CliRunner().invoke(app, ["simulate", "--policy", str(policy), "--runs", "3",
                                      "--share", "0.25", "--workers", "1", "--json", str(out),
                                      "--png", str(png)])  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = json.loads(out.read_text())
    scenarios = simulated_scenarios(load_policy(policy).gates.configured(), (0.25,))
    assert len(rows) == 3 * len(scenarios)
    assert {row["judge"] for row in rows} == {"controller", "threshold", "mann_whitney"}
    for row in rows:
        assert row.keys() >= JSON_KEYS
        rates = row["promoted_rate"] + row["rolled_back_rate"] + row["inconclusive_rate"]
        assert abs(rates - 1.0) < 1e-9
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_simulate_refuses_a_share_outside_0_to_1(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["simulate", "--share", "5"])
    assert result.exit_code == 2
    assert "--share" in result.output


def test_the_readme_shows_the_committed_simulation() -> None:
    root = Path(__file__).resolve().parents[2]
    rows = json.loads((root / "tests/benchmarks/results/simulation.json").read_text())
    readme = (root / "docs" / "simulation.md").read_text()
    assert markdown_table(rows) in readme
    before = json.loads((root / "tests/benchmarks/results/simulation.before.json").read_text())
    assert before_after_table(before, rows) in readme
    assert at_threshold_table(rows) in readme
    alone = json.loads((root / "tests/benchmarks/results/simulation.at_threshold.json").read_text())
    assert len(alone) == 12 and min(row["runs"] for row in alone) >= 500
    assert at_threshold_table(alone) in readme
    production = load_policy(PRODUCTION_POLICY).gates.configured()
    assert len(rows) == 3 * len(simulated_scenarios(production))


def test_the_other_judges_behave_as_their_models_do() -> None:
    """Flagger-style: no data is a failed check, so a traffic gap rolls back. Kayenta-style on
    latency alone: blind to a student that is only less accurate, sure of one twice as slow."""
    policy = Policy(bake_seconds=120, interval_seconds=10, min_requests=100,
                    max_step_seconds=600, gates=Gates(max_error_rate=0.05, min_agreement=0.9,
                                                      max_accuracy_drop=0.03))  # fmt: skip
    scenarios = [
        Scenario("gap", "promote", share=0.25, gap_intervals=2),
        Scenario("inaccurate", "rollback", share=0.25, accuracy_drop=0.10, agreement=0.9),
        Scenario("slow", "rollback", share=0.25, p99_ratio=2.0),
    ]
    rows = {(s.scenario, s.judge): s for s in run_scenarios(scenarios, policy, runs=20, seed=4)}
    assert rows[("gap", "threshold")].rolled_back_rate == 1.0
    assert rows[("gap", "controller")].promoted_rate == 1.0
    assert rows[("inaccurate", "mann_whitney")].promoted_rate >= 0.7
    assert rows[("inaccurate", "controller")].rolled_back_rate == 1.0
    assert rows[("slow", "mann_whitney")].rolled_back_rate == 1.0


def test_a_dark_launch_sends_the_student_shadow_calls_only_and_judges_what_they_answer() -> None:
    """Share 0: no live student request; the student's calls are the mirrored shadow ones (all
    timed and compared); the controller judges agreement, KL and latency and skips the rest, so
    a good student passes on comparisons alone and a disagreeing or slow one is rolled back."""
    dark = Scenario("dark", "promote", share=0.0, requests_per_second=20.0)
    traffic = draw(dark, 30, 10.0, np.random.default_rng(2))
    window = traffic.window(0, 30)
    assert traffic.dark_launch and window.student.requests == 0
    assert window.student.latency[-1][1] == window.comparisons > 0
    assert traffic.volume(30) == window.comparisons
    policy = Policy(bake_seconds=60, interval_seconds=10, min_requests=100, max_step_seconds=300,
                    gates=Gates(max_error_rate=0.01, min_agreement=0.9, max_accuracy_drop=0.02,
                                max_latency_ratio=1.5))  # fmt: skip
    scenarios = [dark, replace(dark, name="disagrees", expected="rollback", agreement=0.8),
                 replace(dark, name="slow", expected="rollback", p99_ratio=3.0)]  # fmt: skip
    rows = {(s.scenario, s.judge): s for s in run_scenarios(scenarios, policy, runs=10, seed=6)}
    assert rows[("dark", "controller")].promoted_rate == 1.0
    # The threshold judge skips what shadow traffic cannot answer too: judged on the live-only
    # gates' missing data it would fail every check and promote none.
    assert rows[("dark", "threshold")].promoted_rate >= 0.8
    assert rows[("disagrees", "controller")].rolled_back_rate == 1.0
    assert rows[("slow", "controller")].rolled_back_rate == 1.0


def test_simulate_runs_dark_launches_only_for_a_policy_that_can_judge_one() -> None:
    shadow = {"min_agreement": 0.97, "max_error_rate": 0.001}
    names = [s.name for s in simulated_scenarios(shadow) if s.share == 0]
    assert names and all(name.endswith("(dark launch)") for name in names)
    assert not [s for s in simulated_scenarios({"max_error_rate": 0.001}) if s.share == 0]

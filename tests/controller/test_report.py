"""The rollout report tells a rolled-back rollout's story: pauses, controller downtime, early
analyses, thresholds and the policy, on one time axis."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.report import (
    downtime_spans,
    gate_history,
    pause_spans,
    render,
    write_report,
)
from controller.rollout_store import DecisionRecord, Phase, Record, RolloutState

POLICY = {"steps": [5, 25, 100], "min_requests": 100, "gates": {"min_agreement": 0.9}}


def _analysis(at: float, agreement: float, requests: float) -> DecisionRecord:
    early = requests < POLICY["min_requests"]  # type: ignore[operator]
    gate = {"gate": "min_agreement", "verdict": "inconclusive" if early else "fail",
            "value": agreement, "low": agreement - 0.05, "high": agreement + 0.05,
            "threshold": 0.9, "samples": requests,
            "reason": f"{requests:.0f} of 100 student requests" if early else "below"}  # fmt: skip
    return DecisionRecord(at, 0, 0.05, Record.HOLD, "analysis", [gate],
                          {"agreement": agreement, "student": {"requests": requests}})  # fmt: skip


LAST_ANALYSIS: list[dict[str, object]] = [
    {"gate": "min_agreement", "verdict": "fail", "value": 0.55, "low": 0.5, "high": 0.6,
     "threshold": 0.9, "samples": 300.0, "reason": "interval below"},
    {"gate": "max_latency_ms", "verdict": "pass", "value": 3.2, "low": 2.9, "high": 3.6,
     "threshold": 50.0, "samples": 300.0, "reason": "interval below"},
]  # fmt: skip


def rolled_back_rollout() -> RolloutState:
    history = [
        DecisionRecord(100.0, 0, 0.0, Record.STARTED, "controller a started rollout 3"),
        DecisionRecord(101.0, 0, 0.05, Record.SET, "every gateway (1) confirmed share 5%"),
        _analysis(105.0, 0.5, 40),
        DecisionRecord(110.0, 0, 0.05, Record.PAUSE, "paused by an operator (sre@host)"),
        _analysis(115.0, 0.6, 150),
        DecisionRecord(
            130.0, 0, 0.05, Record.RESUMED, "controller b resumed the rollout (after a)"
        ),
        DecisionRecord(140.0, 0, 0.05, Record.RESUME, "resumed by an operator (sre@host)"),
        _analysis(150.0, 0.55, 300),
        DecisionRecord(
            151.0, 0, 0.0, Record.ROLLED_BACK, "min_agreement failed 2 analyses in a row"
        ),
    ]
    return RolloutState(
        phase=Phase.ROLLED_BACK, steps=[5, 25, 100], started_at=100.0, history=history,
        rollback_reason="min_agreement failed 2 analyses in a row", rollout_id=3,
        policy=POLICY, ended_at=151.0, last_analysis=LAST_ANALYSIS,
    )  # fmt: skip


def test_pauses_and_controller_downtime_are_found_in_the_history() -> None:
    state = rolled_back_rollout()
    assert pause_spans(state) == [(10.0, 40.0)]
    assert downtime_spans(state) == [(15.0, 30.0)]  # last decision before the restart -> resume


def test_a_rolled_back_rollout_renders_with_its_policy_and_decisions(tmp_path: Path) -> None:
    state = rolled_back_rollout()
    out = tmp_path / "report.html"
    write_report(state, out)  # render's page, written (rendered once: six charts take a second)
    page = out.read_text()
    assert "Rollout report: rollout 3" in page
    assert "Outcome:</b> RolledBack: min_agreement failed 2 analyses in a row" in page
    assert "min_requests: 100" in page and "min_agreement: 0.9" in page  # the policy, printed
    assert "lasted</b> 51 s" in page
    for action in ("pause", "resumed", "resume", "rolled back"):
        assert f"<td>{action}</td>" in page
    assert page.count("data:image/png;base64,") == 6  # five charts and one per judged gate
    assert "Gate min_agreement: what the judge saw" in page
    # the last analysis, gate by gate, with units
    assert "<td>max_latency_ms</td><td>pass</td><td>3.2 ms</td><td>[2.9 ms, 3.6 ms]</td>" in page
    assert "<td>min_agreement</td><td>fail</td><td>0.55</td><td>[0.5, 0.6]</td><td>0.9</td>" in page


def test_the_report_compares_teacher_and_student_over_the_rollout() -> None:
    state = rolled_back_rollout()
    pooled = {
        "teacher": {"accuracy": 0.975, "p50_ms": 1.2, "p99_ms": 2.5, "cost_per_1k": 0.00084,
                    "cpu_ms_per_request": 0.30},
        "student": {"accuracy": 0.95, "p50_ms": 0.9, "p99_ms": 2.0, "cost_per_1k": 0.00002,
                    "cpu_ms_per_request": 0.06},
    }  # fmt: skip
    state.history[-2].observations["rollout"] = pooled
    page = render(state)
    table = page.split('<table id="comparison">')[1].split("</table>")[0]
    assert "<td>accuracy</td><td>97.5%</td><td>95.0%</td><td>0.97</td>" in table
    assert "<td>p99 latency (ms)</td><td>2.50</td><td>2.00</td><td>0.80</td>" in table
    assert "<td>CPU per request (ms)</td><td>0.300</td><td>0.060</td><td>0.20</td>" in table
    assert "<td>cost per 1,000 requests ($)</td><td>0.00084</td><td>0.00002</td><td>0.02</td>" in (
        table
    )
    assert "no analysis yet" in render(RolloutState(steps=[5, 25, 100], started_at=1.0))


def test_each_gate_shows_its_interval_threshold_samples_and_the_decision_at_every_analysis() -> (
    None
):
    history = gate_history(rolled_back_rollout(), "min_agreement")
    expected = [
        (5.0, 0.5, 0.45, 0.55, 40.0, "inconclusive"),
        (15.0, 0.6, 0.55, 0.65, 150.0, "fail"),
        (50.0, 0.55, 0.5, 0.6, 300.0, "fail"),
    ]
    assert len(history) == len(expected)
    for point, (at, value, low, high, samples, verdict) in zip(history, expected, strict=True):
        assert (point.at, point.value, point.low, point.high, point.samples) == pytest.approx(
            (at, value, low, high, samples))  # fmt: skip
        assert (point.verdict, point.threshold, point.decision) == (verdict, 0.9, "hold")
    assert gate_history(rolled_back_rollout(), "max_kl") == []


def test_status_lines_show_each_gates_interval_over_time_against_its_threshold() -> None:
    from controller.gate_table import interval_history

    analyses = [(r.at, r.gates) for r in rolled_back_rollout().history if r.gates]
    (line,) = interval_history(analyses, last=2)
    assert line.startswith("min_agreement >= 0.9: ")
    cells = line.split(": ", 1)[1].split("  ")
    assert len(cells) == 2  # the latest two of three analyses, oldest first
    assert cells[0].endswith("[0.55, 0.65]x") and cells[1].endswith("[0.5, 0.6]x")


def test_a_dry_run_gate_is_reported_and_marked_and_never_named_as_deciding() -> None:
    from controller.gate_table import deciding, interval_history, row

    state = rolled_back_rollout()
    dry = {**state.history[2].gates[0], "dry_run": True, "verdict": "fail"}
    state.history[2] = DecisionRecord(105.0, 0, 0.05, Record.HOLD, "analysis", [dry])
    assert "Gate min_agreement (dry run: never decides): what the judge saw" in render(state)
    assert row(dry)[1] == "fail (dry run)"
    assert interval_history([(105.0, [dry])], 6)[0].startswith("min_agreement (dry run) >= 0.9")
    passing = {**LAST_ANALYSIS[1]}
    assert deciding([dry, passing]) == "1 gates pass (300 samples)"

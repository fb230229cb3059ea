"""What a running controller prints per decision: one short line with the outcome, why, and the
gates that decided it (the full per-gate table is in `status` and the report)."""

from __future__ import annotations

from controller.progress import decision_line
from controller.rollout_store import DecisionRecord, Record


def _gate(name: str, verdict: str, value: float, threshold: float) -> dict[str, object]:
    return {
        "gate": name,
        "verdict": verdict,
        "value": value,
        "low": value * 0.9,
        "high": value * 1.1,
        "threshold": threshold,
        "samples": 812.0,
        "reason": "why",
    }


PASSING_GATES = [
    _gate("max_latency_ms", "pass", 3.1, 50.0), _gate("max_latency_ratio", "pass", 0.4, 1.0),
    _gate("max_error_rate", "pass", 0.0, 0.01), _gate("max_accuracy_drop", "pass", 0.01, 0.05),
    _gate("max_kl", "pass", 0.02, 0.5), _gate("max_cost_per_1k", "pass", 0.001, 0.01),
]  # fmt: skip


def test_a_failing_gate_is_named_with_its_value_threshold_unit_and_samples() -> None:
    gates = [*PASSING_GATES[:-1], _gate("max_cost_per_1k", "fail", 0.02, 0.01),
             _gate("min_agreement", "fail", 0.71, 0.9)]  # fmt: skip
    record = DecisionRecord(0.0, 1, 0.25, Record.HOLD, "max_cost_per_1k, min_agreement failed "
                            "(1 of 2 before rollback)", gates)  # fmt: skip
    line = decision_line(record, 3)
    assert line.endswith(
        "step 2/3 at 25% hold: max_cost_per_1k, min_agreement failed (1 of 2 before rollback) "
        "[max_cost_per_1k 0.02 $ per 1k > 0.01 $ per 1k; min_agreement 0.71 < 0.9 (812 samples)]"
    )
    assert len(line) < 200


def test_passing_and_undecided_analyses_say_so_briefly() -> None:
    passed = decision_line(DecisionRecord(0.0, 0, 0.05, Record.ADVANCE, "every gate passes",
                                          PASSING_GATES), 3)  # fmt: skip
    assert passed.endswith("step 1/3 at 5% advance: every gate passes [6 gates pass (812 samples)]")
    pending = [*PASSING_GATES[1:], _gate("max_latency_ms", "inconclusive", 3.1, 50.0)]
    held = decision_line(DecisionRecord(0.0, 0, 0.05, Record.HOLD, "inconclusive: " + "x" * 300,
                                        pending), 3)  # fmt: skip
    assert "..." in held and len(held) < 200
    assert held.endswith("[undecided: max_latency_ms (812 samples)]")


def test_a_decision_without_gates_is_just_the_outcome() -> None:
    line = decision_line(
        DecisionRecord(0.0, 2, 1.0, Record.PROMOTED, "the student serves 100 %"), 3
    )
    assert line.endswith("step 3/3 at 100% promoted: the student serves 100 %")

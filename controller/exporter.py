"""The controller's own Prometheus metrics, so a dashboard shows what it decided and why."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from controller.analysis import GateResult
from controller.state import Phase

ROLLBACK_CAUSES = ("abort", "inconclusive_timeout")


class ControllerMetrics:
    def __init__(self, registry: CollectorRegistry, gates: list[str] | None = None) -> None:
        self.student_share = Gauge(
            "canary_student_share",
            "Student share the controller has set (0..1).",
            registry=registry,
        )
        self.step_index = Gauge(
            "canary_step_index",
            "Index of the current step in the policy's steps.",
            registry=registry,
        )
        self.phase = Gauge(
            "canary_phase",
            "1 for the rollout's current phase, 0 for the others.",
            ["phase"],
            registry=registry,
        )
        self.analysis = Counter(
            "canary_analysis_total", "Gate verdicts.", ["gate", "result"], registry=registry
        )
        self.gate_value = Gauge(
            "canary_gate_value", "Last measured value of each gate.", ["gate"], registry=registry
        )
        self.gate_threshold = Gauge(
            "canary_gate_threshold", "Each gate's threshold.", ["gate"], registry=registry
        )
        self.rollbacks = Counter(
            "canary_rollbacks_total", "Rollbacks, by cause.", ["reason"], registry=registry
        )
        self.promotions = Counter(
            "canary_promotions_total", "Rollouts that ended promoted.", registry=registry
        )
        # Every series exists from the start, so the first rollback is an increase (0 -> 1) and
        # not a new series that increase() cannot see.
        for cause in (*ROLLBACK_CAUSES, *(gates or [])):
            self.rollbacks.labels(cause)

    def show_position(self, phase: Phase, step_index: int, share: float) -> None:
        for each in Phase:
            self.phase.labels(each.value).set(1 if each is phase else 0)
        self.step_index.set(step_index)
        self.student_share.set(share)

    def record_analysis(self, results: list[GateResult]) -> None:
        for result in results:
            self.analysis.labels(result.gate, result.verdict.value).inc()
            self.gate_threshold.labels(result.gate).set(result.threshold)
            self.gate_value.labels(result.gate).set(result.value)

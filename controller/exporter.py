"""The controller's own Prometheus metrics, so a dashboard shows what it decided and why.

Every series carries the policy's ``model``, so one Prometheus can watch rollouts of several
models; ``canary_rollout_info`` names the rollout (its id in the state file).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from controller import gate_metrics as gm
from controller import metric_names as mn
from controller.analysis import GateResult, Verdict
from controller.rollout_store import Phase, RolloutState
from gateway.metrics import add_standard_collectors

ROLLBACK_CAUSES = ("abort", "inconclusive_timeout", "sigterm", "share_unconfirmed",
                   "webhook_pre_rollout", "webhook_rollback")  # fmt: skip
VERDICT_VALUES = {Verdict(name): value for name, value in gm.VERDICT_VALUES.items()}
"""``canary_gate_verdict`` (skipped gates are not exported)."""


class ControllerMetrics:
    def __init__(
        self, registry: CollectorRegistry, model: str = "", gates: list[str] | None = None
    ) -> None:
        self.model = model
        add_standard_collectors(registry)

        def gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> Gauge:
            return Gauge(name, doc, ["model", *labels], registry=registry)

        self.student_share = gauge(mn.STUDENT_SHARE, "Student share the controller set.")
        self.step_index = gauge(mn.STEP_INDEX, "Index of the current step in the policy.")
        self.phase = gauge(mn.PHASE, "1 for the rollout's current phase.", ("phase",))
        self.rollout_info = gauge(
            mn.ROLLOUT_INFO,
            "1 for the rollout in hand; student_id and student are the registry id and name of "
            "the student it rolls out (its name says its recipe: mlp32-t4-a0.8 is T=4, alpha "
            "0.8), '' when the rollout named none.",
            ("rollout", "student_id", "student"),
        )
        self.last_tick = gauge(mn.LAST_TICK, "When the controller last renewed its lease.")
        self.bake_elapsed = gauge(mn.BAKE_ELAPSED, "Time since this step's share was confirmed.")
        self.consecutive_failures = gauge(
            mn.CONSECUTIVE_FAILURES, "Failed analyses in a row at this step."
        )
        self.gate_value = gauge(
            gm.GATE_VALUE,
            "Each gate's last estimate and its confidence sequence's bounds (bound: lower, "
            "estimate, upper).",
            ("gate", gm.BOUND_LABEL),
        )
        self.gate_threshold = gauge(gm.GATE_THRESHOLD, "Each gate's threshold.", ("gate",))
        self.gate_verdict = gauge(
            gm.GATE_VERDICT, "Last verdict: 1 pass, 0 inconclusive, -1 fail.", ("gate",)
        )
        self.gate_dry_run = gauge(
            gm.GATE_DRY_RUN, "1 for a dry-run gate: measured, never decides.", ("gate",)
        )
        self.analysis = Counter(
            mn.ANALYSIS, "Gate verdicts.", ["model", "gate", "result"],
            registry=registry,
        )  # fmt: skip
        self.rollbacks = Counter(
            mn.ROLLBACKS, "Rollbacks, by cause.", ["model", "reason"], registry=registry
        )
        self.promotions = Counter(
            mn.PROMOTIONS, "Rollouts that ended promoted.", ["model"], registry=registry
        ).labels(model)
        self.share_drift = Counter(
            mn.SHARE_DRIFT,
            "Times a gateway reported a share or generation the controller had not set.",
            ["model"],
            registry=registry,
        ).labels(model)
        self.notifications = Counter(
            mn.NOTIFICATIONS,
            "Rollout events per receiver, by outcome: delivered, retried (each retry), failed "
            "(every attempt spent), rejected (a 4xx), dropped (its queue was full).",
            ["model", "receiver", "outcome"],
            registry=registry,
        )
        # Every series exists from the start, so the first rollback is an increase (0 -> 1) and
        # not a new series that increase() cannot see.
        for cause in (*ROLLBACK_CAUSES, *(gates or [])):
            self.rollbacks.labels(model, cause)
        # the post-promotion watch's (controller.watch); series made by ``add_watch``
        self.watch_looks = Counter(
            mn.WATCH_LOOKS, "The watch's looks, by outcome.", ["model", "outcome"],
            registry=registry,
        )  # fmt: skip
        self.watch_verdicts = Counter(
            mn.WATCH_VERDICTS, "The watch's check verdicts, by check and result.",
            ["model", "gate", "result"], registry=registry,
        )  # fmt: skip
        self.watch_window_started = gauge(
            mn.WATCH_WINDOW_STARTED, "When the watch's current window started."
        )
        self.watch_shadow_rate = gauge(
            mn.WATCH_SHADOW_SAMPLE_RATE,
            "The shadow sample rate the watch set on the gateways (-1: not set on every one).",
        )

    def add_receivers(self, names: list[str], outcomes: tuple[str, ...]) -> None:
        """Every receiver's outcomes start at 0, so the first drop is an increase."""
        for name in names:
            for outcome in outcomes:
                self.notifications.labels(self.model, name, outcome)

    def add_watch(self, outcomes: list[str], checks: list[str]) -> None:
        """The watch's series at 0 from the start, so its first alert is an increase."""
        for outcome in outcomes:
            self.watch_looks.labels(self.model, outcome)
        for check in checks:
            for verdict in Verdict:
                self.watch_verdicts.labels(self.model, check, verdict.value)
        self.watch_shadow_rate.labels(self.model).set(-1.0)

    def watch_looked(self, outcome: str, results: list[GateResult]) -> None:
        self.watch_looks.labels(self.model, outcome).inc()
        for result in results:
            self.watch_verdicts.labels(self.model, result.gate, result.verdict.value).inc()

    def watch_window(self, started: float) -> None:
        self.watch_window_started.labels(self.model).set(started)

    def watch_shadow(self, rate: float) -> None:
        self.watch_shadow_rate.labels(self.model).set(rate)

    def notified(self, receiver: str, outcome: str) -> None:
        self.notifications.labels(self.model, receiver, outcome).inc()

    def rolled_back(self, cause: str) -> None:
        self.rollbacks.labels(self.model, cause).inc()

    def heartbeat(self, now: float) -> None:
        self.last_tick.labels(self.model).set(now)

    def show_position(self, state: RolloutState, bake_elapsed: float) -> None:
        model = self.model
        for each in Phase:
            self.phase.labels(model, each.value).set(1 if each is state.phase else 0)
        student = state.student or {"id": "", "name": ""}
        self.rollout_info.labels(model, str(state.rollout_id), student["id"], student["name"]).set(
            1
        )
        self.step_index.labels(model).set(state.step_index)
        self.student_share.labels(model).set(state.share)
        self.bake_elapsed.labels(model).set(bake_elapsed)
        self.consecutive_failures.labels(model).set(state.consecutive_failures)

    def record_analysis(self, results: list[GateResult]) -> None:
        for result in results:
            self.analysis.labels(self.model, result.gate, result.verdict.value).inc()
            if result.verdict not in VERDICT_VALUES:
                continue
            gate = (self.model, result.gate)
            self.gate_threshold.labels(*gate).set(result.threshold)
            for bound, value in zip(gm.BOUNDS, (result.low, result.value, result.high),
                                    strict=True):  # fmt: skip
                self.gate_value.labels(*gate, bound).set(value)
            self.gate_dry_run.labels(*gate).set(1.0 if result.dry_run else 0.0)
            self.gate_verdict.labels(*gate).set(VERDICT_VALUES[result.verdict])

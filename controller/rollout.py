"""The canary controller: one ``tick()`` made of small steps, run every analysis interval.

tick: take operators' commands -> enter the step (set and verify the share) -> analyse -> judge
-> act -> persist. Decisions live in ``decisions``; I/O lives at the edges (fleet, source, store).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from controller import analysis
from controller.actuator import GatewayFleet, GatewaysUnreachable
from controller.decisions import Action, Judgement, apply_command, judge
from controller.exporter import ControllerMetrics
from controller.policy import Policy
from controller.reporter import Reporter
from controller.sources import Mark, MetricsSource, MetricsUnavailable
from controller.state import DecisionRecord, Phase, RolloutState, StateStore

log = logging.getLogger(__name__)

EXIT_PROMOTED = 0
EXIT_ROLLED_BACK = 3
EXIT_ROLLBACK_UNCONFIRMED = 4  # rolled back, but some gateway never confirmed share 0
COMMAND_POLL_SECONDS = 0.2


class CanaryController:
    def __init__(
        self,
        policy: Policy,
        fleet: GatewayFleet,
        source: MetricsSource,
        store: StateStore,
        reporter: Reporter,
        metrics: ControllerMetrics,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.policy = policy
        self.fleet = fleet
        self.source = source
        self.store = store
        self.reporter = reporter
        self.metrics = metrics
        self.clock = clock
        self.sleep = sleep
        self.state = RolloutState()

    # -- the loop ------------------------------------------------------------------------------

    def run(self) -> int:
        """Runs the rollout to its end: 0 when promoted, 3 when rolled back."""
        self.state = self._resume_or_start()
        self._show()
        while not self.state.phase.terminal:
            self.tick()
            self._wait_for_next_tick()
        confirmed = self._confirm_final_share()
        self.reporter.close()
        if self.state.phase is Phase.PROMOTED:
            return EXIT_PROMOTED
        return EXIT_ROLLED_BACK if confirmed else EXIT_ROLLBACK_UNCONFIRMED

    def tick(self) -> None:
        self._take_commands()
        if not self.state.phase.terminal:
            if self.state.step_started_at is None:
                self._enter_step()
            else:
                self._analyse_and_act()
        self.store.save(self.state)
        self._show()

    # -- the steps of a tick -------------------------------------------------------------------

    def _resume_or_start(self) -> RolloutState:
        saved = self.store.load()
        if saved is None or saved.phase.terminal:
            self.store.reset()
            state = RolloutState(steps=list(self.policy.steps), started_at=self.clock())
            self.store.save(state)
            return state
        log.info("resuming the rollout at step %d (%s)", saved.step_index + 1, saved.phase.value)
        if saved.step_started_at is not None:
            try:
                self.fleet.verify(saved.share)  # read only: the share is not touched
            except GatewaysUnreachable as exc:
                log.warning("gateways disagree with the saved share, setting it again: %s", exc)
                saved.step_started_at = None
        return saved

    def _take_commands(self) -> None:
        for command in self.store.take_commands():
            effect = apply_command(self.state.phase, command, self._is_last_step())
            self.state.phase = effect.phase
            self._record(effect.action.value if effect.action else command.value, effect.note)
            if effect.action is not None:
                self._act(effect.action, effect.note, rollback_cause="abort")

    def _enter_step(self) -> None:
        share = self.policy.share(self.state.step_index)
        try:
            generations = self.fleet.set_share(share)
            self.fleet.verify(share, after=generations)
            mark = self.source.mark()
        except (GatewaysUnreachable, MetricsUnavailable) as exc:
            self._record("hold", f"waiting for every gateway to take share {share:.0%}: {exc}")
            return
        now = self.clock()
        self.state.share = share
        self.state.step_started_at = now
        self.state.step_mark = mark.to_json()
        if self.state.rollout_mark is None:
            self.state.rollout_mark = mark.to_json()
        self.state.consecutive_failures = 0
        self._record("set", f"every gateway ({len(self.fleet.urls)}) confirmed share {share:.0%}")
        self._show()  # the exported step and share follow the gateways at once

    def _analyse_and_act(self) -> None:
        assert self.state.step_mark is not None and self.state.rollout_mark is not None
        try:
            step = self.source.window_since(Mark.from_json(self.state.step_mark), self.policy.model)
            rollout = self.source.window_since(
                Mark.from_json(self.state.rollout_mark), self.policy.model
            )
        except MetricsUnavailable as exc:
            self._record("hold", f"metrics unavailable: {exc}")
            return
        results = analysis.assess(
            step, rollout, self.policy, self.policy.is_dark_launch(self.state.step_index)
        )
        self.metrics.record_analysis(results)
        self.state.last_analysis = [result.as_dict() for result in results]
        assert self.state.step_started_at is not None
        judgement: Judgement = judge(
            results,
            elapsed=self.clock() - self.state.step_started_at,
            consecutive_failures=self.state.consecutive_failures,
            policy=self.policy,
            is_last_step=self._is_last_step(),
            paused=self.state.phase is Phase.PAUSED,
        )
        self.state.consecutive_failures = judgement.consecutive_failures
        observations = analysis.observe(step, self.policy.latency_quantile)
        self._record(judgement.action.value, judgement.reason, self.state.last_analysis,
                     observations)  # fmt: skip
        if judgement.action is not Action.HOLD:
            self._act(judgement.action, judgement.reason, judgement.rollback_cause)

    def _act(self, action: Action, reason: str, rollback_cause: str | None = None) -> None:
        if action is Action.ADVANCE:
            self.state.step_index += 1
            self.state.step_started_at = None
            self._enter_step()
        elif action in (Action.PROMOTE, Action.PROMOTE_FULL):
            if action is Action.PROMOTE_FULL:
                self.state.step_index = len(self.policy.steps) - 1
                self.state.step_started_at = None
                self._enter_step()
            if self.state.step_started_at is not None:  # 100 % confirmed everywhere
                self.state.phase = Phase.PROMOTED
                self.metrics.promotions.inc()
                self._record("promoted", "the student serves 100 %")
        elif action is Action.ROLLBACK:
            self._roll_back(reason, rollback_cause or "unknown")

    def _roll_back(self, reason: str, cause: str) -> None:
        self.state.phase = Phase.ROLLED_BACK
        self.state.rollback_reason = reason
        self.state.share = 0.0
        self.metrics.rollbacks.labels(cause).inc()
        try:
            self.fleet.set_share(0.0)
            outcome = "share 0 on every gateway"
        except GatewaysUnreachable as exc:
            outcome = f"share 0 not yet confirmed everywhere ({exc}); retrying"
        self._record("rolled back", f"{reason}; {outcome}")

    def _confirm_final_share(self) -> bool:
        """A rollback must reach every gateway: retry those that missed it, for a while."""
        if self.state.phase is not Phase.ROLLED_BACK:
            return True
        deadline = self.clock() + max(10.0, 3 * self.policy.interval_seconds)
        while True:
            try:
                self.fleet.set_share(0.0)
                self.fleet.verify(0.0)
                return True
            except GatewaysUnreachable as exc:
                if self.clock() > deadline:
                    self._record("rollback unconfirmed", f"gave up confirming share 0: {exc}")
                    self.store.save(self.state)
                    return False
                self.sleep(min(1.0, self.policy.interval_seconds))

    # -- helpers -------------------------------------------------------------------------------

    def _is_last_step(self) -> bool:
        return self.state.step_index == len(self.policy.steps) - 1

    def _record(
        self,
        action: str,
        reason: str,
        gates: list[dict[str, object]] | None = None,
        observations: dict[str, object] | None = None,
    ) -> None:
        record = DecisionRecord(
            at=self.clock(),
            step_index=self.state.step_index,
            share=self.state.share,
            action=action,
            reason=reason,
            gates=list(gates or []),
            observations=dict(observations or {}),
        )
        self.state.history.append(record)
        self.reporter.decision(record, self.state)

    def _show(self) -> None:
        self.metrics.show_position(self.state.phase, self.state.step_index, self.state.share)
        self.reporter.progress(self.state, self.clock())

    def _wait_for_next_tick(self) -> None:
        """Sleeps one interval, but wakes early for an operator's command."""
        deadline = self.clock() + self.policy.interval_seconds
        while self.clock() < deadline and not self.state.phase.terminal:
            if self.store.has_commands():
                return
            self.reporter.progress(self.state, self.clock())
            self.sleep(min(COMMAND_POLL_SECONDS, max(0.0, deadline - self.clock())))

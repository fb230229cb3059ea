"""The canary controller: one ``tick()`` made of small steps, run every analysis interval.

start: take the lease -> resume the latest rollout, or start a new one (refused while gateways
already serve the student, unless the operator says how to start).
tick: heartbeat -> take operators' commands -> enter the step (set and verify the share) or
check the share for drift -> analyse -> judge -> act -> persist. Every change of phase or step is
``machine.transition``'s; this module feeds it events and carries out the effects it returns, with
the I/O at the edges (fleet, source, store). Only the lease holder acts: a controller that loses
its lease stops at once, before touching the fleet again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from controller import analysis, machine
from controller.actuator import Fleet, FleetNotConfirmed, GatewaysUnreachable
from controller.decisions import Judgement, judge
from controller.exporter import ControllerMetrics
from controller.policy import Policy
from controller.progress import Reporter
from controller.sources import Mark, MetricsSource, MetricsUnavailable
from controller.state import (
    DecisionRecord,
    LeaseHeld,
    LeaseLost,
    Phase,
    Record,
    RolloutState,
    StateError,
    StateStore,
    new_holder_id,
)
from controller.students import summary

log = logging.getLogger(__name__)

EXIT_PROMOTED = 0
EXIT_ROLLED_BACK = 3
EXIT_ROLLBACK_UNCONFIRMED = 4  # rolled back, but some gateway never confirmed share 0
EXIT_REFUSED = 5  # another controller holds the rollout, or starting would be unsafe
EXIT_STOPPED = 143  # SIGTERM with on_sigterm "persist": saved, lease released; run resumes it
COMMAND_POLL_SECONDS = 0.2
HEARTBEAT_SECONDS = 1.0


class StartRefused(StateError):
    """Starting (or resuming) would be unsafe; the message says why and what to pass instead."""


class Start(StrEnum):
    """How ``run`` begins when the state file has no rollout in progress."""

    FRESH = "fresh"
    """Only from a fleet that serves the student nothing (the default)."""
    FROM_CURRENT = "from-current"
    """At the first step whose share is at least what every gateway serves now."""
    RESET = "reset"
    """From the first step, whatever the gateways serve now."""


class OnSigterm(StrEnum):
    """What a controller does when asked to stop (a pod deleted, a node drained)."""

    PERSIST = "persist"
    """Finish the tick in hand, save, release the lease and exit 143: the next ``run`` (the
    replacement pod) resumes the rollout at the same step, traffic unchanged meanwhile."""
    ROLLBACK = "rollback"
    """Roll back (share 0 on every gateway), then exit 3: nobody is left watching the student."""


@dataclass(frozen=True)
class Launch:
    """What ``run`` was asked to do, recorded with the rollout so that ``retry`` can repeat it."""

    gateways: list[str]
    prometheus: str | None = None
    new: bool = False  # start a new rollout when the latest one has ended
    start: Start = Start.FRESH
    name: str | None = None  # names the rollout: resumed while unfinished, never started twice
    on_sigterm: OnSigterm = OnSigterm.PERSIST
    wait_for_lease: float = 0.0  # seconds to wait for another controller's lease to lapse
    prometheus_selector: str = ""  # extra PromQL label matchers: namespace="ml",job="..."
    state_url: str | None = None  # the fleet's store: replicas found there, not in ``gateways``
    student: dict[str, Any] | None = None  # run --student: loaded into every gateway first

    @classmethod
    def again(cls, rollout: RolloutState) -> Launch:
        """``retry``: a new rollout with a rolled-back one's gateways, metrics source and
        student (loaded again, and its outcome recorded in the registry's history too)."""
        return cls(rollout.gateways, rollout.prometheus, new=True,
                   prometheus_selector=rollout.prometheus_selector,
                   state_url=rollout.state_url, student=rollout.student)  # fmt: skip


class CanaryController:
    def __init__(
        self,
        policy: Policy,
        fleet: Fleet,
        source: MetricsSource,
        store: StateStore,
        reporter: Reporter,
        metrics: ControllerMetrics,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        holder: str | None = None,
    ) -> None:
        self.policy = policy
        self.fleet = fleet
        self.source = source
        self.store = store
        self.reporter = reporter
        self.metrics = metrics
        self.clock = clock
        self.sleep = sleep
        self.holder = holder or new_holder_id()
        self.state = RolloutState()
        self._last_heartbeat = 0.0
        self._stop_requested = False

    def request_stop(self) -> None:
        """From a signal handler: stop after the tick in hand, as ``Launch.on_sigterm`` says."""
        self._stop_requested = True

    # -- the loop ------------------------------------------------------------------------------

    def run(self, launch: Launch) -> int:
        """Runs the rollout to its end: 0 promoted, 3 rolled back, 4 rollback unconfirmed, 5 when
        refused or when another controller took the lease (raises ``StartRefused``/``LeaseHeld``
        before acting when starting is refused)."""
        self.state = self.start(launch)
        try:
            self._show()
            while not self.state.phase.terminal and not self._stop_requested:
                self.tick()
                self._wait_for_next_tick()
            if self._stop_requested and not self.state.phase.terminal:
                if launch.on_sigterm is OnSigterm.PERSIST:
                    return self._stop()
                self._apply(machine.StopRequested(roll_back=True))
            confirmed = self._confirm_final_share()
        except LeaseLost as exc:
            log.error("stopped acting on rollout %d: %s", self.state.rollout_id, exc)
            self.reporter.close()
            return EXIT_REFUSED
        self.store.release(self.holder)
        self.reporter.close()
        if self.state.phase is Phase.PROMOTED:
            return EXIT_PROMOTED
        return EXIT_ROLLED_BACK if confirmed else EXIT_ROLLBACK_UNCONFIRMED

    def tick(self) -> None:
        self._heartbeat(force=True)
        self._take_commands()
        if not self.state.phase.terminal:
            if self.state.step_started_at is None:
                if self.state.phase is not Phase.PAUSED:  # a pause leaves the share alone
                    self._enter_step()
            elif not self._drifted():
                self._analyse_and_act()
        self.store.save(self.state, self.holder)
        self._show()

    def _stop(self) -> int:
        self._apply(machine.StopRequested(roll_back=False))
        self.store.save(self.state, self.holder)
        self.store.release(self.holder)
        self.reporter.close()
        return EXIT_STOPPED

    # -- starting ------------------------------------------------------------------------------

    def start(self, launch: Launch) -> RolloutState:
        """Takes the lease, then resumes the latest rollout or starts a new one."""
        give_up = self.clock() + launch.wait_for_lease
        while True:
            try:
                previous = self.store.acquire(self.holder, self.policy.lease_seconds, self.clock())
                break
            except LeaseHeld as exc:
                if self.clock() >= give_up or self._stop_requested:
                    raise
                log.info("waiting for the lease: %s", exc)
                self.sleep(min(1.0, max(0.0, give_up - self.clock())))
        try:
            saved = self.store.load()
            self._refuse_if_unsafe(saved, launch)
            if saved is not None and not saved.phase.terminal:
                return self._resume(saved, previous.holder if previous else None)
            return self._start_new(launch)
        except BaseException:
            self.store.release(self.holder)
            raise

    @staticmethod
    def _refuse_if_unsafe(saved: RolloutState | None, launch: Launch) -> None:
        """A named rollout is started once and resumed while unfinished; an unnamed one needs
        ``--new`` once the latest has ended."""
        if saved is None:
            return
        what = f"rollout {saved.rollout_id}" + (f" ({saved.name})" if saved.name else "")
        if not saved.phase.terminal:
            if launch.name and saved.name != launch.name:
                raise StartRefused(f"{what} is still {saved.phase.value}: finish or abort it "
                                   f"before starting {launch.name}")  # fmt: skip
            return
        if launch.name == saved.name and launch.name is not None:
            raise StartRefused(f"{what} already ended {saved.phase.value}")
        if launch.name is None and not launch.new:
            raise StartRefused(f"{what} ended {saved.phase.value}; pass --new to start "
                               "another (its history is kept: status --rollout N)")  # fmt: skip

    def _load_student(self, student: dict[str, Any]) -> None:
        """Every gateway serves ``student`` (and says so) before any traffic moves; a gateway
        that refuses (share not 0, unknown id, another signature) refuses the rollout."""
        log.info("loading student %s into every gateway", summary(student))
        try:
            self.fleet.set_student(student["id"])
        except FleetNotConfirmed as exc:
            raise StartRefused(f"student {student['id']} was not loaded everywhere: {exc}") from exc

    def _resume(self, saved: RolloutState, previous_holder: str | None) -> RolloutState:
        self.state = saved
        before = f"after {previous_holder}" if previous_holder else "with no controller before it"
        log.info("resuming rollout %d at step %d", saved.rollout_id, saved.step_index + 1)
        # The share is only read back at the first tick (drift check), never set again blindly.
        self._record(Record.RESUMED, f"controller {self.holder} resumed the rollout ({before})")
        self.store.save(self.state, self.holder)
        return self.state

    def _start_new(self, launch: Launch) -> RolloutState:
        if launch.student is not None:
            self._load_student(launch.student)
        start_index, note = self._first_step(launch.start)
        state = RolloutState(
            steps=list(self.policy.steps),
            step_index=start_index,
            started_at=self.clock(),
            policy=self.policy.model_dump(mode="json"),
            gateways=list(launch.gateways),
            prometheus=launch.prometheus,
            prometheus_selector=launch.prometheus_selector,
            state_url=launch.state_url,
            name=launch.name,
            student=launch.student,
        )
        self.state = self.store.add(state, self.holder)
        self._record(Record.STARTED, f"controller {self.holder} started rollout "
                     f"{self.state.rollout_id}{note}")  # fmt: skip
        self.store.save(self.state, self.holder)
        return self.state

    def _first_step(self, start: Start) -> tuple[int, str]:
        """The step a new rollout begins at; refuses to drop a fleet that serves the student."""
        reachable = self.fleet.read_reachable()
        serving = {url: t.student_share for url, t in reachable.items() if t.student_share > 0}
        if not serving:
            return 0, ""
        shares = ", ".join(f"{url} at {share:.0%}" for url, share in serving.items())
        if start is Start.RESET:
            return 0, f" from the first step (--reset; gateways served: {shares})"
        if start is Start.FROM_CURRENT:
            current = set(serving.values())
            if len(current) > 1 or len(serving) < len(reachable):
                raise StartRefused(f"gateways disagree on the share ({shares}); use --reset")
            share = current.pop()
            index = next(i for i, step in enumerate(self.policy.steps) if step / 100 >= share)
            return index, f" at step {index + 1} (--from-current: gateways served {share:.0%})"
        raise StartRefused(
            f"gateways already serve the student ({shares}); a new rollout would drop them to "
            f"{self.policy.share(0):.0%}: pass --from-current to start at the step that matches, "
            "or --reset to start from the first step"
        )

    # -- the steps of a tick -------------------------------------------------------------------

    def _heartbeat(self, force: bool = False) -> None:
        now = self.clock()
        if force or now - self._last_heartbeat >= HEARTBEAT_SECONDS:
            self.store.renew(self.holder, self.policy.lease_seconds, now)
            self._last_heartbeat = now
            self.metrics.heartbeat(now)

    def _take_commands(self) -> None:
        for sent in self.store.take_commands(self.state.rollout_id, self.clock()):
            moved = self._apply(machine.OperatorCommand(sent.command, sent.sender))
            # after its effects, the last record says how it ended (share 0 confirmed, ...)
            note = self.state.history[-1].reason if moved.effects else moved.note
            # What the operator is told has happened is on disk first: a controller killed right
            # after the acknowledgement must not come back without it.
            self.store.save(self.state, self.holder)
            self._acknowledge(sent.id, moved.acted, note)

    # -- the state machine's events in, its effects out -----------------------------------------

    def _apply(
        self,
        event: machine.Event,
        gates: list[dict[str, object]] | None = None,
        observations: dict[str, object] | None = None,
    ) -> machine.Transition:
        moved = machine.transition(machine.Position.of(self.state), event)
        if moved.record is not None:  # at the step and share it was decided at
            self._record(moved.record, moved.note, gates, observations)
        moved.position.apply_to(self.state)
        for effect in moved.effects:
            if isinstance(effect, machine.EnterStep):
                self._enter_step()
            elif isinstance(effect, machine.RollBack):
                self._roll_back(effect.reason, effect.cause)
            else:
                self._finish_promoted()
        return moved

    def _acknowledge(self, command_id: int, acted: bool, note: str) -> None:
        self.store.acknowledge(command_id, acted, note, self.clock())

    def _enter_step(self) -> None:
        share = self.policy.share(self.state.step_index)
        self._heartbeat(force=True)  # never touch the fleet without the lease
        try:
            generations = self.fleet.set_share(share)
            self.fleet.verify(share, after=generations)
            mark = self.source.mark()
        except (FleetNotConfirmed, MetricsUnavailable) as exc:
            self._hold(f"waiting for every gateway to take share {share:.0%}: {exc}")
            return
        now = self.clock()
        self.state.held_since = None
        self.state.share = share
        self.state.generations = {url: t.generation for url, t in generations.items()}
        self.state.step_started_at = now
        if self.state.step_entered_at is None:  # not a drift's re-set: the step's first
            self.state.step_entered_at = now
        self.state.step_mark = mark.to_json()
        if self.state.rollout_mark is None:
            self.state.rollout_mark = mark.to_json()
        self.state.consecutive_failures = 0
        self._apply(machine.ShareConfirmed(len(self.fleet.urls), share))
        self._show()  # the exported step and share follow the gateways at once

    def _drifted(self) -> bool:
        """Whether a gateway serves a share (or generation) we did not set; if so, acts on it by
        the policy's ``on_drift`` and the step's analysis starts again from a fresh window."""
        try:
            reported = self.fleet.read()
        except GatewaysUnreachable as exc:
            self._hold(f"cannot read the share back from every gateway: {exc}")
            return True
        self.state.held_since = None
        intended = self.state.share
        drifts = []
        for url, traffic in reported.items():
            expected = self.state.generations.setdefault(url, traffic.generation)
            if abs(traffic.student_share - intended) > 1e-9 or traffic.generation != expected:
                drifts.append(f"{url} reports share {traffic.student_share:.4g} (generation "
                              f"{traffic.generation}), intended {intended:.4g} (generation "
                              f"{expected})")  # fmt: skip
        if not drifts:
            return False
        what = "; ".join(drifts)
        log.warning("share drift: %s", what)
        self.metrics.share_drift.inc(len(drifts))
        # Each re-set restarts the step's analysis, so a gateway that keeps drifting (one that
        # crash-loops back to its config's share) would hold the rollout at this step forever:
        # the step's deadline counts from its first confirmation, and a drift past it ends it.
        entered = self.state.step_entered_at
        at_step = self.clock() - entered if entered is not None else 0.0
        if at_step > self.policy.max_step_seconds and self.state.phase is Phase.PROGRESSING:
            self._apply(machine.HeldTooLong(f"the share kept drifting at this step; the last "
                                            f"time: {what}", at_step))  # fmt: skip
            return True
        self._apply(machine.Drifted(what, intended, pause=self.policy.on_drift == "pause"))
        return True

    def _hold(self, what: str) -> None:
        """Inconclusive (no advance, no rollback) while the fleet cannot confirm or be read, up
        to ``max_step_seconds``; then a rollback that says which gateways and why."""
        now = self.clock()
        if self.state.held_since is None:
            self.state.held_since = now
        held = now - self.state.held_since
        if held <= self.policy.max_step_seconds:
            self._record(Record.HOLD, what)
            return
        self.state.held_since = None
        self._apply(machine.HeldTooLong(what, held))

    def _analyse_and_act(self) -> None:
        assert self.state.step_mark is not None and self.state.rollout_mark is not None
        try:
            step = self.source.window_since(Mark.from_json(self.state.step_mark), self.policy.model)
            rollout = self.source.window_since(
                Mark.from_json(self.state.rollout_mark), self.policy.model
            )
        except MetricsUnavailable as exc:
            self._record(Record.HOLD, f"metrics unavailable: {exc}")
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
        observations = analysis.observe(step, self.policy.latency_quantile, rollout)
        self._apply(machine.Analysed(judgement), self.state.last_analysis, observations)

    def _finish_promoted(self) -> None:
        self.state.ended_at = self.clock()
        self.metrics.promotions.inc()
        self._record(Record.PROMOTED, "the student serves 100 %")

    def _roll_back(self, reason: str, cause: str) -> None:
        self._heartbeat(force=True)
        self.state.rollback_reason = reason
        self.state.share = 0.0
        self.state.ended_at = self.clock()
        self.metrics.rolled_back(cause)
        try:
            self.fleet.set_share(0.0)
            outcome = "share 0 on every gateway"
        except FleetNotConfirmed as exc:
            outcome = f"share 0 not yet confirmed everywhere ({exc}); retrying"
        self._record(Record.ROLLED_BACK, f"{reason}; {outcome}")

    def _confirm_final_share(self) -> bool:
        """A rollback must reach every gateway: retry those that missed it, for a while."""
        self.store.save(self.state, self.holder)
        if self.state.phase is not Phase.ROLLED_BACK:
            return True
        deadline = self.clock() + max(10.0, 3 * self.policy.interval_seconds)
        while True:
            try:
                self._heartbeat()
                self.fleet.set_share(0.0)
                self.fleet.verify(0.0)
                return True
            except FleetNotConfirmed as exc:
                if self.clock() > deadline:
                    self._record(Record.ROLLBACK_UNCONFIRMED, f"gave up confirming share 0: {exc}")
                    self.store.save(self.state, self.holder)
                    return False
                self.sleep(min(1.0, self.policy.interval_seconds))

    # -- helpers -------------------------------------------------------------------------------

    def _is_last_step(self) -> bool:
        return self.state.step_index == len(self.policy.steps) - 1

    def _record(
        self,
        action: Record,
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
        state, now = self.state, self.clock()
        baked = now - state.step_started_at if state.step_started_at is not None else 0.0
        self.metrics.show_position(state, baked)
        self.reporter.progress(state, now)

    def _wait_for_next_tick(self) -> None:
        """Sleeps one interval, heartbeating, but wakes early for a command or a stop."""
        deadline = self.clock() + self.policy.interval_seconds
        while self.clock() < deadline and not self.state.phase.terminal:
            if self._stop_requested:
                return
            self._heartbeat()
            if self.store.has_commands(self.state.rollout_id):
                return
            self.reporter.progress(self.state, self.clock())
            self.sleep(min(COMMAND_POLL_SECONDS, max(0.0, deadline - self.clock())))

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
from controller.approval import GateVerdict
from controller.decisions import Action, Judgement, judge
from controller.events import EVENT_OF_RECORD, EventType, RolloutEvent, rollout_fields
from controller.exporter import ControllerMetrics
from controller.gatekeeper import Gatekeeper
from controller.notify import Notifications
from controller.notify.delivery import OUTCOMES
from controller.policy import Policy
from controller.progress import Reporter
from controller.registry_records import summary
from controller.rollout_store import (
    DecisionRecord,
    LeaseHeld,
    LeaseLost,
    Phase,
    Record,
    RolloutState,
    RolloutStore,
    StateError,
    new_holder_id,
)
from controller.sources import Mark, MetricsSource, MetricsUnavailable

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
        store: RolloutStore,
        reporter: Reporter,
        metrics: ControllerMetrics,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        holder: str | None = None,
        notifications: Notifications | None = None,
        gatekeeper: Gatekeeper | None = None,
    ) -> None:
        """``notifications`` and ``gatekeeper`` default to the policy's ``notify`` and
        ``webhooks`` (``NotifyError`` when a receiver's secret is unset)."""
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
        metrics.add_receivers([r.name for r in policy.notify], OUTCOMES)
        self.notifications = notifications or Notifications(
            policy.notify, policy.interval_seconds, metrics.notified
        )
        self.gatekeeper = gatekeeper or Gatekeeper(
            policy.webhooks, [g.value for g in policy.manual_approval]
        )
        self._unanswered_rollback: list[str] = []  # rollback hooks nobody answered: they hold
        self._rollback: tuple[str | None, float] = (None, 0.0)  # the cause, the share it left

    def request_stop(self) -> None:
        """From a signal handler: stop after the tick in hand, as ``Launch.on_sigterm`` says."""
        self._stop_requested = True

    # -- the loop ------------------------------------------------------------------------------

    def run(self, launch: Launch) -> int:
        """Runs the rollout to its end: 0 promoted, 3 rolled back, 4 rollback unconfirmed, 5 when
        refused or when another controller took the lease (raises ``StartRefused``/``LeaseHeld``
        before acting when starting is refused). Queued events are sent before it returns,
        for at most the slowest receiver's timeout."""
        try:
            return self._run(launch)
        finally:
            self.notifications.close(self.notifications.flush_seconds)

    def _run(self, launch: Launch) -> int:
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
            self._after_end()
        except LeaseLost as exc:
            log.error("stopped acting on rollout %d: %s", self.state.rollout_id, exc)
            self._notify(EventType.LEASE_LOST, self.clock(), str(exc))
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
            self._poll_rollback_gates()
        if not self.state.phase.terminal:
            if self.state.step_started_at is None:
                # a pause leaves the share alone; the first step waits for its gates
                if self.state.phase is not Phase.PAUSED and self._may_start():
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
                previous = self.store.acquire(self.holder, self.policy.lease_seconds, self.clock(),
                                               self.policy.model)  # fmt: skip
                break
            except LeaseHeld as exc:
                if self.clock() >= give_up or self._stop_requested:
                    raise
                log.info("waiting for the lease: %s", exc)
                self.sleep(min(1.0, max(0.0, give_up - self.clock())))
        try:
            saved = self.store.load(model=self.policy.model)
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
            self.store.renew(self.holder, self.policy.lease_seconds, now, self.policy.model)
            self._last_heartbeat = now
            self.metrics.heartbeat(now)

    def _take_commands(self) -> None:
        for sent in self.store.take_commands(self.state.rollout_id, self.clock()):
            command = machine.OperatorCommand(sent.command, sent.sender, sent.argument)
            moved = self._apply(command)
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
        self._apply(machine.ShareConfirmed(len(self.fleet.replica_ids), share))
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
        results += self.gatekeeper.rollout_checks(self.state)
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
        if judgement.action is Action.ADVANCE and self.state.phase is Phase.PROGRESSING:
            verdict = self._gates_before(self.state.step_index + 1, starting=False)
            if not verdict.open:  # waits (a pre-rollout abort only happens at the start)
                judgement = Judgement(Action.HOLD, verdict.reason, judgement.consecutive_failures)
        observations = analysis.observe(step, self.policy.latency_quantile, rollout)
        self._apply(machine.Analysed(judgement), self.state.last_analysis, observations)

    # -- webhook gates and manual approvals (approval.py decides, gatekeeper.py calls) ---------

    def _may_start(self) -> bool:
        """Whether the rollout may set its first step's share: once its start gates are open
        (a step entered before, a resumed rollout's, is not gated again)."""
        if self.state.rollout_mark is not None:
            return True
        verdict = self._gates_before(self.state.step_index, starting=True)
        if verdict.abort is not None:
            judgement = Judgement(Action.ROLLBACK, verdict.abort, 0, "webhook_pre_rollout")
            self._apply(machine.Analysed(judgement))
            return False
        if not verdict.open and self.state.history[-1].action is not Record.WAITING:
            self._record(Record.HOLD, verdict.reason)
        return verdict.open

    def _gates_before(self, to_index: int, starting: bool) -> GateVerdict:
        """Asks the gates of entering ``to_index``; a wait that begins is recorded (and sent)
        once, with what it waits for; an open move clears the wait and its approvals."""
        verdict = self.gatekeeper.before_step(self.state, to_index, starting)
        if self._unanswered_rollback:
            waits = tuple(f"rollback: webhook {name} unreachable"
                          for name in self._unanswered_rollback)  # fmt: skip
            unreachable = verdict.unreachable + tuple(self._unanswered_rollback)
            verdict = GateVerdict(verdict.abort, verdict.waits + waits, verdict.manual, unreachable)
        if verdict.open or verdict.abort is not None:
            self.state.waiting, self.state.approved = None, []
            return verdict
        waiting = self.state.waiting
        began = waiting is None or waiting.get("step_index") != to_index
        self.state.waiting = {
            "step_index": to_index,
            "since": self.clock() if began or waiting is None else waiting["since"],
            "reason": verdict.reason,
            "manual": list(verdict.manual),
            "unreachable": list(verdict.unreachable),
        }
        if began:
            self.state.approved = []
            self._record(Record.WAITING, verdict.reason)
        return verdict

    def _poll_rollback_gates(self) -> None:
        opened, self._unanswered_rollback = self.gatekeeper.rollback_requested(self.state)
        if opened is not None:
            reason = f"rollback gate {opened.hook.name} answered {opened.detail}"
            judgement = Judgement(Action.ROLLBACK, reason, 0, "webhook_rollback")
            self._apply(machine.Analysed(judgement))

    def _after_end(self) -> None:
        """post-rollout hooks, once; their answers are recorded, nothing waits on them."""
        answers = self.gatekeeper.after_end(self.state)
        for answer in answers:
            self._record(Record.GATE, f"post-rollout gate {answer.hook.name} {answer.detail}")
        if answers:
            self.store.save(self.state, self.holder)

    def _finish_promoted(self) -> None:
        self.state.ended_at = self.clock()
        self.metrics.promotions.inc()
        self._record(Record.PROMOTED, "the student serves 100 %")

    def _roll_back(self, reason: str, cause: str) -> None:
        self._heartbeat(force=True)
        self.state.rollback_reason = reason
        self._rollback = (cause, self.state.share)
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
        kind = EVENT_OF_RECORD[action]
        if kind is not None:
            self._notify(kind, record.at, reason, record)

    def _notify(
        self, kind: EventType, at: float, reason: str, record: DecisionRecord | None = None
    ) -> None:
        """One event for one transition; the shares before and after say what it moved."""
        state, cause = self.state, None
        before = after = state.share
        if kind is EventType.STARTED:
            before, after = 0.0, self.policy.share(state.step_index)
        elif kind is EventType.STEP_ADVANCED:
            last = record is not None and record.action is Record.PROMOTE_FULL
            after = 1.0 if last else self.policy.share(state.step_index + 1)
        elif kind is EventType.ROLLED_BACK:
            cause, before = self._rollback
        numbers: dict[str, Any] = {}
        if record is not None and (record.gates or record.observations):
            numbers = {"gates": record.gates, "observations": record.observations}
        if kind is EventType.ROLLED_BACK:  # the analysis that failed, with its numbers
            numbers = {"gates": list(state.last_analysis)}
        self.notifications.emit(RolloutEvent(kind, at, self.holder, rollout_fields(state),
                                             before, after, reason, cause, numbers))  # fmt: skip

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

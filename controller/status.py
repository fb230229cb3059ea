"""`distill-canary status`: what an operator needs to see at a glance, as plain text lines.

Read only: it reads the state file and asks each gateway for its share, and never writes.
"""

from __future__ import annotations

import math
import shutil
import time
from typing import Any

import httpx
from rich.table import Table

from controller.gate_table import interval_history, text_table
from controller.gateway_paths import traffic_path
from controller.registry_records import summary
from controller.rollout_store import DecisionRecord, Phase, RolloutState, RolloutStore

GATE_HISTORY = 6  # analyses of each gate's interval that status shows


def render_status(
    rollout: RolloutState, store: RolloutStore, client: httpx.Client, now: float, history: int
) -> str:
    steps = ", ".join(f"{step:g}%" for step in rollout.steps)
    lines = [
        f"rollout {rollout.rollout_id} of {len(store.rollout_ids())} in {store.path}, "
        f"model {rollout.model}",
        f"phase: {rollout.phase.value}"
        + (f" (paused by {rollout.paused_by})" if rollout.phase is Phase.PAUSED else ""),
        f"step: {rollout.step_index + 1} of [{steps}], intended student share {rollout.share:.0%}",
        f"time at this step: {_time_at_step(rollout, now)}",
        f"next: {_next_event(rollout, now)}",
        f"controller: {_controller(rollout, store, now)}",
    ]
    if rollout.waiting is not None and not rollout.phase.terminal:
        lines.insert(5, waiting_line(rollout, now))
    if rollout.student is not None:
        lines.insert(1, f"student: {summary(rollout.student)}")
    if rollout.rollback_reason:
        lines.append(f"rolled back because: {rollout.rollback_reason}")
    lines.append("gateways (intended vs actual):")
    lines += [f"  {line}" for line in _gateways(rollout, client)]
    if rollout.last_analysis:
        lines.append("last analysis:")
        lines += [f"  {line}" for line in text_table(rollout.last_analysis)]
    this_step = [(r.at, r.gates) for r in rollout.history if r.step_index == rollout.step_index]
    if this_step:
        lines.append("gate intervals at this step, oldest first (+ pass, x fail, ? inconclusive):")
        lines += [f"  {line}" for line in interval_history(this_step, GATE_HISTORY)]
    if history:
        lines.append(f"decisions (latest {min(history, len(rollout.history))}):")
        width = shutil.get_terminal_size((160, 24)).columns - 2
        lines += [f"  {short_decision_line(r, len(rollout.steps), width)}"
                  for r in rollout.history[-history:]]  # fmt: skip
    return "\n".join(lines)


def render_models(rollouts: list[RolloutState], store: RolloutStore, now: float) -> Table:
    """One row per model's latest rollout: what each is doing, and who runs it."""
    table = Table(title=f"rollouts in {store.path}, one row per model", title_justify="left")
    for column in ("model", "rollout", "phase", "step", "share", "controller"):
        table.add_column(column)
    for rollout in rollouts:
        step = f"{rollout.step_index + 1} of {len(rollout.steps)}"
        named = f"{rollout.rollout_id}" + (f" ({rollout.name})" if rollout.name else "")
        table.add_row(rollout.model, named, rollout.phase.value, step, f"{rollout.share:.0%}",
                      _controller(rollout, store, now))  # fmt: skip
    return table


def waiting_line(rollout: RolloutState, now: float) -> str:
    """What holds the next step (webhook gates, manual approvals) and since when."""
    waiting = rollout.waiting or {}
    since = float(waiting.get("since", now))
    when = time.strftime("%H:%M:%S", time.localtime(since))
    step = int(waiting.get("step_index", rollout.step_index)) + 1
    line = (f"waiting since {when} ({now - since:.0f} s) to enter step {step}: "
            f"{waiting.get('reason', '?')}")  # fmt: skip
    if waiting.get("unreachable"):
        line += f" [unreachable, holding: {', '.join(waiting['unreachable'])}]"
    if rollout.approved:
        line += f" (approved: {', '.join(rollout.approved)})"
    return line


def short_decision_line(record: DecisionRecord, step_count: int, width: int) -> str:
    """One decision in one terminal line: time, step, share, action, why (cut to ``width``)."""
    when = time.strftime("%H:%M:%S", time.localtime(record.at))
    line = (f"{when} step {record.step_index + 1}/{step_count} {record.share:.0%} "
            f"{record.action}: {record.reason}")  # fmt: skip
    return line if len(line) <= width else line[: max(0, width - 1)] + "…"


def _time_at_step(rollout: RolloutState, now: float) -> str:
    if rollout.step_started_at is None:
        return "not started (share not yet confirmed on every gateway)"
    end = rollout.ended_at if rollout.phase.terminal and rollout.ended_at else now
    return f"{end - rollout.step_started_at:.0f} s"


def _next_event(rollout: RolloutState, now: float) -> str:
    if rollout.phase.terminal:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(rollout.ended_at or now))
        return f"none: ended {rollout.phase.value} at {when}"
    if rollout.step_started_at is None:
        if rollout.phase is Phase.PAUSED:
            return "paused before the step's share was set: resume sets it"
        return "the step starts once every gateway confirms its share"
    bake = float(rollout.policy.get("bake_seconds", 0.0))
    limit = float(rollout.policy.get("max_step_seconds", math.inf))
    elapsed = now - rollout.step_started_at
    if rollout.phase is Phase.PAUSED:
        return "paused: never advances, still rolls back on a failing gate; resume to go on"
    if elapsed < bake:
        return (f"bake ends in {bake - elapsed:.0f} s; an inconclusive step rolls back in "
                f"{limit - elapsed:.0f} s")  # fmt: skip
    return (f"advances at the next analysis where every gate passes; an inconclusive step rolls "
            f"back in {max(0.0, limit - elapsed):.0f} s")  # fmt: skip


def _controller(rollout: RolloutState, store: RolloutStore, now: float) -> str:
    lease = store.lease(rollout.model)
    if lease is None:
        return "none running"
    beat = f"last heartbeat {now - lease.heartbeat_at:.1f} s ago"
    if lease.alive(now):
        # a live lease on an ended rollout is its post-promotion watch (controller/watch.py)
        what = "post-promotion watch " if rollout.phase.terminal else ""
        return f"{what}{lease.holder}, {beat} (lease expires in {lease.expires_at - now:.0f} s)"
    return f"none alive ({lease.holder} was the last: {beat})"


def _gateways(rollout: RolloutState, client: httpx.Client) -> list[str]:
    lines, cascades, unanswered = [], [], 0
    for url in rollout.gateways:
        intended = f"{rollout.share:.0%} (generation {rollout.generations.get(url, '?')})"
        try:
            response = client.get(f"{url}{traffic_path(rollout.model)}")
            response.raise_for_status()
            actual: dict[str, Any] = response.json()
        except httpx.HTTPError as exc:
            lines.append(f"{url}: intended {intended}, actual unknown ({exc.__class__.__name__})")
            unanswered += 1
            continue
        share, generation = float(actual["student_share"]), actual["generation"]
        agrees = abs(share - rollout.share) < 1e-9 and generation == rollout.generations.get(url)
        mark = "ok" if agrees else "DIFFERS"
        cascade = actual.get("cascade")
        lines.append(f"{url}: intended {intended}, actual {share:.0%} "
                     f"(generation {generation}) {mark}")  # fmt: skip
        if cascade:  # traffic.mode cascade: the share goes through it
            lines.append(f"  {cascade_note(cascade)}")
            cascades.append(cascade)
    fleet = fleet_cascade_line(cascades, unanswered)
    return (lines or ["(none recorded)"]) + ([fleet] if fleet else [])


def _percent(level: float) -> str:
    return f"{level * 100:g}%"  # 95%, 99.5%


def cascade_note(cascade: dict[str, Any]) -> str:
    """A gateway's cascade as its admin API shows it: the threshold and where it comes from. A
    threshold chosen from data holds ``max_disagreement`` at ``confidence_level`` over every look
    (``gateway.thresholds``); the evidence's own bound at this look is shown beside it. Until
    one is shown safe the cascade runs on its fallback (``min_confidence``, or 1.0: every request
    escalated), which no bound covers."""
    threshold, source = cascade["threshold"], cascade["source"]
    note = f"cascade escalates below {threshold:.2f} ({source}"
    evidence = cascade.get("evidence")
    if source == "chosen" and evidence:
        note += (f" from {evidence['samples']:,} shadowed requests: disagreement <= "
                 f"{cascade['max_disagreement']:g} at {_percent(cascade['confidence_level'])}; "
                 f"this look's bound {evidence['upper_bound']:.4f}")  # fmt: skip
    elif source == "no_evidence":
        seen = cascade.get("samples_seen")
        counted = f" from {seen:,} shadowed requests" if seen else ""
        note += f": no threshold shown safe yet{counted}, a fallback"
    return note + ")"


def fleet_cascade_line(cascades: list[dict[str, Any]], unanswered: int = 0) -> str | None:
    """What holds for several gateways in cascade mode. Each chooses its threshold from its own
    shadowed traffic, so the fleet's disagreement with the teacher (the traffic-weighted mix of
    theirs) is within the largest ``max_disagreement`` when every gateway's threshold is chosen
    and each one's guarantee holds; each fails with chance at most 1 - its confidence_level, so
    all hold at once at confidence at least one less the sum of those chances (a union bound).
    A fixed or fallback threshold has no bound, and is named apart."""
    if len(cascades) < 2:
        return None
    line = f"cascade on {len(cascades)} gateways"
    if unanswered:
        line += f" (and {unanswered} that did not answer)"
    line += f": highest threshold {max(c['threshold'] for c in cascades):.2f}"
    chosen = [c for c in cascades if c["source"] == "chosen"]
    if chosen:
        confidence = max(0.0, 1.0 - sum(1.0 - c["confidence_level"] for c in chosen))
        line += (f"; chosen from data on {len(chosen)}, each within its max_disagreement, all at "
                 f"once at confidence >= {_percent(round(confidence, 6))}")  # fmt: skip
    unbounded = len(cascades) - len(chosen)
    if unbounded:
        line += f"; {unbounded} on a fixed or fallback threshold, with no bound"
    return line

"""``format: slack``: a Slack incoming-webhook message (``text``, plus Block Kit ``blocks``:
a header line and the reason as mrkdwn, the numbers as context)."""

from __future__ import annotations

from typing import Any

from controller.events import EventType, RolloutEvent, Severity

CONTENT_TYPE = "application/json"
SECTION_LIMIT = 3000  # Slack refuses a section text longer than this
ICON = {Severity.INFO: ":large_blue_circle:", Severity.WARNING: ":warning:",
        Severity.CRITICAL: ":red_circle:"}  # fmt: skip


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _escape(text: str) -> str:
    """Slack's three control characters in mrkdwn."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def encode(event: RolloutEvent) -> dict[str, Any]:
    rollout = event.rollout
    name = rollout.get("name") or f"rollout {rollout['rollout_id']}"
    title = event.type.value.replace("_", " ")
    where = (f"step {rollout['step']} of {len(rollout['steps'])}, share "
             f"{event.share_before:.0%} → {event.share_after:.0%}")  # fmt: skip
    headline = f"{ICON[event.level]} {rollout['model']} {name}: {title} ({where})"
    details = [f"controller {event.controller}", event.body()["time"]]
    if rollout.get("student"):
        details.insert(0, f"student {rollout['student']} ({rollout['student_id']})")
    if event.cause:
        details.insert(0, f"cause {event.cause}")
    blocks: list[dict[str, Any]] = [
        {"type": "section",
         "text": {"type": "mrkdwn", "text": _cut(f"*{_escape(headline)}*\n{_escape(event.reason)}",
                                                 SECTION_LIMIT)}},
        {"type": "context",
         "elements": [{"type": "mrkdwn", "text": _cut(_escape(d), SECTION_LIMIT)}
                      for d in details]},
    ]  # fmt: skip
    failing = [g for g in event.numbers.get("gates", []) if g.get("verdict") == "fail"]
    if event.type is EventType.ROLLED_BACK and failing:
        lines = [f"{g['gate']}: {g['value']:.4g} [{g['low']:.4g}, {g['high']:.4g}] vs "
                 f"threshold {g['threshold']:.4g}" for g in failing]  # fmt: skip
        text = _cut("```" + "\n".join(lines) + "```", SECTION_LIMIT)
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": text}})
    return {"text": f"{headline}: {event.reason}", "blocks": blocks}

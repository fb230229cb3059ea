"""How long an operator command waits for a live controller to take it: longer than the longest
tick the rollout's webhook calls can hold, so an `abort` sent while a tick waits on its hooks is
still there when the tick ends (a controller reads commands between ticks)."""

from __future__ import annotations

from controller.operator import command_seconds
from controller.policy import Policy
from controller.rollout_store import RolloutState


def _rollout(**policy: object) -> RolloutState:
    gates = {"gates": {"max_error_rate": 0.01}}
    return RolloutState(policy=Policy.model_validate({**gates, **policy}).model_dump(mode="json"))


def test_a_command_outlives_the_longest_tick_of_webhook_calls() -> None:
    hooks = [
        {"name": "kill-switch", "type": "rollback", "url": "http://a.test/", "timeout_seconds": 5},
        {"name": "smoke", "type": "rollout", "url": "http://b.test/", "timeout_seconds": 5},
    ]
    held = command_seconds(_rollout(interval_seconds=2, webhooks=hooks))
    assert held >= 5 + 5 + 2 * 2  # both hook batches of an advancing tick, then two intervals
    assert command_seconds(_rollout(interval_seconds=2)) == 5.0  # no hooks: as before
    assert command_seconds(_rollout(interval_seconds=30)) == 60.0

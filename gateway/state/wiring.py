"""One model's fleet state, wired from its config (``state.url``): the store, the fleet's
predictions awaiting labels, and this replica's membership. Built once, with the service, so
nothing is swapped in after construction; the membership is joined at start
(``gateway.runtime``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from gateway.config import GatewaySettings
from gateway.feedback import LabelRules
from gateway.metrics import GatewayMetrics
from gateway.state.fleet import FleetMember, StudentHooks
from gateway.state.health import StoreHealth
from gateway.state.predictions import FleetPredictions
from gateway.state.redis_store import RedisStore


@dataclass(frozen=True)
class FleetState:
    store: RedisStore
    predictions: FleetPredictions
    member: FleetMember


def fleet_state(
    settings: GatewaySettings,
    metrics: GatewayMetrics,
    label_rules: LabelRules,
    share: Callable[[], tuple[float, int]],
    apply_share: Callable[[float, int], None],
    student: StudentHooks,
) -> FleetState:
    """``share`` reads this replica's share and generation, ``apply_share`` applies the fleet's;
    ``student`` reads and follows the fleet's student."""
    state, model = settings.state, settings.model
    password = state.password.get_secret_value() if state.password else None
    store = RedisStore(state.url, model, state.key_prefix, state.timeout_ms / 1000.0, password)
    health = StoreHealth(metrics.state_store_up, metrics.state_store_errors, model)
    predictions = FleetPredictions(store, settings.feedback, label_rules, health,
                                   metrics.state_store_fallbacks, model)  # fmt: skip

    async def after_heartbeat() -> None:
        metrics.fleet_replicas.labels(model).set(len(member.replicas))
        await predictions.refresh_pending()

    member = FleetMember(store, state, health, share, apply_share, after_heartbeat, student)
    return FleetState(store, predictions, member)

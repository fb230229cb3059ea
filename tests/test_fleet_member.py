"""FleetMember's own logic against a fake store at its seam (the real Redis is in test_fleet.py):
a share read before a newer one was applied never restores the older one, a store behind this
replica is brought up to it, and the fleet's student is loaded once however many reconciles
race for it."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry

from gateway.config import StateConfig
from gateway.metrics import GatewayMetrics
from gateway.state import fleet as fleet_module
from gateway.state.fleet import FleetMember, StudentHooks
from gateway.state.health import StoreHealth
from gateway.state.redis_store import FleetShare
from gateway.state.registration import ReplicaRegistration

METRICS = GatewayMetrics(CollectorRegistry(), "digits", {"teacher": 1.0, "student": 0.1})


class FakeStore:
    """The share hash in memory; ``read_share`` answers what the test holds out when asked."""

    async def deregister(self, replica_id: str) -> None:
        self.deregistered.append(replica_id)

    def __init__(self, share: FleetShare | None) -> None:
        self.share = share
        self.held_reads: list[asyncio.Future[FleetShare | None]] = []
        self.hold = False
        self.deregistered: list[str] = []
        self.seeded: list[tuple[float, int]] = []

    async def read_share(self) -> FleetShare | None:
        if self.hold:  # the answer was sent now, and is read whenever the test releases it
            waiting: asyncio.Future[FleetShare | None] = asyncio.get_running_loop().create_future()
            self.held_reads.append(waiting)
            answer = self.share
            await waiting
            return answer
        return self.share

    async def seed_share(self, share: float, generation: int) -> tuple[FleetShare, bool]:
        if self.share is None or self.share.generation < generation:
            self.seeded.append((share, generation))
            self.share = FleetShare(share, generation, self.share.student if self.share else None)
            return self.share, True
        return self.share, False

    async def write_share(self, share: float, above: int = 0) -> FleetShare:
        generation = max(self.share.generation if self.share else 0, above) + 1
        self.share = FleetShare(share, generation, self.share.student if self.share else None)
        return self.share

    async def register(self, registration: ReplicaRegistration, ttl: float) -> None:
        pass

    async def replicas(self) -> list[ReplicaRegistration]:
        return []


class Replica:
    """What a gateway applies, as FleetMember sees it."""

    def __init__(self, share: float = 0.0, generation: int = 0) -> None:
        self.applied = (share, generation)
        self.history: list[tuple[float, int]] = []

    def apply(self, share: float, generation: int) -> None:
        self.applied = (share, generation)
        self.history.append(self.applied)


def member(store: FakeStore, replica: Replica, hooks: StudentHooks | None = None) -> FleetMember:
    health = StoreHealth(METRICS.state_store_up, METRICS.state_store_errors, "digits")
    return FleetMember(store, StateConfig(url="redis://fake:6379/0"), health,  # type: ignore[arg-type]
                       lambda: replica.applied, replica.apply, student=hooks)  # fmt: skip


def test_a_read_answered_after_a_newer_share_was_applied_never_restores_the_older() -> None:
    async def main() -> None:
        store, replica = FakeStore(FleetShare(0.3, 5)), Replica(0.3, 5)
        fleet = member(store, replica)
        store.hold = True
        heartbeat = asyncio.create_task(fleet._reconcile())  # reads generation 5...
        while not store.held_reads:
            await asyncio.sleep(0)
        store.hold = False
        await fleet.write_share(0.6)  # ...and a PUT applies generation 6 meanwhile
        store.held_reads[0].set_result(None)
        await heartbeat
        assert replica.applied == (0.6, 6) and replica.history == [(0.6, 6)]

    asyncio.run(main())


def test_a_store_behind_this_replica_takes_its_share_and_an_empty_one_its_seed() -> None:
    async def main() -> None:
        # Redis restarted empty and another replica seeded it first, from an older share
        store, replica = FakeStore(FleetShare(0.0, 1)), Replica(0.3, 5)
        await member(store, replica)._reconcile()
        assert store.share == FleetShare(0.3, 5) and replica.applied == (0.3, 5)
        empty, newcomer = FakeStore(None), Replica(0.0, 0)
        await member(empty, newcomer).join()
        assert empty.seeded == [(0.0, 1)] and newcomer.applied == (0.0, 1)

    asyncio.run(main())


def test_the_fleets_student_is_loaded_once_however_many_reconciles_race() -> None:
    async def main() -> None:
        store, replica = FakeStore(FleetShare(0.0, 2, "51e7d5a045e3778c")), Replica(0.0, 2)
        served: list[str | None] = [None]
        loads: list[str] = []

        async def load(model_id: str) -> None:
            loads.append(model_id)
            await asyncio.sleep(0.01)  # reading and warming the file takes a while
            served[0] = model_id

        fleet = member(store, replica, StudentHooks(lambda: served[0], load))
        await asyncio.gather(fleet._reconcile(), fleet._reconcile(), fleet._reconcile())
        assert loads == ["51e7d5a045e3778c"] and served == ["51e7d5a045e3778c"]

    asyncio.run(main())


def test_leaving_waits_for_a_task_that_will_not_end_only_so_long(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A listener cancelled while redis-py reads its subscription can wait on that connection
    in its close: leaving (on shutdown) goes on without it after LEAVE_SECONDS (here 0.2 s)."""
    monkeypatch.setattr(fleet_module, "LEAVE_SECONDS", 0.2)

    async def main() -> None:
        store = FakeStore(FleetShare(0.0, 1))
        fleet = member(store, Replica())
        ended = asyncio.Event()

        async def stubborn() -> None:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                await ended.wait()  # never set: a close that does not come back

        fleet._tasks = [asyncio.create_task(stubborn(), name="fleet-share-listener")]
        await asyncio.sleep(0)
        loop = asyncio.get_running_loop()
        started = loop.time()
        await fleet.leave()
        assert loop.time() - started < 0.2 + 1.0
        assert store.deregistered == [fleet.replica_id]  # it still left the registry
        ended.set()

    asyncio.run(main())

"""One replica's part in a fleet: it takes the fleet's share from the store, applies every change
(published at once, and re-read at every heartbeat in case a message was missed), registers
itself with a TTL, and counts the replicas it sees.

The request path never waits for any of this: the share it routes by is in memory, applied here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from redis.exceptions import RedisError

from gateway.config import StateConfig
from gateway.errors import Conflict, GatewayError
from gateway.state.errors import StoreUnavailable
from gateway.state.health import StoreHealth
from gateway.state.redis_store import FleetShare, RedisStore
from gateway.state.registration import ReplicaRegistration

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class StudentHooks:
    """How a replica tells which student it serves, and loads the fleet's."""

    served: Callable[[], str | None]
    load: Callable[[str], Awaitable[None]]


def default_replica_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


LEAVE_SECONDS = 2.0
"""How long leaving waits for the listener and the heartbeat to end once cancelled."""


class FleetMember:
    def __init__(
        self,
        store: RedisStore,
        config: StateConfig,
        health: StoreHealth,
        applied: Callable[[], tuple[float, int]],
        apply: Callable[[float, int], None],
        on_heartbeat: Callable[[], Any] | None = None,
        student: StudentHooks | None = None,
    ) -> None:
        self._store = store
        self._config = config
        self._health = health
        self._applied = applied
        self._apply = apply
        self._on_heartbeat = on_heartbeat
        self._student = student
        self.student_error: str | None = None  # why the fleet's student could not be loaded here
        self._refused_student: str | None = None
        self._student_lock = asyncio.Lock()
        self.replica_id = config.replica_id or default_replica_id()
        self.advertise_url = config.advertise_url or ""
        # where the controller scrapes this replica: beside the admin API unless said otherwise
        self.metrics_url = config.advertise_metrics_url or (
            f"{self.advertise_url}/metrics" if self.advertise_url else ""
        )
        self.fleet_share: FleetShare | None = None  # what the store held, last we read it
        self.replicas: list[ReplicaRegistration] = []  # the live ones, last we read them
        self._started = time.time()
        self._tasks: list[asyncio.Task[None]] = []
        self.draining = False

    async def join(self) -> None:
        """Takes the fleet's share (the config's seeds an empty store). With the store down the
        replica starts anyway, at its config's share, and converges when the store returns."""
        share, generation = self._applied()
        try:
            await self._reconcile(seed=(share, max(generation, 1)))
            await self._register()
            self.replicas = await self._store.replicas()
        except StoreUnavailable as exc:
            self._health.failed("join", exc)

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._listen(), name="fleet-share-listener"),
                       asyncio.create_task(self._beat(), name="fleet-heartbeat")]  # fmt: skip

    async def leave(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            # bounded: a listener cancelled while redis-py reads its subscription may wait on
            # that connection in its pubsub close (a replica once held its shutdown 30 s, until
            # SIGKILL); what is left then ends with the process
            _, pending = await asyncio.wait(self._tasks, timeout=LEAVE_SECONDS)
            if pending:
                log.warning("fleet tasks still closing after %.0f s: %s", LEAVE_SECONDS,
                            ", ".join(task.get_name() for task in pending))  # fmt: skip
        with contextlib.suppress(StoreUnavailable):  # else its registration expires by itself
            await self._store.deregister(self.replica_id)

    async def write_share(self, share: float) -> FleetShare:
        """``PUT /admin/traffic``: the fleet's new share, applied here at once (the others hear
        it published). Raises ``StoreUnavailable`` (503) when the store cannot take it."""
        written = await self._write("share", self._store.write_share(share, self._applied()[1]))
        self.fleet_share = written
        if written.generation > self._applied()[1]:
            self._apply(written.share, written.generation)
        await self._register_quietly()
        return written

    async def write_student(self, model_id: str) -> None:
        """``PUT /admin/student``: the fleet's student, refused (409) unless the fleet's share is
        0; 503 when the store cannot take it."""
        refused_at = await self._write("student", self._store.write_student(model_id))
        if refused_at is not None:
            raise Conflict(f"the fleet's student share is {refused_at:.4g}: a student is "
                           "changed only at share 0 (set it to 0 first)")  # fmt: skip

    async def _write(self, what: str, write: Awaitable[T]) -> T:
        """An admin write to the store; a store that cannot take it is a 503 that says so."""
        try:
            written = await write
        except StoreUnavailable as exc:
            self._health.failed(f"write_{what}", exc)
            raise StoreUnavailable(
                f"{exc.message}: the fleet's {what} was not changed; retry when it is back"
            ) from exc
        self._health.succeeded()
        return written

    # -- background ----------------------------------------------------------------------------

    async def _reconcile(self, seed: tuple[float, int] | None = None) -> None:
        """Reads the fleet's share and applies it if it is newer than (or, at the same
        generation, other than) what this replica applies; never an older one: a read answered
        after a newer change was applied (the listener's, the heartbeat's, a PUT's) would
        restore the old share until the next heartbeat. A store that is empty (new, or Redis
        restarted without its data) or behind this replica is seeded: with the config's share at
        start-up, with the share applied here later (fail static); the newest generation wins."""
        fleet = await self._store.read_share()
        held = self._applied()
        if fleet is None or fleet.generation < held[1]:
            had = "no share" if fleet is None else f"generation {fleet.generation}"
            share, generation = seed if fleet is None and seed else held
            fleet, seeded = await self._store.seed_share(share, max(generation, 1))
            if seeded:
                log.info("state store had %s: seeded it with %.4g (generation %d)", had,
                         fleet.share, fleet.generation)  # fmt: skip
        self._health.succeeded()
        self.fleet_share = fleet
        share, generation = self._applied()  # again: a change may have been applied meanwhile
        if fleet.generation > generation or (
            fleet.generation == generation and fleet.share != share
        ):
            self._apply(fleet.share, fleet.generation)
        await self._follow_student(fleet.student)

    async def _follow_student(self, wanted: str | None) -> None:
        """Loads the fleet's student when it is not the one served here, one load at a time
        (the listener and the heartbeat both reconcile: without the lock both would load it).
        One that cannot be loaded (not in this replica's registry, another signature) is said
        once, reported in the registration, and not tried again until the fleet names another."""
        hooks = self._student
        if hooks is None or wanted is None or wanted in (hooks.served(), self._refused_student):
            return
        async with self._student_lock:
            if wanted in (hooks.served(), self._refused_student):
                return  # loaded (or refused) while this one waited
            try:
                await hooks.load(wanted)
            except GatewayError as exc:
                self._refused_student, self.student_error = wanted, exc.message
                log.error("the fleet's student %s cannot be served here: %s", wanted,
                          exc.message)  # fmt: skip
                return
            self._refused_student = self.student_error = None

    async def _listen(self) -> None:
        """Applies published changes as they come; on any error, subscribes again after a
        heartbeat (the heartbeat's own re-read covers the gap)."""
        while True:
            pubsub = self._store.pubsub()
            try:
                await pubsub.subscribe(self._store.channel)
                await self._reconcile()  # what changed while we were not subscribed
                async for _ in pubsub.listen():
                    await self._reconcile()
                    await self._register()
            except StoreUnavailable as exc:
                self._health.failed("subscribe", exc)
            except (RedisError, OSError) as exc:  # from the subscription itself
                self._health.failed("subscribe", StoreUnavailable(
                    f"state store {self._store.url_for_humans} unreachable (subscribe): "
                    f"{type(exc).__name__}: {exc}"))  # fmt: skip
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
            await asyncio.sleep(self._config.heartbeat_seconds)

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self._config.heartbeat_seconds)
            try:
                await self._reconcile()
                await self._register()
                self.replicas = await self._store.replicas()
                if self._on_heartbeat is not None:
                    await self._on_heartbeat()
            except StoreUnavailable as exc:
                self._health.failed("heartbeat", exc)

    async def _register(self) -> None:
        share, generation = self._applied()
        registration = ReplicaRegistration(
            id=self.replica_id,
            url=self.advertise_url,
            metrics_url=self.metrics_url,
            student_share=share,
            generation=generation,
            pid=os.getpid(),
            started_at=self._started,
            heartbeat_at=time.time(),
            draining=self.draining,
            student_id=self._student.served() if self._student is not None else None,
            student_error=self.student_error,
        )
        await self._store.register(registration, self._config.replica_ttl_seconds)

    async def _register_quietly(self) -> None:
        try:
            await self._register()
        except StoreUnavailable as exc:
            self._health.failed("register", exc)

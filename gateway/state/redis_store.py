"""The fleet's state in Redis: one client, a few atomic scripts, and errors turned into
``StoreUnavailable``.

The keys are named in ``gateway.state.keys`` (which the controller reads too), the scripts are in
``gateway.state.scripts`` (which the controller runs too), and a registration is a
``gateway.state.registration.ReplicaRegistration``.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import redis.asyncio as aioredis
from pydantic import ValidationError
from redis.asyncio.connection import Connection
from redis.exceptions import NoScriptError, RedisError, ResponseError

from gateway.state.errors import StoreUnavailable
from gateway.state.keys import StoreKeys, without_password
from gateway.state.registration import ReplicaRegistration
from gateway.state.scripts import EXCHANGE, SEED_SHARE, SET_SHARE, SET_STUDENT, exchange_keys
from gateway.validation import describe_errors

log = logging.getLogger(__name__)
T = TypeVar("T")
CLASSES_DTYPE = np.dtype("<i4")


@dataclass(frozen=True)
class FleetShare:
    share: float
    generation: int
    student: str | None = None  # the registry id every replica should serve, once one was set


@dataclass(frozen=True)
class Pending:
    """A prediction to remember."""

    request_id: str
    backend: str
    classes: np.ndarray


@dataclass(frozen=True)
class Labelled:
    """What the store held for a request whose label just arrived."""

    outcome: str  # ok, repeat (the same labels again), missing, labelled, shape
    backend: str = ""
    classes: np.ndarray | None = None
    other: np.ndarray | None = None
    shape: str = ""


def shape_text(shape: Sequence[int]) -> str:
    return ",".join(map(str, shape))


def _labelled(found: list[bytes], shape: Sequence[int]) -> Labelled:
    outcome = found[0].decode()
    if outcome == "shape":
        return Labelled(outcome, shape=found[1].decode())
    if outcome not in ("ok", "repeat"):
        return Labelled(outcome)
    shape_str = shape_text(shape)
    other = _classes(found[3], shape_str) if found[3] else None
    return Labelled(outcome, found[1].decode(), _classes(found[2], shape_str), other)


@dataclass(frozen=True)
class Limits:
    """How long, and how many, predictions wait in the store (``feedback.*``)."""

    ttl_seconds: float
    max_entries: int
    max_bytes: int


def _classes(raw: bytes, shape: str) -> np.ndarray:
    dims = tuple(int(d) for d in shape.split(",")) if shape else ()
    return np.frombuffer(raw, dtype=CLASSES_DTYPE).astype(np.int64).reshape(dims)


class RedisStore:
    """Every call raises ``StoreUnavailable`` when Redis does not answer within the timeout."""

    def __init__(
        self,
        url: str,
        model: str,
        prefix: str,
        timeout_seconds: float,
        password: str | None = None,
    ) -> None:
        self.url = url
        self._client: aioredis.Redis = aioredis.Redis.from_url(
            url,
            password=password,
            socket_timeout=timeout_seconds,
            socket_connect_timeout=timeout_seconds,
            health_check_interval=0,
        )
        self.keys = StoreKeys(prefix, model)
        self.share_key = self.keys.share
        self.channel = self.keys.share_changed
        self._set_share = self._client.register_script(SET_SHARE.source)
        self._seed_share = self._client.register_script(SEED_SHARE.source)
        self._set_student = self._client.register_script(SET_STUDENT.source)
        self._connection: Connection | None = None  # the exchange's own (_on_own_connection)
        # Called by its SHA1, loaded when Redis says it does not know it.
        self._sha = hashlib.sha1(EXCHANGE.encode()).hexdigest()
        self._unreadable: set[str] = set()  # replicas whose registration was said unreadable

    async def close(self) -> None:
        if self._connection is not None:
            await self._client.connection_pool.release(self._connection)
            self._connection = None
        await self._client.aclose()

    async def _call(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        try:
            return await call()
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(
                f"state store {self.url_for_humans} unreachable ({what}): "
                f"{type(exc).__name__}: {exc}"
            ) from exc

    @property
    def url_for_humans(self) -> str:
        return without_password(self.url)

    async def ping(self) -> None:
        await self._call("ping", self._client.ping)

    # -- the share ---------------------------------------------------------------------------

    async def read_share(self) -> FleetShare | None:
        values = await self._call("read_share", lambda: self._client.hmget(
            self.share_key, "share", "generation", "student"))  # fmt: skip
        if values[0] is None:
            return None
        student = values[2].decode() if isinstance(values[2], bytes) else values[2]
        return FleetShare(float(values[0]), int(values[1] or 0), student)

    async def seed_share(self, share: float, generation: int) -> tuple[FleetShare, bool]:
        """The fleet's share, set to ``share`` at ``generation`` when the store had none or an
        older generation than that; and whether it was."""
        values = await self._call("seed_share", lambda: self._seed_share(
            keys=SEED_SHARE.keys(self.keys), args=[repr(share), generation]))  # fmt: skip
        student = values[2].decode() if isinstance(values[2], bytes) else values[2]
        return FleetShare(float(values[0]), int(values[1]), student), bool(values[3])

    async def write_share(self, share: float, above: int = 0) -> FleetShare:
        """The fleet's new share, at a generation above both the store's and ``above`` (the
        newest the writer has applied: a store that lost its data restarts its count)."""
        generation = await self._call("write_share", lambda: self._set_share(
            keys=SET_SHARE.keys(self.keys), args=[repr(share), above]))  # fmt: skip
        return FleetShare(share, int(generation))

    async def write_student(self, model_id: str) -> float | None:
        """The fleet's student, unless the fleet's share is not 0: then that share."""
        answer = await self._call("write_student", lambda: self._set_student(
            keys=SET_STUDENT.keys(self.keys), args=[model_id]))  # fmt: skip
        return None if answer[0] == b"ok" else float(answer[1])

    def pubsub(self) -> aioredis.client.PubSub:
        return self._client.pubsub(ignore_subscribe_messages=True)

    # -- the replica registry -----------------------------------------------------------------

    async def register(self, registration: ReplicaRegistration, ttl_seconds: float) -> None:
        async def write() -> None:
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.set(self.keys.replica(registration.id), registration.model_dump_json(),
                         px=int(ttl_seconds * 1000))  # fmt: skip
                pipe.sadd(self.keys.replicas, registration.id)
                await pipe.execute()

        await self._call("register", write)

    async def deregister(self, replica_id: str) -> None:
        async def remove() -> None:
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.delete(self.keys.replica(replica_id))
                pipe.srem(self.keys.replicas, replica_id)
                await pipe.execute()

        await self._call("deregister", remove)

    async def replicas(self) -> list[ReplicaRegistration]:
        """The live replicas' registrations; expired ones are pruned from the id set. One this
        version cannot read is left out (said once): the gateway only counts them."""

        async def read() -> list[ReplicaRegistration]:
            members = await self._client.smembers(self.keys.replicas)
            ids = sorted(m.decode() if isinstance(m, bytes) else m for m in members)
            if not ids:
                return []
            records = await self._client.mget([self.keys.replica(i) for i in ids])
            gone = [i for i, record in zip(ids, records, strict=True) if record is None]
            if gone:
                await self._client.srem(self.keys.replicas, *gone)
            readable = (self._readable(i, record) for i, record in zip(ids, records, strict=True)
                        if record is not None)  # fmt: skip
            return [registration for registration in readable if registration is not None]

        return await self._call("replicas", read)

    def _readable(self, replica_id: str, record: bytes | str) -> ReplicaRegistration | None:
        try:
            return ReplicaRegistration.model_validate_json(record)
        except ValidationError as exc:
            if replica_id not in self._unreadable:
                self._unreadable.add(replica_id)
                log.warning("replica %s's registration is not one this version reads: %s",
                            replica_id, describe_errors(exc))  # fmt: skip
            return None

    # -- predictions awaiting labels ----------------------------------------------------------

    async def exchange(
        self,
        pending: Sequence[Pending],
        pairs: Sequence[tuple[str, np.ndarray]],
        labels: Sequence[tuple[str, np.ndarray]],
        limits: Limits,
    ) -> tuple[int, list[Labelled]]:
        """One round trip for an event-loop turn: every prediction to remember, shadow answer to
        pair and label to take. Returns the predictions now waiting (-1 when none was written)
        and what each label found, in order."""
        keys = exchange_keys(self.keys, [*(item.request_id for item in pending),
                                         *(request_id for request_id, _ in pairs),
                                         *(request_id for request_id, _ in labels)])  # fmt: skip
        args: list[Any] = [int(limits.ttl_seconds * 1000), limits.max_entries, limits.max_bytes,
                           len(pending), len(pairs), len(labels)]  # fmt: skip
        for item in pending:
            classes = item.classes.astype(CLASSES_DTYPE).tobytes()
            args += [item.backend, classes, shape_text(item.classes.shape)]
        for _, other in pairs:
            args += [other.astype(CLASSES_DTYPE).tobytes(), shape_text(other.shape)]
        for _, given in labels:
            args += [shape_text(given.shape), given.astype(CLASSES_DTYPE).tobytes()]
        command = ("EVALSHA", self._sha, len(keys), *keys, *args)

        async def run() -> list[Any]:
            try:
                return list(await self._on_own_connection(*command))
            except NoScriptError:  # a new or restarted Redis: load it, once, and again
                await self._client.script_load(EXCHANGE)
                return list(await self._on_own_connection(*command))

        answers = await self._call("exchange", run)
        shapes = [given.shape for _, given in labels]
        found = [
            _labelled(answer, shape) for answer, shape in zip(answers[1:], shapes, strict=True)
        ]
        return int(answers[0]), found

    async def _on_own_connection(self, *command: Any) -> Any:
        """The hot path's command on a connection of its own, kept between calls: the client's
        pool and retry wrappers cost a third of each call's CPU (95 against 140 us, uvloop),
        and the exchange runs one call at a time. A connection that fails is dropped."""
        connection = self._connection
        if connection is None:
            connection = await self._client.connection_pool.get_connection()
            self._connection = connection
        try:
            await connection.send_command(*command)
            return await connection.read_response()
        except ResponseError:
            raise  # Redis answered (NOSCRIPT, say): the connection is fine
        except BaseException:
            self._connection = None
            await connection.disconnect()
            await self._client.connection_pool.release(connection)
            raise

    async def pending_count(self) -> tuple[int, int]:
        """Predictions waiting, and the bytes they are charged."""

        async def read() -> tuple[int, int]:
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.zcard(self.keys.prediction_index)
                pipe.get(self.keys.prediction_bytes)
                count, size = await pipe.execute()
            return int(count), int(size or 0)

        return await self._call("pending", read)

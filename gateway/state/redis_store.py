"""The fleet's state in Redis: one client, a few atomic scripts, and errors turned into
``StoreUnavailable``.

Keys, under ``<prefix>:<model>:`` (named in ``gateway.state.keys``, which the controller reads too):
- ``share``: hash {share, generation, student}; a change is published on channel
  ``share-changed``. ``student`` is the registry id every replica serves as the student.
- ``replica:<id>``: one replica's registration (JSON), expiring after the replica TTL; the set
  ``replicas`` lists the ids, pruned of those whose registration expired.
- ``p:<request id>``: a prediction awaiting its label, hash {b: backend, c: classes (int32
  bytes), s: shape, o: the other backend's classes, l: labelled}; ``p-index`` orders them by
  expiry, ``p-size`` and ``p-bytes`` charge them against ``feedback.max_bytes``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import redis.asyncio as aioredis
from redis.asyncio.connection import Connection
from redis.exceptions import NoScriptError, RedisError, ResponseError

from gateway.state.errors import StoreUnavailable
from gateway.state.keys import StoreKeys, without_password

T = TypeVar("T")
CLASSES_DTYPE = np.dtype("<i4")
ENTRY_OVERHEAD = 370
"""What a prediction costs Redis (7.0, measured with ``INFO memory``: tests/test_fleet_limits.py)
beyond its id, stored three times (its key, the index's member, the sizes' field), and its
classes, which a hash keeps in about twice their bytes: ``3 * id + 2 * classes + 370``. So
``feedback.max_bytes`` bounds the memory the predictions take in the store, as it bounds this
process's memory with ``state.url: memory`` (about 400 bytes there beyond the id and classes)."""

SET_SHARE_SCRIPT = """
-- the controller writes the share with this script too (controller.fleet_store). ARGV[2], the
-- newest generation the writer knows a replica applies, is a floor: after Redis lost its data
-- the counter restarts at 1, and a write below what the replicas hold would be ignored by them
-- and then overwritten by their re-seeding with the older share.
local generation = redis.call('HINCRBY', KEYS[1], 'generation', 1)
local floor = tonumber(ARGV[2] or '0')
if generation <= floor then
  generation = floor + 1
  redis.call('HSET', KEYS[1], 'generation', generation)
end
redis.call('HSET', KEYS[1], 'share', ARGV[1])
redis.call('PUBLISH', KEYS[2], generation)
return generation
"""
SET_STUDENT_SCRIPT = """
-- the student a fleet serves (a registry id), only while the share is 0; the controller writes
-- it with this script too. Returns {'ok'} or {'share', <the share that refused it>}.
local share = redis.call('HGET', KEYS[1], 'share')
if share and tonumber(share) ~= 0 then return {'share', share} end
redis.call('HSET', KEYS[1], 'student', ARGV[1])
redis.call('PUBLISH', KEYS[2], 'student')
return {'ok'}
"""
# The newest share wins: an empty store (new, or a Redis restarted without its data), or one
# behind the replica's own generation (another replica seeded it first with an older share), is
# set to the replica's; the change is published. Returns share, generation, student and
# whether it was set.
_SEED_SHARE = """
local held = redis.call('HMGET', KEYS[1], 'share', 'generation')
local seeded = not held[1] or tonumber(held[2] or '0') < tonumber(ARGV[2])
if seeded then
  redis.call('HSET', KEYS[1], 'share', ARGV[1], 'generation', ARGV[2])
  redis.call('PUBLISH', KEYS[2], ARGV[2])
end
local now = redis.call('HMGET', KEYS[1], 'share', 'generation', 'student')
table.insert(now, seeded and 1 or 0)
return now
"""
# One call per event-loop turn. ARGV: prefix, ttl (ms), max entries, max bytes, and how many
# predictions, shadow answers and labels follow: (id, backend, classes, shape) each, then (id,
# classes, shape), then (id, shape). Returns the predictions now waiting, then one answer per
# label. A label marks its prediction labelled atomically: of two replicas given the same label
# at once, one gets 'ok' and the other 'labelled'. Expiry is by Redis's own clock (TIME, as
# PEXPIRE's), never a replica's: a replica whose clock runs ahead cannot expire the others'.
_EXCHANGE = """
local p = ARGV[1]
local index, sizes, total = p .. 'p-index', p .. 'p-size', p .. 'p-bytes'
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local ttl = tonumber(ARGV[2])
local max_entries, max_bytes = tonumber(ARGV[3]), tonumber(ARGV[4])
local remembered, paired, labelled = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local function forget(id)
  redis.call('DEL', p .. 'p:' .. id)
  redis.call('DECRBY', total, tonumber(redis.call('HGET', sizes, id) or '0'))
  redis.call('HDEL', sizes, id)
  redis.call('ZREM', index, id)
end
local at = 8
for _ = 1, remembered do
  local id, classes = ARGV[at], ARGV[at + 2]
  if redis.call('ZSCORE', index, id) then forget(id) end
  local key = p .. 'p:' .. id
  redis.call('HSET', key, 'b', ARGV[at + 1], 'c', classes, 's', ARGV[at + 3])
  redis.call('PEXPIRE', key, ttl)
  local size = 3 * #id + 2 * #classes + ENTRY_OVERHEAD
  redis.call('ZADD', index, now + ttl, id)
  redis.call('HSET', sizes, id, size)
  redis.call('INCRBY', total, size)
  at = at + 4
end
if remembered > 0 then
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', index, '-inf', now, 'LIMIT', 0, 256)) do
    forget(id)
  end
  while redis.call('ZCARD', index) > max_entries
      or tonumber(redis.call('GET', total) or '0') > max_bytes do
    local oldest = redis.call('ZRANGE', index, 0, 0)[1]
    if not oldest then break end
    forget(oldest)
  end
end
for _ = 1, paired do
  local key = p .. 'p:' .. ARGV[at]
  local found = redis.call('HMGET', key, 's', 'l', 'o')
  if found[1] and not found[2] and not found[3] and found[1] == ARGV[at + 2] then
    redis.call('HSET', key, 'o', ARGV[at + 1])
  end
  at = at + 3
end
local answers = {remembered > 0 and redis.call('ZCARD', index) or -1}
for _ = 1, labelled do
  local key = p .. 'p:' .. ARGV[at]
  local found = redis.call('HMGET', key, 'b', 'c', 's', 'o', 'l')
  if not found[1] then
    table.insert(answers, {'missing'})
  elseif found[5] == ARGV[at + 2] then  -- the same labels again: a retry, answered alike
    table.insert(answers, {'repeat', found[1], found[2], found[4] or ''})
  elseif found[5] then
    table.insert(answers, {'labelled'})
  elseif found[3] ~= ARGV[at + 1] then
    table.insert(answers, {'shape', found[3]})
  else
    redis.call('HSET', key, 'l', ARGV[at + 2])
    table.insert(answers, {'ok', found[1], found[2], found[4] or ''})
  end
  at = at + 3
end
return answers
""".replace("ENTRY_OVERHEAD", str(ENTRY_OVERHEAD))


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
        self._set_share = self._client.register_script(SET_SHARE_SCRIPT)
        self._seed_share = self._client.register_script(_SEED_SHARE)
        self._set_student = self._client.register_script(SET_STUDENT_SCRIPT)
        self._connection: Connection | None = None  # the exchange's own (_on_own_connection)
        # Called by its SHA1, loaded when Redis says it does not know it.
        self._sha = hashlib.sha1(_EXCHANGE.encode()).hexdigest()

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
            keys=[self.share_key, self.channel], args=[repr(share), generation]))  # fmt: skip
        student = values[2].decode() if isinstance(values[2], bytes) else values[2]
        return FleetShare(float(values[0]), int(values[1]), student), bool(values[3])

    async def write_share(self, share: float, above: int = 0) -> FleetShare:
        """The fleet's new share, at a generation above both the store's and ``above`` (the
        newest the writer has applied: a store that lost its data restarts its count)."""
        generation = await self._call("write_share", lambda: self._set_share(
            keys=[self.share_key, self.channel], args=[repr(share), above]))  # fmt: skip
        return FleetShare(share, int(generation))

    async def write_student(self, model_id: str) -> float | None:
        """The fleet's student, unless the fleet's share is not 0: then that share."""
        answer = await self._call("write_student", lambda: self._set_student(
            keys=[self.share_key, self.channel], args=[model_id]))  # fmt: skip
        return None if answer[0] == b"ok" else float(answer[1])

    def pubsub(self) -> aioredis.client.PubSub:
        return self._client.pubsub(ignore_subscribe_messages=True)

    # -- the replica registry -----------------------------------------------------------------

    async def register(self, replica_id: str, record: dict[str, Any], ttl_seconds: float) -> None:
        async def write() -> None:
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.set(self.keys.replica(replica_id), json.dumps(record),
                         px=int(ttl_seconds * 1000))  # fmt: skip
                pipe.sadd(self.keys.replicas, replica_id)
                await pipe.execute()

        await self._call("register", write)

    async def deregister(self, replica_id: str) -> None:
        async def remove() -> None:
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.delete(self.keys.replica(replica_id))
                pipe.srem(self.keys.replicas, replica_id)
                await pipe.execute()

        await self._call("deregister", remove)

    async def replicas(self) -> list[dict[str, Any]]:
        """The live replicas' registrations; expired ones are pruned from the id set."""

        async def read() -> list[dict[str, Any]]:
            members = await self._client.smembers(self.keys.replicas)
            ids = sorted(m.decode() if isinstance(m, bytes) else m for m in members)
            if not ids:
                return []
            records = await self._client.mget([self.keys.replica(i) for i in ids])
            gone = [i for i, record in zip(ids, records, strict=True) if record is None]
            if gone:
                await self._client.srem(self.keys.replicas, *gone)
            return [json.loads(record) for record in records if record is not None]

        return await self._call("replicas", read)

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
        args: list[Any] = [self.keys.prefix, int(limits.ttl_seconds * 1000),
                           limits.max_entries, limits.max_bytes, len(pending), len(pairs),
                           len(labels)]  # fmt: skip
        for item in pending:
            classes = item.classes.astype(CLASSES_DTYPE).tobytes()
            args += [item.request_id, item.backend, classes, shape_text(item.classes.shape)]
        for request_id, other in pairs:
            args += [request_id, other.astype(CLASSES_DTYPE).tobytes(), shape_text(other.shape)]
        for request_id, given in labels:
            args += [request_id, shape_text(given.shape), given.astype(CLASSES_DTYPE).tobytes()]

        async def run() -> list[Any]:
            try:
                return list(await self._on_own_connection("EVALSHA", self._sha, 0, *args))
            except NoScriptError:  # a new or restarted Redis: load it, once, and again
                await self._client.script_load(_EXCHANGE)
                return list(await self._on_own_connection("EVALSHA", self._sha, 0, *args))

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

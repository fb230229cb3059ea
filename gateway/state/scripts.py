"""The fleet's Lua scripts, shared by the gateways (``redis_store``) and the controller
(``controller.fleet_store``). A script never names a key: each is given its keys as ``KEYS``,
built here from ``gateway.state.keys``, the one place the layout is written (the exchange evicts
a prediction by the key it finds in the index, which was one of its ``KEYS`` when written).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gateway.state.keys import StoreKeys

ENTRY_OVERHEAD = 343
"""What a prediction costs Redis (7.0, measured with ``INFO memory``: tests/test_fleet_limits.py)
beyond its key, stored three times (the key itself, the index's member, the sizes' field), its
classes, which a hash keeps in about twice their bytes, and its backend (``student``, or a
cascade's lane, ``student@cascade:false``): ``3 * key + 2 * classes + backend + 343`` (350 for
a plain backend's 7 bytes, as measured). So
``feedback.max_bytes`` bounds the memory the predictions take in the store, as it bounds this
process's memory with ``state.url: memory`` (about 400 bytes there beyond the id and classes)."""


@dataclass(frozen=True)
class ShareScript:
    """A script on the share hash. KEYS: the hash, then the channel a change is published on."""

    source: str

    @staticmethod
    def keys(keys: StoreKeys) -> list[str]:
        return [keys.share, keys.share_changed]


SET_SHARE = ShareScript("""
-- ARGV[2], the newest generation the writer knows a replica applies, is a floor: after Redis
-- lost its data the counter restarts at 1, and a write below what the replicas hold would be
-- ignored by them and then overwritten by their re-seeding with the older share.
local generation = redis.call('HINCRBY', KEYS[1], 'generation', 1)
local floor = tonumber(ARGV[2] or '0')
if generation <= floor then
  generation = floor + 1
  redis.call('HSET', KEYS[1], 'generation', generation)
end
redis.call('HSET', KEYS[1], 'share', ARGV[1])
redis.call('PUBLISH', KEYS[2], generation)
return generation
""")
SET_STUDENT = ShareScript("""
-- the student a fleet serves (a registry id), only while the share is 0. Returns {'ok'} or
-- {'share', <the share that refused it>}.
local share = redis.call('HGET', KEYS[1], 'share')
if share and tonumber(share) ~= 0 then return {'share', share} end
redis.call('HSET', KEYS[1], 'student', ARGV[1])
redis.call('PUBLISH', KEYS[2], 'student')
return {'ok'}
""")
SEED_SHARE = ShareScript("""
-- The newest share wins: an empty store (new, or a Redis restarted without its data), or one
-- behind the replica's own generation (another replica seeded it first with an older share), is
-- set to the replica's; the change is published. Returns share, generation, student and
-- whether it was set.
local held = redis.call('HMGET', KEYS[1], 'share', 'generation')
local seeded = not held[1] or tonumber(held[2] or '0') < tonumber(ARGV[2])
if seeded then
  redis.call('HSET', KEYS[1], 'share', ARGV[1], 'generation', ARGV[2])
  redis.call('PUBLISH', KEYS[2], ARGV[2])
end
local now = redis.call('HMGET', KEYS[1], 'share', 'generation', 'student')
table.insert(now, seeded and 1 or 0)
return now
""")

EXCHANGE = """
-- One call per event-loop turn. KEYS: the index, the sizes, the bytes charged, then the key of
-- each prediction to remember, each shadow answer to pair and each label to take, in that order.
-- ARGV: ttl (ms), max entries, max bytes, and how many of each follow: (backend, classes, shape)
-- each, then (classes, shape), then (shape, labels). Returns the predictions now waiting, then
-- one answer per label. A label marks its prediction labelled atomically: of two replicas given
-- the same label at once, one gets 'ok' and the other 'labelled'. Expiry is by Redis's own clock
-- (TIME, as PEXPIRE's), never a replica's: a replica whose clock runs ahead cannot expire the
-- others'.
local index, sizes, total = KEYS[1], KEYS[2], KEYS[3]
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local ttl = tonumber(ARGV[1])
local max_entries, max_bytes = tonumber(ARGV[2]), tonumber(ARGV[3])
local remembered, paired, labelled = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local function forget(key)
  redis.call('DEL', key)
  redis.call('DECRBY', total, tonumber(redis.call('HGET', sizes, key) or '0'))
  redis.call('HDEL', sizes, key)
  redis.call('ZREM', index, key)
end
local at, k = 7, 4
for _ = 1, remembered do
  local key, classes = KEYS[k], ARGV[at + 1]
  if redis.call('ZSCORE', index, key) then forget(key) end
  redis.call('HSET', key, 'b', ARGV[at], 'c', classes, 's', ARGV[at + 2])
  redis.call('PEXPIRE', key, ttl)
  local size = 3 * #key + 2 * #classes + #ARGV[at] + ENTRY_OVERHEAD
  redis.call('ZADD', index, now + ttl, key)
  redis.call('HSET', sizes, key, size)
  redis.call('INCRBY', total, size)
  at, k = at + 3, k + 1
end
if remembered > 0 then
  for _, key in ipairs(redis.call('ZRANGEBYSCORE', index, '-inf', now, 'LIMIT', 0, 256)) do
    forget(key)
  end
  while redis.call('ZCARD', index) > max_entries
      or tonumber(redis.call('GET', total) or '0') > max_bytes do
    local oldest = redis.call('ZRANGE', index, 0, 0)[1]
    if not oldest then break end
    forget(oldest)
  end
end
for _ = 1, paired do
  local key = KEYS[k]
  local found = redis.call('HMGET', key, 's', 'l', 'o')
  if found[1] and not found[2] and not found[3] and found[1] == ARGV[at + 1] then
    redis.call('HSET', key, 'o', ARGV[at])
  end
  at, k = at + 2, k + 1
end
local answers = {remembered > 0 and redis.call('ZCARD', index) or -1}
for _ = 1, labelled do
  local key = KEYS[k]
  local found = redis.call('HMGET', key, 'b', 'c', 's', 'o', 'l')
  if not found[1] then
    table.insert(answers, {'missing'})
  elseif found[5] == ARGV[at + 1] then  -- the same labels again: a retry, answered alike
    table.insert(answers, {'repeat', found[1], found[2], found[4] or ''})
  elseif found[5] then
    table.insert(answers, {'labelled'})
  elseif found[3] ~= ARGV[at] then
    table.insert(answers, {'shape', found[3]})
  else
    redis.call('HSET', key, 'l', ARGV[at + 1])
    table.insert(answers, {'ok', found[1], found[2], found[4] or ''})
  end
  at, k = at + 2, k + 1
end
return answers
""".replace("ENTRY_OVERHEAD", str(ENTRY_OVERHEAD))


def exchange_keys(keys: StoreKeys, request_ids: Sequence[str]) -> list[str]:
    """The exchange's KEYS: the index, the sizes, the bytes, then each request's prediction (the
    ids of its predictions, shadow answers and labels, in that order)."""
    return [keys.prediction_index, keys.prediction_sizes, keys.prediction_bytes,
            *(keys.prediction(request_id) for request_id in request_ids)]  # fmt: skip


SOURCES = (SET_SHARE.source, SET_STUDENT.source, SEED_SHARE.source, EXCHANGE)
"""Every script's text (what tests/test_fleet_contracts.py checks names no key)."""

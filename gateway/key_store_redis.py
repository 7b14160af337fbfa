"""`RedisKeyStore`: the admin API's keys in Redis, shared by every replica.

    {prefix}:keys            HASH   key id -> the record as JSON (the hash of the key, never it)
    {prefix}:keys:version    STRING incremented by every change
    {prefix}:keys:used       HASH   key id -> unix time it was last used (the latest wins)
    {prefix}:keys:changed    channel: every change is published here

A change is one optimistic transaction (WATCH the records, read them, MULTI: write what changed,
bump the version, publish), tried again if another writer got in between. Each replica waits on
the channel for at most `poll_s`, then compares the version with the one it loaded and reloads
the records when they differ: a change reaches every replica at once when the message arrives,
and within `poll_s` when it was lost (a replica reconnecting, say).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import orjson
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.sentinel import Sentinel
from redis.exceptions import RedisError, WatchError

from gateway.key_store import KeyStore, KeyStoreError, Records
from gateway.keys import ApiKey

logger = logging.getLogger(__name__)

T = TypeVar("T")
TRIES = 20  # optimistic transactions before a change gives up (writers racing on one store)

# KEYS[1]: the used hash; ARGV: id, time, id, time...: each time kept if later than the one held.
TOUCH_LUA = """
for i = 1, #ARGV, 2 do
  local held = tonumber(redis.call('HGET', KEYS[1], ARGV[i]) or '0')
  if tonumber(ARGV[i + 1]) > held then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  end
end
return 0
"""


class RedisKeyStore(KeyStore):
    def __init__(self, redis: Redis, sentinel: Sentinel | None, prefix: str) -> None:
        self._redis = redis
        self._sentinel = sentinel
        self._hash = f"{prefix}:keys"
        self._version = f"{prefix}:keys:version"
        self._used = f"{prefix}:keys:used"
        self._channel = f"{prefix}:keys:changed"
        self._loaded: str | None = None  # the version last read
        self._pubsub: PubSub | None = None
        self._touch = self._redis.register_script(TOUCH_LUA)

    async def records(self) -> Records | None:
        try:
            version = await self._redis.get(self._version) or "0"
            if version == self._loaded:
                return None
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hgetall(self._hash)
                pipe.get(self._version)
                raw, version = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise KeyStoreError(f"Redis unreachable ({type(exc).__name__})") from None
        self._loaded = version or "0"
        return _decode(raw)

    async def update(self, change: Callable[[Records], T]) -> T:
        try:
            for _ in range(TRIES):
                async with self._redis.pipeline(transaction=True) as pipe:
                    try:
                        await pipe.watch(self._hash)
                        before = _decode(await pipe.hgetall(self._hash))
                        records = dict(before)
                        answer = change(records)
                        pipe.multi()  # type: ignore[no-untyped-call]
                        for key_id, record in records.items():
                            if before.get(key_id) != record:
                                pipe.hset(self._hash, key_id, orjson.dumps(record.to_json()))
                        if gone := [k for k in before if k not in records]:
                            pipe.hdel(self._hash, *gone)
                            pipe.hdel(self._used, *gone)
                        pipe.incr(self._version)
                        pipe.publish(self._channel, "changed")
                        await pipe.execute()
                        return answer
                    except WatchError:
                        continue
        except (RedisError, OSError) as exc:
            raise KeyStoreError(f"Redis unreachable ({type(exc).__name__})") from None
        raise KeyStoreError(f"the keys changed under {TRIES} tries in a row")

    async def touch(self, used: dict[str, float]) -> None:
        args = [x for key_id, at in used.items() for x in (key_id, repr(at))]
        try:
            await self._touch(keys=[self._used], args=args)
        except (RedisError, OSError) as exc:
            raise KeyStoreError(f"Redis unreachable ({type(exc).__name__})") from None

    async def last_used(self) -> dict[str, float]:
        try:
            raw = await self._redis.hgetall(self._used)
        except (RedisError, OSError) as exc:
            raise KeyStoreError(f"Redis unreachable ({type(exc).__name__})") from None
        used = {}
        for key_id, at in raw.items():
            try:
                used[str(key_id)] = float(at)
            except ValueError:
                continue
        return used

    async def wait(self, seconds: float) -> None:
        """Until a change is published, or `seconds`; without a subscription (Redis away),
        `seconds` alone: the version check after it still finds every change."""
        try:
            if self._pubsub is None:
                self._pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
                await self._pubsub.subscribe(self._channel)
            await self._pubsub.get_message(timeout=seconds)
        except (RedisError, OSError):
            await self._drop_pubsub()
            await asyncio.sleep(seconds)

    async def _drop_pubsub(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            with contextlib.suppress(RedisError, OSError):
                await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def close(self) -> None:
        await self._drop_pubsub()
        await self._redis.aclose()
        if self._sentinel is not None:
            await self._sentinel.aclose()


def _decode(raw: dict[Any, Any]) -> Records:
    records: Records = {}
    for key_id, value in raw.items():
        try:
            records[str(key_id)] = ApiKey.from_json(orjson.loads(value))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            logger.error("key store: record %r is unreadable (%s); skipped", key_id, exc)
    return records

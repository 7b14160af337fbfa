"""`RedisKeyStore`: the admin API's keys in Redis, shared by every replica.

    {prefix}:keys            HASH   key id -> the record as JSON (the hash of the key, never it)
    {prefix}:keys:version    STRING a new random token at every change
    {prefix}:keys:used       HASH   key id -> unix time it was last used (the latest wins)
    {prefix}:keys:changed    channel: every change is published here

A change is one optimistic transaction (WATCH the records and the version, read them, MULTI:
write what changed, a new version, publish `{"from": old version, "to": new, "ids": changed}`),
tried again if another writer got in between. Each replica waits on the channel for at most
`poll_s`; a message that follows from the version it holds costs it the changed records only
(HMGET). Then it compares the version with its own and reloads every record when they differ:
a change reaches every replica at once when its message arrives, and within `poll_s` when the
message was lost (a replica reconnecting, say) or Redis lost its data.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import orjson
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline, PubSub
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
        self._loaded: str | None = None  # the version of `_records`
        self._records: Records = {}
        self._changes: list[dict[str, Any]] = []  # published since the last `records()`
        self._pubsub: PubSub | None = None
        self._touch = self._redis.register_script(TOUCH_LUA)

    async def records(self) -> Records | None:
        """Only the records a change names when this replica holds the version it started
        from; all of them when it does not (a message lost, Redis emptied, the first call)."""
        try:
            changed = await self._follow()
            version = await self._redis.get(self._version) or ""
            if version != self._loaded:
                async with self._redis.pipeline(transaction=True) as pipe:
                    pipe.hgetall(self._hash)
                    pipe.get(self._version)
                    raw, version = await pipe.execute()
                self._records, self._loaded, changed = _decode(raw), version or "", True
        except (RedisError, OSError) as exc:
            raise KeyStoreError(f"Redis unreachable ({type(exc).__name__})") from None
        return dict(self._records) if changed else None

    async def _follow(self) -> bool:
        """Apply the published changes that follow from the version held; False if none."""
        changes, self._changes = self._changes, []
        applied = False
        for change in changes:
            if self._loaded is None or change.get("from") != self._loaded:
                continue  # in a full reload already, or after a gap the version check finds
            ids = [str(i) for i in change.get("ids", [])]
            values = await self._redis.hmget(self._hash, ids) if ids else []
            for key_id, value in zip(ids, values, strict=True):
                if value is None:
                    self._records.pop(key_id, None)
                else:
                    self._records.update(_decode({key_id: value}))
            self._loaded, applied = str(change.get("to")), True
        return applied

    async def update(self, change: Callable[[Records], T]) -> T:
        try:
            for _ in range(TRIES):
                async with self._redis.pipeline(transaction=True) as pipe:
                    try:
                        return await self._try(pipe, change)
                    except WatchError:
                        continue
        except (RedisError, OSError) as exc:
            raise KeyStoreError(f"Redis unreachable ({type(exc).__name__})") from None
        raise KeyStoreError(f"the keys changed under {TRIES} tries in a row")

    async def _try(self, pipe: Pipeline, change: Callable[[Records], T]) -> T:
        """One optimistic transaction: the records and version read under WATCH, the change
        applied to them, what it changed written with a new version and published."""
        await pipe.watch(self._hash, self._version)
        before = _decode(await pipe.hgetall(self._hash))
        version = await pipe.get(self._version) or ""
        records = dict(before)
        answer = change(records)
        changed = [k for k, r in records.items() if before.get(k) != r]
        gone = [k for k in before if k not in records]
        new_version = uuid.uuid4().hex  # not a counter: one that Redis lost cannot come back
        pipe.multi()  # type: ignore[no-untyped-call]
        for key_id in changed:
            pipe.hset(self._hash, key_id, orjson.dumps(records[key_id].to_json()))
        if gone:
            pipe.hdel(self._hash, *gone)
            pipe.hdel(self._used, *gone)
        pipe.set(self._version, new_version)
        message = {"from": version, "to": new_version, "ids": changed + gone}
        pipe.publish(self._channel, orjson.dumps(message))
        await pipe.execute()
        return answer

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
            message = await self._pubsub.get_message(timeout=seconds)
            while message is not None:  # and every other one already here
                self._note(message)
                message = await self._pubsub.get_message(timeout=0)
        except (RedisError, OSError):
            await self._drop_pubsub()
            await asyncio.sleep(seconds)

    def _note(self, message: dict[str, Any]) -> None:
        try:
            change = orjson.loads(message["data"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            change = {}
        self._changes.append(change if isinstance(change, dict) else {})

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

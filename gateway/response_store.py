"""Stored responses of the Responses API (`store: true`), per tenant: what `GET` and `DELETE
/v1/responses/{id}` read, and what `previous_response_id` continues.

Each entry is one JSON document: the response object as the client got it, and the
conversation to continue from it (the chat messages up to and including the answer, without the
request's `instructions`, which do not carry over). A tenant reads only its own: another
tenant's id is a 404, as an unknown one. Each tenant has its own bounds, so no tenant can push
another's responses out: at most `MAX_ENTRIES` entries and `MAX_BYTES` bytes, its oldest
forgotten first, each kept at most `TTL_S`; an entry over `MAX_ENTRY_BYTES` is not kept.

- `MemoryResponseStore` (memory limiter): this process only, gone with it; every tenant
  together at most `MAX_TOTAL_BYTES` (past it, the tenant holding most loses its oldest).
- `RedisResponseStore` (Redis limiter), shared by every replica, one `put` (a script) per
  stored response and one GET per read:

      {prefix}:resp:{<tenant hash>}:<id>       STRING  the entry, expiring after TTL_S
      {prefix}:resp:{<tenant hash>}:index      ZSET    id -> time stored
      {prefix}:resp:{<tenant hash>}:sizes      HASH    id -> bytes, and "total"

  The tenant's name is hashed (a `:` in it cannot reach another tenant's keys), and the hash
  tag keeps one tenant's keys on one Redis Cluster slot.
"""

from __future__ import annotations

import hashlib
import re
import time
from abc import ABC, abstractmethod
from collections import OrderedDict
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.asyncio.sentinel import Sentinel
from redis.exceptions import RedisError

from gateway.errors import Unavailable, retry_headers

TTL_S = 30 * 24 * 3600  # as OpenAI keeps stored responses
MAX_ENTRIES = 1_000  # per tenant
MAX_BYTES = 64 * 1024 * 1024  # per tenant
MAX_ENTRY_BYTES = 8 * 1024 * 1024  # a conversation larger than this is not stored
MAX_TOTAL_BYTES = 256 * 1024 * 1024  # the memory store, every tenant together
RESPONSE_ID = re.compile(r"resp_[0-9a-f]{48}")

# KEYS: entry, index, sizes. ARGV: id, entry, now, ttl, max entries, max bytes.
PUT_LUA = """
local function forget(id)
  local size = tonumber(redis.call('HGET', KEYS[3], id) or '0')
  redis.call('HDEL', KEYS[3], id)
  if size > 0 then redis.call('HINCRBY', KEYS[3], 'total', 0 - size) end
  redis.call('ZREM', KEYS[2], id)
  redis.call('DEL', string.sub(KEYS[1], 1, -#ARGV[1] - 1) .. id)
end
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[3] - ARGV[4])) do
  forget(id)
end
if redis.call('ZSCORE', KEYS[2], ARGV[1]) then forget(ARGV[1]) end
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[4])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
redis.call('HSET', KEYS[3], ARGV[1], #ARGV[2])
local total = redis.call('HINCRBY', KEYS[3], 'total', #ARGV[2])
while redis.call('ZCARD', KEYS[2]) > tonumber(ARGV[5]) or total > tonumber(ARGV[6]) do
  local oldest = redis.call('ZRANGE', KEYS[2], 0, 0)[1]
  forget(oldest)
  total = tonumber(redis.call('HGET', KEYS[3], 'total') or '0')
end
redis.call('EXPIRE', KEYS[2], ARGV[4])
redis.call('EXPIRE', KEYS[3], ARGV[4])
return 1
"""
# KEYS: entry, index, sizes. ARGV: id.
DELETE_LUA = """
local size = tonumber(redis.call('HGET', KEYS[3], ARGV[1]) or '0')
redis.call('HDEL', KEYS[3], ARGV[1])
if size > 0 then redis.call('HINCRBY', KEYS[3], 'total', 0 - size) end
redis.call('ZREM', KEYS[2], ARGV[1])
return redis.call('DEL', KEYS[1])
"""


class ResponseStore(ABC):
    async def put(self, tenant: str, response_id: str, entry: dict[str, Any]) -> bool:
        """Keep the entry; False when it is too large to keep."""
        data = orjson.dumps(entry)
        if len(data) > MAX_ENTRY_BYTES:
            return False
        await self._put(tenant, response_id, data)
        return True

    async def get(self, tenant: str, response_id: str) -> dict[str, Any] | None:
        if not RESPONSE_ID.fullmatch(response_id):
            return None
        data = await self._get(tenant, response_id)
        if data is None:
            return None
        entry: dict[str, Any] = orjson.loads(data)
        return entry

    async def delete(self, tenant: str, response_id: str) -> bool:
        return bool(RESPONSE_ID.fullmatch(response_id)) and await self._delete(tenant, response_id)

    @abstractmethod
    async def _put(self, tenant: str, response_id: str, data: bytes) -> None: ...

    @abstractmethod
    async def _get(self, tenant: str, response_id: str) -> bytes | str | None: ...

    @abstractmethod
    async def _delete(self, tenant: str, response_id: str) -> bool: ...

    async def close(self) -> None:  # noqa: B027 (an optional hook)
        """Release connections."""


class _Shelf:
    """One tenant's entries in memory, oldest first."""

    def __init__(self) -> None:
        self.entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self.bytes = 0

    def pop(self, response_id: str | None = None) -> bool:
        if response_id is None:
            _, (_, data) = self.entries.popitem(last=False)
        elif (found := self.entries.pop(response_id, None)) is not None:
            data = found[1]
        else:
            return False
        self.bytes -= len(data)
        return True


class MemoryResponseStore(ResponseStore):
    def __init__(
        self,
        max_entries: int = MAX_ENTRIES,
        max_bytes: int = MAX_BYTES,
        max_total_bytes: int = MAX_TOTAL_BYTES,
    ) -> None:
        self._shelves: dict[str, _Shelf] = {}
        self._max_entries, self._max_bytes, self._max_total = (
            max_entries,
            max_bytes,
            max_total_bytes,
        )

    async def _put(self, tenant: str, response_id: str, data: bytes) -> None:
        shelf = self._shelves.setdefault(tenant, _Shelf())
        shelf.pop(response_id)
        shelf.entries[response_id] = (time.monotonic() + TTL_S, data)
        shelf.bytes += len(data)
        while len(shelf.entries) > self._max_entries or shelf.bytes > self._max_bytes:
            shelf.pop()
        while sum(s.bytes for s in self._shelves.values()) > self._max_total:
            max(self._shelves.values(), key=lambda s: s.bytes).pop()

    async def _get(self, tenant: str, response_id: str) -> bytes | None:
        shelf = self._shelves.get(tenant)
        found = shelf.entries.get(response_id) if shelf else None
        if found is None or shelf is None:
            return None
        if found[0] < time.monotonic():
            shelf.pop(response_id)
            return None
        return found[1]

    async def _delete(self, tenant: str, response_id: str) -> bool:
        shelf = self._shelves.get(tenant)
        return shelf is not None and shelf.pop(response_id)


class RedisResponseStore(ResponseStore):
    def __init__(self, redis: Redis, sentinel: Sentinel | None, prefix: str) -> None:
        self._redis = redis
        self._sentinel = sentinel
        self._prefix = prefix
        self._put_script = redis.register_script(PUT_LUA)
        self._delete_script = redis.register_script(DELETE_LUA)

    def _keys(self, tenant: str, response_id: str) -> list[str]:
        tag = hashlib.sha256(tenant.encode()).hexdigest()[:16]
        base = f"{self._prefix}:resp:{{{tag}}}:"
        return [base + response_id, base + "index", base + "sizes"]

    async def _put(self, tenant: str, response_id: str, data: bytes) -> None:
        limits = [time.time(), TTL_S, MAX_ENTRIES, MAX_BYTES]
        try:
            await self._put_script(self._keys(tenant, response_id), [response_id, data, *limits])
        except (RedisError, OSError) as exc:
            raise _unavailable(exc) from None

    async def _get(self, tenant: str, response_id: str) -> bytes | str | None:
        try:
            found: bytes | str | None = await self._redis.get(self._keys(tenant, response_id)[0])
        except (RedisError, OSError) as exc:
            raise _unavailable(exc) from None
        return found

    async def _delete(self, tenant: str, response_id: str) -> bool:
        try:
            return bool(await self._delete_script(self._keys(tenant, response_id), [response_id]))
        except (RedisError, OSError) as exc:
            raise _unavailable(exc) from None

    async def close(self) -> None:
        await self._redis.aclose()
        if self._sentinel is not None:
            await self._sentinel.aclose()


def _unavailable(exc: BaseException) -> Unavailable:
    return Unavailable(
        f"Stored responses cannot be reached now ({type(exc).__name__}); retry shortly.",
        headers=retry_headers(1),
    )

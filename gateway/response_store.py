"""Stored responses of the Responses API (`store: true`), per tenant: what `GET` and `DELETE
/v1/responses/{id}` read, and what `previous_response_id` continues.

Each entry is one JSON document: the response object as the client got it, and the
conversation to continue from it (the chat messages up to and including the answer, without the
request's `instructions`, which do not carry over). A tenant reads only its own: another
tenant's id is a 404, as an unknown one.

- `MemoryResponseStore` (memory limiter): this process only, the newest kept within
  `MAX_ENTRIES` and `MAX_BYTES`, each for `TTL_S`; gone with the process.
- `RedisResponseStore` (Redis limiter): `{prefix}:resp:{tenant}:{id}`, a STRING expiring after
  `TTL_S`, shared by every replica. One write per stored response, one read per
  `previous_response_id` or `GET`.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections import OrderedDict
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway.errors import Unavailable, retry_headers

TTL_S = 30 * 24 * 3600  # as OpenAI keeps stored responses
MAX_ENTRIES = 10_000
MAX_BYTES = 256 * 1024 * 1024
MAX_ENTRY_BYTES = 32 * 1024 * 1024  # a conversation larger than this is not stored


class ResponseStore(ABC):
    @abstractmethod
    async def put(self, tenant: str, response_id: str, entry: dict[str, Any]) -> bool:
        """Keep the entry; False when it is too large to keep."""

    @abstractmethod
    async def get(self, tenant: str, response_id: str) -> dict[str, Any] | None: ...

    @abstractmethod
    async def delete(self, tenant: str, response_id: str) -> bool: ...

    async def close(self) -> None:  # noqa: B027 (an optional hook)
        """Release connections."""


class MemoryResponseStore(ResponseStore):
    def __init__(self, max_entries: int = MAX_ENTRIES, max_bytes: int = MAX_BYTES) -> None:
        self._entries: OrderedDict[tuple[str, str], tuple[float, bytes]] = OrderedDict()
        self._bytes = 0
        self._max_entries = max_entries
        self._max_bytes = max_bytes

    async def put(self, tenant: str, response_id: str, entry: dict[str, Any]) -> bool:
        data = orjson.dumps(entry)
        if len(data) > min(MAX_ENTRY_BYTES, self._max_bytes):
            return False
        await self.delete(tenant, response_id)
        self._entries[(tenant, response_id)] = (time.monotonic() + TTL_S, data)
        self._bytes += len(data)
        while len(self._entries) > self._max_entries or self._bytes > self._max_bytes:
            _, (_, oldest) = self._entries.popitem(last=False)
            self._bytes -= len(oldest)
        return True

    async def get(self, tenant: str, response_id: str) -> dict[str, Any] | None:
        found = self._entries.get((tenant, response_id))
        if found is None:
            return None
        if found[0] < time.monotonic():
            await self.delete(tenant, response_id)
            return None
        entry: dict[str, Any] = orjson.loads(found[1])
        return entry

    async def delete(self, tenant: str, response_id: str) -> bool:
        found = self._entries.pop((tenant, response_id), None)
        if found is not None:
            self._bytes -= len(found[1])
        return found is not None


class RedisResponseStore(ResponseStore):
    def __init__(self, redis: Redis, prefix: str) -> None:
        self._redis = redis
        self._prefix = prefix

    def _key(self, tenant: str, response_id: str) -> str:
        return f"{self._prefix}:resp:{tenant}:{response_id}"

    async def put(self, tenant: str, response_id: str, entry: dict[str, Any]) -> bool:
        data = orjson.dumps(entry)
        if len(data) > MAX_ENTRY_BYTES:
            return False
        try:
            await self._redis.set(self._key(tenant, response_id), data, ex=TTL_S)
        except (RedisError, OSError) as exc:
            raise _unavailable(exc) from None
        return True

    async def get(self, tenant: str, response_id: str) -> dict[str, Any] | None:
        try:
            data = await self._redis.get(self._key(tenant, response_id))
        except (RedisError, OSError) as exc:
            raise _unavailable(exc) from None
        if data is None:
            return None
        entry: dict[str, Any] = orjson.loads(data)
        return entry

    async def delete(self, tenant: str, response_id: str) -> bool:
        try:
            return bool(await self._redis.delete(self._key(tenant, response_id)))
        except (RedisError, OSError) as exc:
            raise _unavailable(exc) from None

    async def close(self) -> None:
        await self._redis.aclose()


def _unavailable(exc: BaseException) -> Unavailable:
    return Unavailable(
        f"Stored responses cannot be reached now ({type(exc).__name__}); retry shortly.",
        headers=retry_headers(1),
    )

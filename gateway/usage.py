"""Tokens and spend per tenant and model this month (UTC), and the budgets they are held to.

Spend = prompt tokens x input price + completion tokens x output price, from the config's price
table (USD per million tokens). The store is in memory for one process, or in Redis (shared by
every replica, surviving restarts) when the limiter uses Redis:

    {prefix}:usage:{YYYY-MM}:{tenant}   HASH  "<model>|prompt", "<model>|completion" (HINCRBY),
                                              "<model>|usd" and "total|usd" (HINCRBYFLOAT)

Keys expire 40 days after their month's last write, so old months clean themselves up.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from abc import ABC, abstractmethod
from collections import defaultdict
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.asyncio.sentinel import Sentinel
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from gateway.config import Model

logger = logging.getLogger(__name__)

MONTH_TTL_S = 40 * 24 * 3600


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    estimated: bool = False  # counted by the gateway, upstream's usage never came


def month(now: float | None = None) -> str:
    """The calendar month (UTC) as YYYY-MM. Asked per request, so worked out once a minute."""
    return _month_of_minute(int((time.time() if now is None else now) // 60))


@functools.lru_cache(maxsize=4)
def _month_of_minute(minute: int) -> str:
    return time.strftime("%Y-%m", time.gmtime(minute * 60))


def spend_usd(model: Model | None, usage: Usage) -> float | None:
    """USD for this usage, or None when the model has no price."""
    if model is None or model.input_usd_per_mtok is None or model.output_usd_per_mtok is None:
        return None
    return (
        usage.prompt_tokens * model.input_usd_per_mtok
        + usage.completion_tokens * model.output_usd_per_mtok
    ) / 1_000_000


class UsageStore(ABC):
    def __init__(self) -> None:
        self.last_seen: dict[str, float] = {}  # tenant -> month spend at the last read or write

    async def add(self, tenant: str, model: str, usage: Usage, usd: float | None) -> None:
        """Count one request's usage for this month."""
        self.last_seen[tenant] = await self._add(tenant, model, usage, usd)

    async def spent(self, tenant: str) -> float:
        """USD spent by the tenant this month."""
        self.last_seen[tenant] = total = await self._spent(tenant)
        return total

    def known_spent(self, tenant: str) -> float | None:
        """The same, when it needs no I/O (the budget check's fast path); else None."""
        total = self._known_spent(tenant)
        if total is not None:
            self.last_seen[tenant] = total
        return total

    def _known_spent(self, tenant: str) -> float | None:
        return None

    @abstractmethod
    async def _add(self, tenant: str, model: str, usage: Usage, usd: float | None) -> float:
        """Count the usage; return the tenant's month spend after it."""

    @abstractmethod
    async def _spent(self, tenant: str) -> float: ...

    @abstractmethod
    async def by_model(self, tenant: str) -> dict[str, dict[str, float]]:
        """This month's `{model: {prompt_tokens, completion_tokens, spend_usd}}`."""

    async def close(self) -> None:  # noqa: B027 (an optional hook)
        """Release connections."""


class MemoryUsageStore(UsageStore):
    def __init__(self) -> None:
        super().__init__()
        self._data: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)

    async def _add(self, tenant: str, model: str, usage: Usage, usd: float | None) -> float:
        row = self._data[(month(), tenant)]
        for field, value in _fields(model, usage, usd):
            row[field] = row.get(field, 0) + value
        return row.get("total|usd", 0.0)

    async def _spent(self, tenant: str) -> float:
        return self._known_spent(tenant)

    def _known_spent(self, tenant: str) -> float:
        return self._data.get((month(), tenant), {}).get("total|usd", 0.0)

    async def by_model(self, tenant: str) -> dict[str, dict[str, float]]:
        return _by_model(self._data.get((month(), tenant), {}))


def _fields(model: str, usage: Usage, usd: float | None) -> list[tuple[str, float]]:
    fields: list[tuple[str, float]] = [
        (f"{model}|prompt", usage.prompt_tokens),
        (f"{model}|completion", usage.completion_tokens),
    ]
    if usd is not None:
        fields += [(f"{model}|usd", usd), ("total|usd", usd)]
    return fields


def _by_model(row: dict[str, float]) -> dict[str, dict[str, float]]:
    names = {"prompt": "prompt_tokens", "completion": "completion_tokens", "usd": "spend_usd"}
    out: dict[str, dict[str, float]] = {}
    for field, value in row.items():
        model, _, kind = field.rpartition("|")
        if model == "total":
            continue
        entry = out.setdefault(
            model, {"prompt_tokens": 0, "completion_tokens": 0, "spend_usd": 0.0}
        )
        entry[names[kind]] = float(value) if kind == "usd" else int(value)
    return out


class RedisUsageStore(UsageStore):
    """The month's usage in Redis, shared by every replica (see the key schema above).

    Nothing here costs a request a Redis round trip: usage is added up locally and written in
    one pipeline every `flush_s`, which also re-reads the month totals of the tenants this
    replica has seen, so a budget reflects every replica's spend within about `flush_s`. While
    Redis is away the increments wait (they merge, so they stay small) and are written later.
    """

    def __init__(
        self, redis: Redis, sentinel: Sentinel | None, prefix: str, flush_s: float = 0.5
    ) -> None:
        super().__init__()
        self._redis = redis
        self._sentinel = sentinel
        self._prefix = prefix
        self._flush_s = flush_s
        self._pending: dict[str, dict[str, float]] = {}  # key -> field -> increment
        self._totals: dict[str, float] = {}  # key -> month total in Redis at the last flush
        self._flusher: asyncio.Task[None] | None = None
        self._failed_flushes = 0  # in a row, while Redis is away

    def _key(self, tenant: str) -> str:
        return f"{self._prefix}:usage:{month()}:{tenant}"

    def _total(self, key: str) -> float:
        return self._totals.get(key, 0.0) + self._pending.get(key, {}).get("total|usd", 0.0)

    async def _add(self, tenant: str, model: str, usage: Usage, usd: float | None) -> float:
        key = self._key(tenant)
        row = self._pending.setdefault(key, {})
        for name, value in _fields(model, usage, usd):
            row[name] = row.get(name, 0) + value
        self._start_flusher()
        return self._total(key)

    async def _spent(self, tenant: str) -> float:
        key = self._key(tenant)
        if key not in self._totals:  # first time: read it once, the flusher keeps it fresh
            self._totals[key] = float(await self._redis.hget(key, "total|usd") or 0.0)
            self._start_flusher()
        return self._total(key)

    def _known_spent(self, tenant: str) -> float | None:
        key = self._key(tenant)
        return self._total(key) if key in self._totals else None

    async def by_model(self, tenant: str) -> dict[str, dict[str, float]]:
        await self.flush()
        row = await self._redis.hgetall(self._key(tenant))
        return _by_model({_text(k): float(v) for k, v in row.items()})

    async def flush(self) -> None:
        pending, self._pending = self._pending, {}
        keys = list(self._totals)
        pipe = self._redis.pipeline(transaction=False)
        for key, row in pending.items():
            for name, value in row.items():
                if name.endswith("|usd"):
                    pipe.hincrbyfloat(key, name, value)
                else:
                    pipe.hincrby(key, name, int(value))
            pipe.expire(key, MONTH_TTL_S)
        for key in keys:
            pipe.hget(key, "total|usd")
        try:
            results = await pipe.execute()
        except RedisConnectionError:
            # Not sent, or the connection broke: keep them for the next flush. (After a
            # timeout they may have been applied, so they are not sent twice: lost instead.)
            for key, row in pending.items():
                into = self._pending.setdefault(key, {})
                for name, value in row.items():
                    into[name] = into.get(name, 0) + value
            raise
        for key, total in zip(keys, results[len(results) - len(keys) :], strict=True):
            self._totals[key] = float(total or 0.0)
        current = month()
        self._totals = {k: v for k, v in self._totals.items() if f":usage:{current}:" in k}

    def _start_flusher(self) -> None:
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush_forever())

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(self._flush_s)
            try:
                await self.flush()
            except (RedisError, OSError) as exc:
                self._failed_flushes += 1
                if self._failed_flushes == 1:
                    logger.warning("usage store: Redis unreachable (%s); holding usage", exc)
                continue
            if self._failed_flushes:
                logger.info("usage store: Redis answers again; usage written")
                self._failed_flushes = 0

    async def close(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            await asyncio.gather(self._flusher, return_exceptions=True)
        with contextlib.suppress(RedisError, OSError):
            await self.flush()
        await self._redis.aclose()
        if self._sentinel is not None:
            await self._sentinel.aclose()


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value

"""Tokens and spend per tenant and model this month (UTC), and the budgets they are held to.

Spend = prompt tokens x input price + completion tokens x output price, from the config's price
table (USD per million tokens). The store is in memory for one process, or in Redis (shared by
every replica, surviving restarts) when the limiter uses Redis:

    {prefix}:usage:{YYYY-MM}:{tenant}   HASH  "<model>|prompt", "<model>|completion" (HINCRBY),
                                              "<model>|usd" and "total|usd" (HINCRBYFLOAT)

Keys expire 40 days after their month's last write, so old months clean themselves up.
"""

from __future__ import annotations

import functools
import math
import time
from abc import ABC, abstractmethod
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.sentinel import Sentinel

from gateway.config import Model

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


def estimate_prompt_tokens(messages: Any) -> int:
    """About four characters a token, over every text part of every message."""
    chars = 0
    if isinstance(messages, list):
        for message in messages:
            content = message.get("content") if isinstance(message, dict) else None
            if isinstance(content, str):
                chars += len(content)
            elif isinstance(content, list):
                chars += sum(
                    len(part.get("text") or "")
                    for part in content
                    if isinstance(part, dict) and isinstance(part.get("text"), str)
                )
    return math.ceil(chars / 4)


class UsageStore(ABC):
    def __init__(self) -> None:
        self.last_seen: dict[str, float] = {}  # tenant -> month spend at the last read or write
        self.failures = 0  # writes lost while the store was unreachable

    async def add(self, tenant: str, model: str, usage: Usage, usd: float | None) -> None:
        """Count one request's usage for this month."""
        self.last_seen[tenant] = await self._add(tenant, model, usage, usd)

    async def spent(self, tenant: str) -> float:
        """USD spent by the tenant this month."""
        self.last_seen[tenant] = total = await self._spent(tenant)
        return total

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
    """The month's usage in Redis, shared by every replica (see the key schema above)."""

    def __init__(self, redis: Redis, sentinel: Sentinel | None, prefix: str) -> None:
        super().__init__()
        self._redis = redis
        self._sentinel = sentinel
        self._prefix = prefix

    def _key(self, tenant: str) -> str:
        return f"{self._prefix}:usage:{month()}:{tenant}"

    async def _add(self, tenant: str, model: str, usage: Usage, usd: float | None) -> float:
        key = self._key(tenant)
        pipe = self._redis.pipeline(transaction=False)
        pipe.hincrby(key, f"{model}|prompt", usage.prompt_tokens)
        pipe.hincrby(key, f"{model}|completion", usage.completion_tokens)
        if usd is not None:
            pipe.hincrbyfloat(key, f"{model}|usd", usd)
            pipe.hincrbyfloat(key, "total|usd", usd)
        pipe.expire(key, MONTH_TTL_S)
        pipe.hget(key, "total|usd")
        results = await pipe.execute()
        return float(results[-1] or 0.0)

    async def _spent(self, tenant: str) -> float:
        return float(await self._redis.hget(self._key(tenant), "total|usd") or 0.0)

    async def by_model(self, tenant: str) -> dict[str, dict[str, float]]:
        row = await self._redis.hgetall(self._key(tenant))
        return _by_model({_text(k): float(v) for k, v in row.items()})

    async def close(self) -> None:
        await self._redis.aclose()
        if self._sentinel is not None:
            await self._sentinel.aclose()


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value

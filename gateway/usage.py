"""Tokens and spend per tenant and model this month (UTC), and the budgets they are held to.

Spend = prompt tokens x input price + completion tokens x output price, from the config's price
table (USD per million tokens). The store is in memory for one process, or in Redis (shared by
every replica, surviving restarts) when the limiter uses Redis:

    {prefix}:usage:{YYYY-MM}:{tenant}   HASH  "<model>|prompt", "<model>|completion" (HINCRBY),
                                              "<model>|usd" and "total|usd" (HINCRBYFLOAT),
                                              "flush|<writer>": the last batch applied from
                                              one gateway process (see RedisUsageStore)

Keys expire 40 days after their month's last write, so old months clean themselves up.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import time
import uuid
from abc import ABC, abstractmethod
from collections import defaultdict
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.asyncio.sentinel import Sentinel
from redis.exceptions import NoScriptError, RedisError

from gateway.config import Model

logger = logging.getLogger(__name__)

MONTH_TTL_S = 40 * 24 * 3600
# One tenant-month's increments from one process, applied once however often they are sent: the
# hash keeps the number of the last batch it applied from that process ("flush|<writer>") and
# skips one it already has. Never fails half-way: an increment Redis refuses (a field holding no
# number) is skipped, counted in the reply and logged.
# KEYS[1]: the hash. ARGV: writer, batch number, ttl (s), then per field: name, "i"|"f", value.
APPLY_LUA = """
local mark = 'flush|' .. ARGV[1]
local refused = 0
if tonumber(redis.call('HGET', KEYS[1], mark) or '0') < tonumber(ARGV[2]) then
  for i = 4, #ARGV, 3 do
    local op = ARGV[i + 1] == 'i' and 'HINCRBY' or 'HINCRBYFLOAT'
    local done = redis.pcall(op, KEYS[1], ARGV[i], ARGV[i + 2])
    if type(done) == 'table' and done.err then
      refused = refused + 1
    end
  end
  redis.call('HSET', KEYS[1], mark, ARGV[2])
end
redis.call('EXPIRE', KEYS[1], ARGV[3])
return refused
"""
APPLY_SHA = hashlib.sha1(APPLY_LUA.encode()).hexdigest()


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
        if model == "total" or kind not in names:  # the sum, or a writer's mark
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
    replica has seen, so a budget reflects every replica's spend within about `flush_s`.

    Exactly once while the process lives: what is pending becomes a numbered batch, and a batch
    whose answer does not come (Redis away, a timeout: it may or may not have been applied) is
    sent again as it was until one answer does, while newer usage waits beside it, merged (so it
    stays small). Each hash skips a batch it has already applied (APPLY_LUA). What a process had
    not written when it dies is lost, so across a crash it is at most once.
    """

    def __init__(
        self, redis: Redis, sentinel: Sentinel | None, prefix: str, flush_s: float = 0.5
    ) -> None:
        super().__init__()
        self._redis = redis
        self._sentinel = sentinel
        self._prefix = prefix
        self._flush_s = flush_s
        self._writer = uuid.uuid4().hex[:16]  # this process, in the hashes' "flush|<writer>"
        self._pending: dict[str, dict[str, float]] = {}  # key -> field -> increment
        self._batch: tuple[int, dict[str, dict[str, float]]] | None = None  # sent, unanswered
        self._batches = 0  # numbered so far
        self._marked: set[str] = set()  # hashes holding this writer's mark
        self._loaded = False  # APPLY_LUA, in Redis's script cache
        self._flushing = asyncio.Lock()
        self._totals: dict[str, float] = {}  # key -> month total in Redis at the last flush
        self._flusher: asyncio.Task[None] | None = None
        self._failed_flushes = 0  # in a row, while Redis is away

    def _key(self, tenant: str) -> str:
        return f"{self._prefix}:usage:{month()}:{tenant}"

    def _total(self, key: str) -> float:
        """The month's spend as Redis had it, plus what is not written yet (asked per request)."""
        total = self._totals.get(key, 0.0) + self._pending.get(key, {}).get("total|usd", 0.0)
        if self._batch is not None:
            total += self._batch[1].get(key, {}).get("total|usd", 0.0)
        return total

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
        """Write the batch left unanswered, if any, else what is pending; re-read the totals."""
        async with self._flushing:
            retry = self._batch is not None
            await self._send()
            if retry and self._pending:  # what waited beside it goes now, not in flush_s
                await self._send()

    async def _send(self) -> None:
        if self._batch is None and self._pending:
            self._batches += 1
            self._batch, self._pending = (self._batches, self._pending), {}
        number, rows = self._batch or (0, {})
        keys = list(self._totals)
        if rows and not self._loaded:
            await self._redis.script_load(APPLY_LUA)
            self._loaded = True
        try:
            results = await self._pipeline(number, rows, keys).execute()
        except NoScriptError:  # Redis restarted empty (or SCRIPT FLUSH): load it, send again
            await self._redis.script_load(APPLY_LUA)
            results = await self._pipeline(number, rows, keys).execute()
        self._batch = None
        self._marked.update(rows)
        if refused := sum(results[: len(rows)]):
            logger.error(
                "usage store: Redis refused %d increment(s) (a field is no number)", refused
            )
        for key, total in zip(keys, results[len(rows) :], strict=True):
            self._totals[key] = float(total or 0.0)
        current = month()
        self._totals = {k: v for k, v in self._totals.items() if f":usage:{current}:" in k}

    def _pipeline(
        self, number: int, rows: dict[str, dict[str, float]], keys: list[str]
    ) -> Pipeline:
        """Batch `number` (`rows`: key -> field -> increment), then the totals of `keys`."""
        pipe = self._redis.pipeline(transaction=False)
        for key, row in rows.items():
            args = [(n, "f" if n.endswith("|usd") else "i", v) for n, v in row.items()]
            fields = [x for n, kind, v in args for x in (n, kind, v if kind == "f" else int(v))]
            pipe.evalsha(APPLY_SHA, 1, key, self._writer, number, MONTH_TTL_S, *fields)
        for key in keys:
            pipe.hget(key, "total|usd")
        return pipe

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
        try:
            await self.flush()
            if self._batch is None and self._marked:  # nothing left to send again: no marks
                pipe = self._redis.pipeline(transaction=False)
                for key in self._marked:
                    pipe.hdel(key, f"flush|{self._writer}")
                await pipe.execute()
        except (RedisError, OSError) as exc:
            if self._batch or self._pending:
                logger.warning("usage store: Redis unreachable at exit (%s); usage lost", exc)
        await self._redis.aclose()
        if self._sentinel is not None:
            await self._sentinel.aclose()


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value

"""Tokens and spend per tenant and model by month (UTC), and the budgets they are held to.

Each request's cost comes from `gateway.cost`. The store is in memory for one process, or in
Redis (shared by every replica, surviving restarts) when the limiter uses Redis:

    {prefix}:usage:{YYYY-MM}:{tenant}   HASH  "<model>|<kind>" (HINCRBY) for the token kinds
                                              prompt, completion, cached, reasoning, estimated;
                                              "<model>|usd" and "total|usd" (HINCRBYFLOAT);
                                              "flush|<writer>": the last batch applied from
                                              one gateway process (see RedisUsageStore)

A month's hash expires `RETENTION_DAYS` after its last write (so at least 13 months after the
month ends); the memory store forgets months as old.
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

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.asyncio.sentinel import Sentinel
from redis.exceptions import NoScriptError, RedisError

from gateway.cost import Usage

logger = logging.getLogger(__name__)

RETENTION_DAYS = 400
ROUND_TRIP_S = 0.5  # a budget's read or write-through waits no longer (the flusher may)
DOWN_S = 1.0  # after a failed commit or read, requests stop trying Redis for this long
MONTH_TTL_S = RETENTION_DAYS * 24 * 3600
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


def month(now: float | None = None) -> str:
    """The calendar month (UTC) as YYYY-MM. Asked per request, so worked out once a minute."""
    return _month_of_minute(int((time.time() if now is None else now) // 60))


@functools.lru_cache(maxsize=4)
def _month_of_minute(minute: int) -> str:
    return time.strftime("%Y-%m", time.gmtime(minute * 60))


class UsageStore(ABC):
    def __init__(self) -> None:
        self.last_seen: dict[str, float] = {}  # tenant -> month spend at the last read or write

    async def add(self, tenant: str, model: str, usage: Usage, usd: float | None) -> None:
        """Count one request's usage for this month."""
        self.last_seen[tenant] = await self._add(tenant, model, usage, usd)

    async def commit(self) -> bool:
        """Make what was added so far visible to every replica now, not at the next flush (a
        budgeted tenant's charge); False when it could not, and it waits for the next flush."""
        return True

    async def spent(self, tenant: str) -> float:
        """USD spent by the tenant this month, as the store has it now."""
        self.last_seen[tenant] = total = await self._spent(tenant)
        return total

    def known_spent(self, tenant: str) -> float | None:
        """The same as last seen, when it needs no I/O; else None."""
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
    async def by_model(self, tenant: str, month: str) -> dict[str, dict[str, float]]:
        """That month's `{model: {<kind>_tokens..., spend_usd}}` (see `_by_model`)."""

    async def close(self) -> None:  # noqa: B027 (an optional hook)
        """Release connections."""


class MemoryUsageStore(UsageStore):
    def __init__(self) -> None:
        super().__init__()
        self._data: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)

    async def _add(self, tenant: str, model: str, usage: Usage, usd: float | None) -> float:
        current = month()
        if (current, tenant) not in self._data:
            self._forget(current)
        row = self._data[(current, tenant)]
        for field, value in _fields(model, usage, usd):
            row[field] = row.get(field, 0) + value
        return row.get("total|usd", 0.0)

    def _forget(self, current: str) -> None:
        """Months past the retention, as Redis would have expired them."""
        oldest = month(time.time() - RETENTION_DAYS * 24 * 3600)
        for key in [k for k in self._data if k[0] < oldest and k[0] != current]:
            del self._data[key]

    async def _spent(self, tenant: str) -> float:
        return self._known_spent(tenant)

    def _known_spent(self, tenant: str) -> float:
        return self._data.get((month(), tenant), {}).get("total|usd", 0.0)

    async def by_model(self, tenant: str, month: str) -> dict[str, dict[str, float]]:
        return _by_model(self._data.get((month, tenant), {}))


_KINDS = {  # a hash field's kind -> its name in /v1/usage
    "prompt": "prompt_tokens",
    "completion": "completion_tokens",
    "cached": "cached_prompt_tokens",
    "reasoning": "reasoning_tokens",
    "estimated": "estimated_tokens",
    "usd": "spend_usd",
}


def _fields(model: str, usage: Usage, usd: float | None) -> list[tuple[str, float]]:
    counts = (
        ("prompt", usage.prompt_tokens),
        ("completion", usage.completion_tokens),
        ("cached", usage.cached_tokens),
        ("reasoning", usage.reasoning_tokens),
        ("estimated", usage.estimated),
    )
    fields: list[tuple[str, float]] = [
        (f"{model}|{kind}", n) for kind, n in counts if n or kind in ("prompt", "completion")
    ]
    if usd is not None:
        fields += [(f"{model}|usd", usd), ("total|usd", usd)]
    return fields


def _by_model(row: dict[str, float]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for field, value in row.items():
        model, _, kind = field.rpartition("|")
        if model == "total" or kind not in _KINDS:  # the sum, or a writer's mark
            continue
        entry = out.setdefault(model, {name: 0 for name in _KINDS.values()})
        entry[_KINDS[kind]] = float(value) if kind == "usd" else int(value)
    for entry in out.values():
        entry["spend_usd"] = float(entry["spend_usd"])
    return out


class RedisUsageStore(UsageStore):
    """The month's usage in Redis, shared by every replica (see the key schema above).

    A tenant without a budget costs a request no Redis round trip: usage is added up locally
    and written in one pipeline every `flush_s`, which also re-reads the month totals of the
    tenants this replica has seen. A budgeted tenant's request reads the month total as Redis
    has it at admission (`spent`) and writes its charge through before its answer ends
    (`commit`), so sequential requests over any number of replicas stop exactly at the budget.
    While Redis is away both give up at once and the figures held here are used instead.

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
        self._adds = 0  # usage records added so far
        self._batched = 0  # of them, in a batch made so far
        self._written = 0  # of them, in a batch Redis has answered
        self._down_until = 0.0  # monotonic: no commit or read tries Redis before it
        self._flushes = 0  # sends Redis has answered
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
        self._adds += 1
        self._start_flusher()
        return self._total(key)

    async def commit(self) -> bool:
        """Group commit: one flush writes what every waiting caller added, so N requests
        settling at once cost about one round trip each, not N. Bounded by ROUND_TRIP_S;
        while Redis is away (the last try failed under DOWN_S ago) it is not tried at all.
        Waiting for a flush under way is not Redis failing: only a send that timed out is."""
        wanted = self._adds
        if self._written >= wanted:
            return True
        if time.monotonic() < self._down_until:
            return False
        sending = False
        try:
            async with asyncio.timeout(ROUND_TRIP_S):
                async with self._flushing:
                    sending = True
                    for _ in range(2):  # a batch left unanswered, then what waited beside it
                        if self._written >= wanted:
                            break
                        await self._send()
        except TimeoutError as exc:
            if sending:
                self._unreachable(exc)
            return False
        except (RedisError, OSError) as exc:
            self._unreachable(exc)
            return False
        return self._written >= wanted

    async def _spent(self, tenant: str) -> float:
        """Redis's total now (one round trip, bounded by ROUND_TRIP_S) plus what this process
        has not written yet. The batch under way counts unless Redis has its mark already; a
        flush that ended meanwhile read the total after the read did, so its figure stands."""
        key = self._key(tenant)
        if time.monotonic() < self._down_until:
            raise RedisError("Redis unreachable a moment ago")
        flushes = self._flushes
        try:
            async with asyncio.timeout(ROUND_TRIP_S):
                total, mark = await self._redis.hmget(key, ["total|usd", f"flush|{self._writer}"])
        except (RedisError, OSError, TimeoutError) as exc:
            self._unreachable(exc)
            raise
        self._start_flusher()
        if flushes != self._flushes and key in self._totals:
            return self._total(key)
        self._totals[key] = float(total or 0.0)
        batch = self._batch
        if batch is not None and key in batch[1] and int(mark or 0) >= batch[0]:
            return self._totals[key] + self._pending.get(key, {}).get("total|usd", 0.0)
        return self._total(key)

    def _unreachable(self, exc: BaseException) -> None:
        if time.monotonic() >= self._down_until:
            logger.warning("usage store: Redis unreachable (%s); usage held", type(exc).__name__)
        self._down_until = time.monotonic() + DOWN_S

    def _known_spent(self, tenant: str) -> float | None:
        """Redis's total at the last read, plus this process's since; never read: this
        process's own spend alone (at least what the tenant spent), if any."""
        key = self._key(tenant)
        held = key in self._pending or (self._batch is not None and key in self._batch[1])
        return self._total(key) if key in self._totals or held else None

    async def by_model(self, tenant: str, month: str) -> dict[str, dict[str, float]]:
        await self.flush()
        row = await self._redis.hgetall(f"{self._prefix}:usage:{month}:{tenant}")
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
            self._batched, upto = self._adds, self._adds
        else:
            upto = self._batched if self._batch is not None else self._written
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
        self._written = max(self._written, upto)
        self._flushes += 1
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
                self._down_until = time.monotonic() + DOWN_S
                if self._failed_flushes == 1:
                    logger.warning("usage store: Redis unreachable (%s); holding usage", exc)
                continue
            self._down_until = 0.0
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

"""`RedisUsageStore`: the month's usage in Redis, shared by every replica (the key schema is in
`gateway.usage`).

A tenant without a budget costs a request no Redis round trip: usage is added up locally and
written in one pipeline every `flush_s`, which also re-reads the month totals of the tenants this
replica has seen. A budgeted tenant's request reads the month total as Redis has it at admission
(`spent`) and writes its charge through before its answer ends (`commit`), so sequential requests
over any number of replicas stop exactly at the budget. Those reads and writes are coalesced:
whatever requests ask while one send is on its way goes in the next one, a single pipeline that
writes first and reads after. While Redis is away both give up at once and the figures held here
are used instead.

Exactly once while the process lives: what is pending becomes a numbered batch, and a batch whose
answer does not come (Redis away, a timeout: it may or may not have been applied) is sent again
as it was until one answer does, while newer usage waits beside it, merged (so it stays small).
Each hash skips a batch it has already applied (APPLY_LUA). What a process had not written when it
dies is lost, so across a crash it is at most once.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import uuid
from typing import Any, TypeVar

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.asyncio.sentinel import Sentinel
from redis.exceptions import NoScriptError, RedisError

from gateway.errors import Unavailable, retry_headers
from gateway.usage import RETENTION_DAYS, UsageStore, month

logger = logging.getLogger(__name__)

MONTH_TTL_S = RETENTION_DAYS * 24 * 3600
ROUND_TRIP_S = 0.5  # a budget's send is given up after this (the flusher's are not)
DOWN_S = 1.0  # after a failed budget send, requests stop trying Redis for this long
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

READERS = 2  # budget read sends in flight at once
T = TypeVar("T")


class RedisUsageStore(UsageStore):
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
        self._marked: set[str] = set()  # hashes holding this writer's mark
        self._loaded = False  # APPLY_LUA, in Redis's script cache
        self._flushing = asyncio.Lock()  # one send at a time, in the order batches are made
        self._totals: dict[str, float] = {}  # key -> month total in Redis at the last read
        self._writes: list[tuple[int, asyncio.Future[None]]] = []  # for the next write send
        self._writer_task: asyncio.Task[None] | None = None  # sending them
        self._reads: list[tuple[str, asyncio.Future[tuple[float, int]]]] = []  # for the next
        self._readers: set[asyncio.Task[None]] = set()  # sending them
        self._down_until = 0.0  # monotonic: no budget send tries Redis before it
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

    async def _add(self, tenant: str, fields: list[tuple[str, float]]) -> float:
        key = self._key(tenant)
        row = self._pending.setdefault(key, {})
        for name, value in fields:
            row[name] = row.get(name, 0) + value
        self._adds += 1
        self._start_flusher()
        return self._total(key)

    async def commit(self) -> bool:
        wanted = self._adds
        if self._written >= wanted:
            return True
        try:
            self._check_up()
            await self._wait(self._write(wanted))
        except TimeoutError as exc:  # behind a flush that Redis does not answer either
            self._unreachable(exc)
            return False
        except (RedisError, OSError):
            return False
        return self._written >= wanted

    async def _spent(self, tenant: str) -> float:
        """Redis's total, read after this request arrived, plus what is not written yet: the
        batch under way counts unless the hash holds its mark (applied, its answer not in). A
        write answered during the read may be in the figure or not: the larger reading holds."""
        key = self._key(tenant)
        self._check_up()
        written = self._written
        figure, mark = await self._wait(self._read(key))
        self._start_flusher()
        batch = self._batch
        share = 0.0 if batch is None else batch[1].get(key, {}).get("total|usd", 0.0)
        applied = batch is not None and mark >= batch[0]
        if key not in self._totals:  # Redis's figure without the batch, as _total() reads it
            self._totals[key] = figure - share if applied else figure
        unwritten = self._pending.get(key, {}).get("total|usd", 0.0) + (0.0 if applied else share)
        if self._written != written:
            return max(figure + unwritten, self._total(key))
        return figure + unwritten

    def _check_up(self) -> None:
        """While Redis is away (a send failed under DOWN_S ago), budgets send nothing."""
        if time.monotonic() < self._down_until:
            raise RedisError("Redis unreachable a moment ago")

    @staticmethod
    async def _wait(answer: asyncio.Future[T]) -> T:
        """A budget send's answer, waited for at most twice ROUND_TRIP_S (a flush under way
        may hold the writes back)."""
        async with asyncio.timeout(2 * ROUND_TRIP_S):
            return await answer

    def _write(self, wanted: int) -> asyncio.Future[None]:
        """Write at least `wanted` adds: with every other write asked before the next send (one
        write send at a time: batches go in the order they are made)."""
        answer: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._writes.append((wanted, answer))
        if self._writer_task is None:
            self._writer_task = asyncio.create_task(self._send_writes())
        return answer

    def _read(self, key: str) -> asyncio.Future[tuple[float, int]]:
        """`key`'s total and this writer's mark in it: with every other read asked before the
        next send (up to READERS sends in flight, so one slow round trip holds no one up)."""
        answer: asyncio.Future[tuple[float, int]] = asyncio.get_running_loop().create_future()
        self._reads.append((key, answer))
        if len(self._readers) < READERS:
            self._readers.add(asyncio.create_task(self._send_reads()))  # it leaves the set itself
        return answer

    async def _send_writes(self) -> None:
        writes: list[tuple[int, asyncio.Future[None]]] = []
        try:
            while self._writes:
                writes, self._writes = self._writes, []
                wanted = max(w for w, _ in writes)
                try:
                    async with self._flushing, asyncio.timeout(ROUND_TRIP_S):
                        for _ in range(2):  # a batch left unanswered, then what waited beside it
                            await self._send(every_total=False)
                            if self._written >= wanted:
                                break
                except (RedisError, OSError, TimeoutError) as exc:
                    self._unreachable(exc)
                    _answer([a for _, a in writes], exc)
                else:
                    _answer([a for _, a in writes], None)
        finally:
            self._writer_task = None
            _answer([a for _, a in writes + self._writes], RedisError("closing"))

    async def _send_reads(self) -> None:
        reads: list[tuple[str, asyncio.Future[tuple[float, int]]]] = []
        try:
            while self._reads:
                reads, self._reads = self._reads, []
                keys = list({key for key, _ in reads})
                try:
                    async with asyncio.timeout(ROUND_TRIP_S):
                        pipe = self._redis.pipeline(transaction=False)
                        for key in keys:
                            pipe.hmget(key, ["total|usd", f"flush|{self._writer}"])
                        got = dict(zip(keys, await pipe.execute(), strict=True))
                except (RedisError, OSError, TimeoutError) as exc:
                    self._unreachable(exc)
                    reads, self._reads = reads + self._reads, []  # all of them: Redis is away
                    _answer([a for _, a in reads], exc)
                    break
                for key, answer in reads:
                    total, mark = got[key]
                    if not answer.done():
                        answer.set_result((_number(total), int(_number(mark))))
        finally:
            if (me := asyncio.current_task()) is not None:
                self._readers.discard(me)
            _answer([a for _, a in reads + self._reads], RedisError("closing"))

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

    async def row(self, tenant: str, month: str) -> dict[str, float]:
        try:
            await self.flush()
            row = await self._redis.hgetall(f"{self._prefix}:usage:{month}:{tenant}")
        except (RedisError, OSError) as exc:
            raise Unavailable(
                f"The usage store cannot be reached now ({type(exc).__name__}); retry shortly.",
                headers=retry_headers(1),
            ) from None
        return {_text(k): _number(v) for k, v in row.items()}

    async def flush(self) -> None:
        """Write the batch left unanswered, if any, else what is pending; re-read the totals."""
        async with self._flushing:
            retry = self._batch is not None
            await self._send()
            if retry and self._pending:  # what waited beside it goes now, not in flush_s
                await self._send()

    async def _send(self, every_total: bool = True) -> None:
        """One pipeline: the batch (the one left unanswered, else a new one of what is
        pending), then the totals of the hashes it wrote, or of every hash seen."""
        if self._batch is None and self._pending:
            self._batches += 1
            self._batch, self._pending = (self._batches, self._pending), {}
            self._batched, upto = self._adds, self._adds
        else:
            upto = self._batched if self._batch is not None else self._written
        number, rows = self._batch or (0, {})
        keys = list(self._totals) if every_total else list(rows)
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
        self._marked.update(rows)
        if refused := sum(results[: len(rows)]):
            logger.error(
                "usage store: Redis refused %d increment(s) (a field is no number)", refused
            )
        for key, total in zip(keys, results[len(rows) :], strict=True):
            self._totals[key] = _number(total)
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
            except Exception as exc:  # Redis away, or an answer it should not give: go on
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
        for task in (self._flusher, self._writer_task, *self._readers):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
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


def _answer(answers: list[asyncio.Future[Any]], failure: BaseException | None) -> None:
    """Each answer not given yet: done, or Redis's failure (the caller's own to handle)."""
    for answer in answers:
        if answer.done():
            continue
        if failure is None:
            answer.set_result(None)
        else:
            answer.set_exception(RedisError(f"Redis unreachable ({type(failure).__name__})"))


def _number(value: object) -> float:
    """A hash field as a number; one that holds none (written by hand?) counts 0, logged."""
    if value is None:
        return 0.0
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        logger.error("usage store: a usage hash holds %r where a number belongs", value)
        return 0.0


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value

"""The usage store's flush when Redis does not answer in time: the increments are kept and
written later, once, whether or not Redis had applied them before the answer was lost."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.cost import Usage
from gateway.usage import month
from gateway.usage_redis import RedisUsageStore
from tests.poll import until
from tests.unit.redis_relay import RedisRelay, port_of

TIMEOUT_S = 0.3  # the gateway's is 2 s (gateway.redis_client); the store is the same
MODEL = "meta-llama/Llama-3.1-8B-Instruct"


def client(url: str) -> Redis:
    """As gateway.redis_client makes them: one reconnect, never a retry after a timeout."""
    return Redis.from_url(
        url,
        decode_responses=True,
        socket_timeout=TIMEOUT_S,
        retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
    )


@pytest.fixture
async def direct(redis_url: str) -> AsyncIterator[Redis]:
    redis = Redis.from_url(redis_url, decode_responses=True)
    yield redis
    await redis.aclose()


def expected(*usages: tuple[int, int, float]) -> dict[str, object]:
    prompt, completion, usd = (sum(u[i] for u in usages) for i in range(3))
    return {
        f"{MODEL}|prompt": prompt,
        f"{MODEL}|completion": completion,
        f"{MODEL}|usd": pytest.approx(usd),
        "total|usd": pytest.approx(usd),
        "key|-|prompt": prompt,  # the key that made them ("-": none named)
        "key|-|completion": completion,
        "key|-|requests": len(usages),
        "key|-|usd": pytest.approx(usd),
    }


async def counted(direct: Redis, key: str) -> dict[str, float]:
    """The usage hash as numbers, without the writers' marks."""
    row = await direct.hgetall(key)
    return {str(k): float(v) for k, v in row.items() if not str(k).startswith("flush|")}


async def add(store: RedisUsageStore, tenant: str, usage: tuple[int, int, float]) -> None:
    await store.add(tenant, MODEL, Usage(usage[0], usage[1]), usage[2])


@contextlib.asynccontextmanager
async def behind_relay(
    redis_url: str, flush_s: float = 3600, socket_timeout: float = TIMEOUT_S
) -> AsyncIterator[tuple[RedisRelay, RedisUsageStore, str, str]]:
    """A store talking to Redis through a relay that can drop its answers; a fresh tenant and
    its usage hash. Closed (and the relay answering again) afterwards."""
    relay = RedisRelay(port_of(redis_url))
    tenant = f"t{uuid.uuid4().hex[:8]}"
    redis = client(await relay.start())
    redis.connection_pool.connection_kwargs["socket_timeout"] = socket_timeout
    store = RedisUsageStore(redis, None, "igw", flush_s=flush_s)
    try:
        yield relay, store, tenant, f"igw:usage:{month()}:{tenant}"
    finally:
        relay.drop_answers = False
        await store.close()
        await relay.close()


async def test_a_flush_that_timed_out_before_redis_ran_it_is_written_later(
    redis_url: str, direct: Redis
) -> None:
    tenant = f"t{uuid.uuid4().hex[:8]}"
    key = f"igw:usage:{month()}:{tenant}"
    store = RedisUsageStore(client(redis_url), None, "igw", flush_s=3600)  # flushed by hand
    first, second = (1000, 100, 0.25), (10, 1, 0.5)
    try:
        await add(store, tenant, first)
        await direct.execute_command("CLIENT", "PAUSE", "1000", "WRITE")
        with pytest.raises(RedisTimeoutError):
            await store.flush()  # Redis held the write, and dropped it when the client gave up
        await add(store, tenant, second)  # while the first batch waits

        async def flushed() -> bool:
            await store.flush()
            return True

        await until(flushed, timeout_s=3, what="a flush Redis answers", ignore=RedisTimeoutError)
        assert await counted(direct, key) == expected(first, second)
    finally:
        await store.close()


async def test_a_flush_whose_answer_was_lost_is_not_counted_twice(
    redis_url: str, direct: Redis
) -> None:
    zeroth, first, second = (1, 1, 0.125), (1000, 100, 0.25), (10, 1, 0.5)
    async with behind_relay(redis_url) as (relay, store, tenant, key):
        await add(store, tenant, zeroth)
        await store.flush()  # as any flush before Redis got slow
        await add(store, tenant, first)
        relay.drop_answers = True
        with pytest.raises(RedisTimeoutError):
            await store.flush()
        # Applied: only the answer was lost.
        assert await counted(direct, key) == expected(zeroth, first)
        relay.drop_answers = False
        await add(store, tenant, second)
        await store.flush()  # the first batch again, skipped by Redis; then the second
        assert await counted(direct, key) == expected(zeroth, first, second)
        assert await store.by_model(tenant, month()) == {
            MODEL: {
                "prompt_tokens": 1011,
                "completion_tokens": 102,
                "cached_prompt_tokens": 0,
                "reasoning_tokens": 0,
                "estimated_tokens": 0,
                "spend_usd": 0.875,
            }
        }
        assert await store.spent(tenant) == pytest.approx(0.875)
    assert [k for k in await direct.hkeys(key) if k.startswith("flush|")] == []  # closed: unmarked


async def test_the_flusher_keeps_usage_through_a_pause(redis_url: str, direct: Redis) -> None:
    tenant = f"t{uuid.uuid4().hex[:8]}"
    key = f"igw:usage:{month()}:{tenant}"
    store = RedisUsageStore(client(redis_url), None, "igw", flush_s=0.05)
    usages = [(n, 1, 0.125) for n in range(1, 9)]
    try:
        await direct.execute_command("CLIENT", "PAUSE", "700", "WRITE")
        for usage in usages:  # some while Redis is paused, some after
            await add(store, tenant, usage)
            await asyncio.sleep(0.15)

        async def all_written() -> bool:
            return await counted(direct, key) == expected(*usages)

        await until(all_written, timeout_s=3, what="every request's usage written once")
    finally:
        await store.close()


async def evalsha_calls(direct: Redis, command: str = "evalsha") -> int:
    stats = await direct.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


async def test_charges_committed_at_once_share_their_round_trips(
    redis_url: str, direct: Redis
) -> None:
    """A budgeted tenant's charge is written through (`commit`): 50 settling at once are all in
    Redis when their commits return, in a few batches, not 50."""
    tenant = f"t{uuid.uuid4().hex[:8]}"
    key = f"igw:usage:{month()}:{tenant}"
    store = RedisUsageStore(client(redis_url), None, "igw", flush_s=3600)
    try:
        await add(store, tenant, (1, 1, 0.125))
        assert await store.commit()  # loads the script: later calls are what is counted
        before = await evalsha_calls(direct)

        async def settle() -> bool:
            await add(store, tenant, (1, 1, 0.125))
            return await store.commit()

        assert await asyncio.gather(*(settle() for _ in range(50))) == [True] * 50
        assert await counted(direct, key) == expected(*[(1, 1, 0.125)] * 51)
        assert await evalsha_calls(direct) - before <= 3
        assert await store.commit()  # nothing new: no round trip
        assert await evalsha_calls(direct) - before <= 3
        # reads at admission coalesce the same way, each after its caller asked
        reads = await evalsha_calls(direct, "hmget")
        spent = await asyncio.gather(*(store.spent(tenant) for _ in range(50)))
        assert spent == [pytest.approx(51 * 0.125)] * 50
        assert 1 <= await evalsha_calls(direct, "hmget") - reads <= 4
    finally:
        await store.close()


async def test_a_commit_gives_up_quickly_while_redis_is_away(redis_url: str, direct: Redis) -> None:
    async with behind_relay(redis_url, flush_s=0.05) as (relay, store, tenant, key):
        relay.drop_answers = True
        await add(store, tenant, (5, 5, 0.5))
        loop = asyncio.get_running_loop()
        start = loop.time()
        assert not await store.commit()  # bounded: the socket's timeout here, 0.5 s at most
        assert loop.time() - start < 1.0
        start = loop.time()
        assert not await store.commit()  # Redis was away a moment ago: not even tried
        with pytest.raises(RedisError):
            await store.spent(tenant)
        assert loop.time() - start < 0.2
        assert store.known_spent(tenant) == 0.5  # what budgets use meanwhile: its own spend
        relay.drop_answers = False

        async def written() -> bool:
            return await counted(direct, key) == expected((5, 5, 0.5))

        await until(written, timeout_s=5, what="the held charge written by the flusher")
        assert await store.spent(tenant) == pytest.approx(0.5)


async def test_a_read_of_a_hung_redis_gives_up_and_stops_trying(redis_url: str) -> None:
    async with behind_relay(redis_url, socket_timeout=5) as (relay, store, tenant, _):
        assert await store.spent(tenant) == 0
        relay.drop_answers = True
        loop = asyncio.get_running_loop()
        start = loop.time()
        with pytest.raises(RedisError):
            await store.spent(tenant)  # bounded at 0.5 s, not the socket's 5 s
        assert 0.4 < loop.time() - start < 2.0  # not the socket's 5 s
        start = loop.time()
        with pytest.raises(RedisError):
            await store.spent(tenant)  # Redis hung a moment ago: not tried
        assert loop.time() - start < 0.2


async def test_a_batch_applied_but_unanswered_is_not_counted_twice(
    redis_url: str, direct: Redis
) -> None:
    async with behind_relay(redis_url) as (relay, store, tenant, key):
        await add(store, tenant, (1, 1, 0.125))
        await store.flush()  # the script is loaded, the tenant's total read
        await add(store, tenant, (10, 10, 0.25))
        relay.drop_answers = True
        with pytest.raises(RedisTimeoutError):
            await store.flush()  # applied by Redis, its answer lost: the batch stays unanswered
        relay.drop_answers = False
        assert await counted(direct, key) == expected((1, 1, 0.125), (10, 10, 0.25))
        await add(store, tenant, (1, 1, 0.5))  # pending beside the unanswered batch
        assert await store.spent(tenant) == pytest.approx(0.875)  # the batch once, not twice


async def test_a_total_that_is_no_number_stops_nothing(redis_url: str, direct: Redis) -> None:
    """A hash edited by hand to hold no number: its tenant's total reads 0 (logged), and the
    flusher goes on writing everyone else's usage."""
    broken, other = f"t{uuid.uuid4().hex[:8]}", f"t{uuid.uuid4().hex[:8]}"
    await direct.hset(
        f"igw:usage:{month()}:{broken}",
        mapping={"total|usd": "not a number", f"{MODEL}|prompt": "nor this"},
    )
    store = RedisUsageStore(client(redis_url), None, "igw", flush_s=0.05)
    try:
        assert await store.spent(broken) == 0.0
        await add(store, broken, (1, 1, 0.25))  # its usd increment is refused, the rest kept
        await add(store, other, (2, 2, 0.5))

        async def written() -> bool:
            return await counted(direct, f"igw:usage:{month()}:{other}") == expected((2, 2, 0.5))

        await until(written, timeout_s=3, what="the other tenant's usage flushed")
        await add(store, other, (1, 1, 0.25))
        assert await store.commit()
        assert await store.spent(other) == pytest.approx(0.75)
        broken_row = (await store.by_model(broken, month()))[MODEL]  # read, not a 500
        assert (broken_row["prompt_tokens"], broken_row["completion_tokens"]) == (0, 1)
        assert broken_row["spend_usd"] == pytest.approx(0.25)
    finally:
        await store.close()

"""`Limiter.free_slots`: the tenant's free slots now, behind `x-ratelimit-remaining-requests`,
from what the process already knows (never a round trip). The in-process limiter knows exactly;
a Redis replica knows its own requests now and the other replicas' as of its last heartbeat (a
change racing a heartbeat's call is set right by the next one: hence `until` there). Redis runs
as a private redis-server, heartbeats every 0.3 s."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable

import pytest

from gateway.config import Account, LimiterSettings, Tenant
from gateway.errors import QueueTimeout
from gateway.limits.memory import MemoryLimiter
from gateway.limits.redis import RedisLimiter
from tests.poll import until

ACCOUNT = Account(name="main", api_key="wandb-test", max_concurrency=4)


def tenant(name: str, limit: int) -> Tenant:
    return Tenant(
        name=name, key_hashes=frozenset(), account="main", project="acme/t", max_concurrency=limit
    )


A, B = tenant("a", 3), tenant("b", 4)


async def test_memory_counts_the_tenants_pool_and_the_accounts() -> None:
    limiter = MemoryLimiter()
    assert limiter.free_slots(ACCOUNT, A) == 3  # never seen: its whole limit
    held = [await limiter.acquire(ACCOUNT, A, 1) for _ in range(2)]
    assert (limiter.free_slots(ACCOUNT, A), limiter.free_slots(ACCOUNT, B)) == (1, 2)
    held.append(await limiter.acquire(ACCOUNT, A, 1))
    held.append(await limiter.acquire(ACCOUNT, B, 1))
    assert (limiter.free_slots(ACCOUNT, A), limiter.free_slots(ACCOUNT, B)) == (0, 0)
    with pytest.raises(QueueTimeout):
        await limiter.acquire(ACCOUNT, B, 0.01)
    await held.pop().release()
    assert (limiter.free_slots(ACCOUNT, A), limiter.free_slots(ACCOUNT, B)) == (0, 1)
    for lease in held:
        await lease.release()
    assert (limiter.free_slots(ACCOUNT, A), limiter.free_slots(ACCOUNT, B)) == (3, 4)


async def test_memory_says_none_while_the_tenant_has_someone_waiting() -> None:
    limiter = MemoryLimiter()
    one = tenant("a", 1)
    lease = await limiter.acquire(ACCOUNT, one, 1)
    waiter = asyncio.ensure_future(limiter.acquire(ACCOUNT, one, 5))
    await asyncio.sleep(0)
    await lease.release()  # the slot goes straight to the waiter
    assert limiter.free_slots(ACCOUNT, one) == 0
    await (await waiter).release()
    assert limiter.free_slots(ACCOUNT, one) == 1


def settles(limiter: RedisLimiter, tenant: Tenant, free: int) -> Awaitable[bool]:
    """Within two heartbeats, `free_slots` says `free`."""
    return until(lambda: limiter.free_slots(ACCOUNT, tenant) == free, 1.5, f"{free} free")


def redis_limiter(url: str, prefix: str, keep_s: float = 0) -> RedisLimiter:
    settings = LimiterSettings(
        backend="redis", redis_url=url, key_prefix=prefix, lease_ttl_s=1.2, keep_slots_s=keep_s
    )
    return RedisLimiter(settings)


async def test_redis_counts_its_own_and_the_other_replicas_by_the_heartbeat(
    redis_url: str,
) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}"
    here, there = redis_limiter(redis_url, prefix), redis_limiter(redis_url, prefix)
    await here.start()
    await there.start()
    try:
        mine = await here.acquire(ACCOUNT, A, 1)
        await settles(here, A, 2)
        theirs = [await there.acquire(ACCOUNT, A, 1), await there.acquire(ACCOUNT, B, 1)]
        await settles(here, A, 1)  # the other replica's, once a heartbeat counted them
        await settles(here, B, 1)  # the account's: 3 of 4 held
        await settles(there, A, 1)
        second = await here.acquire(ACCOUNT, A, 1)
        await settles(here, A, 0)
        await settles(there, A, 0)
        for lease in theirs:
            await lease.release()
        await second.release()
        await settles(here, A, 2)
        await settles(there, B, 3)  # the account: 1 of 4 held
        await mine.release()
        await settles(here, A, 3)
    finally:
        await here.close()
        await there.close()


async def test_redis_counts_a_kept_slot_as_free(redis_url: str) -> None:
    limiter = redis_limiter(redis_url, f"t{uuid.uuid4().hex[:8]}", keep_s=5)
    await limiter.start()
    try:
        lease = await limiter.acquire(ACCOUNT, A, 1)
        await settles(limiter, A, 2)
        await lease.release()  # kept for a's next request, still a lease in Redis
        await settles(limiter, A, 3)
        await asyncio.sleep(0.7)  # heartbeats that count the kept slot as held, but idle
        assert limiter.free_slots(ACCOUNT, A) == 3
        again = await limiter.acquire(ACCOUNT, A, 1)  # takes the kept slot
        await settles(limiter, A, 2)
        await again.release()
    finally:
        await limiter.close()

"""One behavioural suite for every limiter backend: the in-memory one and Redis.

The Redis backend runs against a private redis-server (never the developer's), with a fresh key
prefix per test, so its leftovers can be inspected: after every test, Redis must hold no lease
and no ticket.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from gateway.config import Account, LimiterSettings, Tenant
from gateway.errors import QueueTimeout
from gateway.limits.base import AdaptiveLimits, Lease, Limiter
from gateway.limits.memory import MemoryLimiter
from gateway.limits.redis import RedisLimiter
from tests.poll import until


def account(limit: int, name: str = "main") -> Account:
    return Account(name=name, api_key="wandb-test", max_concurrency=limit)


def tenant(name: str, limit: int, weight: int = 1, account_name: str = "main") -> Tenant:
    return Tenant(
        name=name,
        key_hashes=frozenset(),
        account=account_name,
        project="acme/test",
        max_concurrency=limit,
        weight=weight,
    )


class Backend:
    """Makes limiters of one kind and looks at their state from outside."""

    def __init__(self, kind: str, redis_url: str | None) -> None:
        self.kind = kind
        self.redis_url = redis_url
        self.prefix = f"t{uuid.uuid4().hex[:8]}"
        self.limiter: Limiter
        self.redis: Redis | None = None

    async def start(self, adaptive: AdaptiveLimits | None = None) -> Limiter:
        if self.kind == "memory":
            self.limiter = MemoryLimiter(adaptive)
        else:
            assert self.redis_url is not None
            self.redis = Redis.from_url(self.redis_url, decode_responses=True)
            settings = LimiterSettings(
                backend="redis",
                redis_url=self.redis_url,
                key_prefix=self.prefix,
                lease_ttl_s=1.2,
                keep_slots_s=0,  # released slots go back at once (kept slots: test_redis_limiter)
            )
            self.limiter = RedisLimiter(settings, adaptive=adaptive)
        await self.limiter.start()
        return self.limiter

    async def close(self) -> None:
        await self.limiter.close()
        if self.redis is not None:
            await self.redis.aclose()

    async def queued(self, account_name: str = "main") -> int:
        """Tickets waiting in the account, as the backend itself sees them right now."""
        if self.redis is None:
            for state in self.limiter.pools():
                if state.name == f"account:{account_name}":
                    return state.queued
            return 0
        return int(await self.redis.zcard(f"{self.prefix}:{{acct:{account_name}}}:waiters"))

    async def assert_clean(self) -> None:
        """No slot held and nobody waiting."""
        if self.redis is None:
            for state in self.limiter.pools():
                assert (state.name, state.inflight, state.queued) == (state.name, 0, 0)
            return
        keys = [k async for k in self.redis.scan_iter(match=f"{self.prefix}:*")]
        # Only the tenants' configuration may stay behind.
        assert all(k.endswith(":tenants") for k in keys), sorted(keys)


async def wait_queued(backend: Backend, n: int, timeout_s: float = 5.0) -> None:
    """Poll the queue depth: a ticket landing in Redis has no event to await."""

    async def queued() -> bool:
        return await backend.queued() == n

    await until(queued, timeout_s, f"{n} queued")


@pytest.fixture(params=["memory", "redis"])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    url = request.getfixturevalue("redis_url") if request.param == "redis" else None
    backend = Backend(request.param, url)
    yield backend
    await backend.close()


async def test_grants_at_once_under_the_limit(backend: Backend) -> None:
    limiter = await backend.start()
    acc, a = account(3), tenant("a", 3)
    leases = [await limiter.acquire(acc, a, 0.01) for _ in range(3)]
    assert all(lease.queue_s == 0.0 for lease in leases)
    for lease in leases:
        await lease.release()
    await backend.assert_clean()


async def test_account_limit_holds_across_tenants(backend: Backend) -> None:
    limiter = await backend.start()
    acc, a, b = account(2), tenant("a", 2), tenant("b", 2)
    held = [await limiter.acquire(acc, a, 1), await limiter.acquire(acc, a, 1)]
    with pytest.raises(QueueTimeout):
        await limiter.acquire(acc, b, 0.1)
    await held[0].release()
    held[0] = await limiter.acquire(acc, b, 1)
    for lease in held:
        await lease.release()
    await backend.assert_clean()


async def test_tenant_limit_holds_while_the_account_has_room(backend: Backend) -> None:
    limiter = await backend.start()
    acc, a, b = account(3), tenant("a", 1), tenant("b", 2)
    first = await limiter.acquire(acc, a, 1)
    with pytest.raises(QueueTimeout):
        await limiter.acquire(acc, a, 0.1)
    others = [await limiter.acquire(acc, b, 0.1), await limiter.acquire(acc, b, 0.1)]
    for lease in [first, *others]:
        await lease.release()
    await backend.assert_clean()


async def queue_up(
    backend: Backend, acc: Account, tenants: list[Tenant], order: list[str]
) -> list[asyncio.Task[None]]:
    """One waiter per entry, each queued before the next arrives; each records its grant."""

    async def wait(t: Tenant, label: str) -> None:
        lease = await backend.limiter.acquire(acc, t, 10)
        order.append(label)
        await lease.release()

    tasks = []
    before = await backend.queued()
    for i, t in enumerate(tenants):
        tasks.append(asyncio.create_task(wait(t, f"{t.name}{i}")))
        await wait_queued(backend, before + i + 1)
    return tasks


async def test_first_come_first_served_within_a_tenant(backend: Backend) -> None:
    limiter = await backend.start()
    acc, a = account(1), tenant("a", 1)
    holder = await limiter.acquire(acc, a, 1)
    order: list[str] = []
    tasks = await queue_up(backend, acc, [a] * 6, order)
    await holder.release()
    await asyncio.gather(*tasks)
    assert order == [f"a{i}" for i in range(6)]
    await backend.assert_clean()


async def test_light_tenant_does_not_wait_behind_a_flood(backend: Backend) -> None:
    limiter = await backend.start()
    acc, heavy, light = account(1), tenant("heavy", 1), tenant("light", 1)
    holder = await limiter.acquire(acc, heavy, 1)
    order: list[str] = []
    tasks = await queue_up(backend, acc, [heavy] * 8 + [light], order)
    await holder.release()
    await asyncio.gather(*tasks)
    # Round-robin: the light tenant gets the very next freed slot or the one after.
    assert order.index("light8") <= 1
    await backend.assert_clean()


async def test_weights_give_heavier_tenants_more_turns(backend: Backend) -> None:
    limiter = await backend.start()
    acc = account(1)
    a, b, c = tenant("a", 1, weight=3), tenant("b", 1), tenant("c", 1)
    holder = await limiter.acquire(acc, c, 1)
    order: list[str] = []
    tasks = await queue_up(backend, acc, [a] * 6 + [b] * 6, order)
    await holder.release()
    await asyncio.gather(*tasks)
    assert "".join(label[0] for label in order) == "aaabaaabbbbb"
    await backend.assert_clean()


async def test_timeout_is_a_retryable_429(backend: Backend) -> None:
    limiter = await backend.start()
    acc, a = account(1), tenant("a", 1)
    holder = await limiter.acquire(acc, a, 1)
    start = time.monotonic()
    with pytest.raises(QueueTimeout) as info:
        await limiter.acquire(acc, a, 0.2)
    assert 0.2 <= time.monotonic() - start < 1.0
    assert info.value.status == 429
    assert int(info.value.headers["retry-after"]) >= 1
    assert int(info.value.headers["retry-after-ms"]) >= 1
    assert await backend.queued() == 0
    await holder.release()
    await backend.assert_clean()


async def test_cancelled_waiter_leaves_no_ticket(backend: Backend) -> None:
    limiter = await backend.start()
    acc, a = account(1), tenant("a", 1)
    holder = await limiter.acquire(acc, a, 1)
    task = asyncio.create_task(limiter.acquire(acc, a, 10))
    await wait_queued(backend, 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await backend.queued() == 0
    await holder.release()
    again = await limiter.acquire(acc, a, 0.01)  # the slot is free, not held by a ghost
    await again.release()
    await backend.assert_clean()


async def test_release_is_idempotent(backend: Backend) -> None:
    limiter = await backend.start()
    acc, a = account(2), tenant("a", 2)
    lease = await limiter.acquire(acc, a, 1)
    await lease.release()
    await lease.release()
    held = [await limiter.acquire(acc, a, 0.1), await limiter.acquire(acc, a, 0.1)]
    with pytest.raises(QueueTimeout):  # a double release freed one slot, not two
        await limiter.acquire(acc, a, 0.1)
    for lease in held:
        await lease.release()
        await lease.release()
    await backend.assert_clean()


async def test_a_storm_never_exceeds_a_limit_and_leaves_nothing(backend: Backend) -> None:
    limiter = await backend.start()
    rng = random.Random(7)
    acc = account(4)
    tenants = [tenant("a", 3, weight=2), tenant("b", 2), tenant("c", 4)]
    holding: Counter[str] = Counter()
    peak: Counter[str] = Counter()
    outcomes: Counter[str] = Counter()

    def enter(name: str, limit: int) -> None:
        holding[name] += 1
        peak[name] = max(peak[name], holding[name])
        assert holding[name] <= limit, f"{name} over its limit"

    async def worker(i: int) -> None:
        t = rng.choice(tenants)
        timeout = rng.choice([0.02, 0.2, 5.0])
        hold = rng.uniform(0, 0.015)
        fail = rng.random() < 0.1
        await asyncio.sleep(rng.uniform(0, 0.05))  # requests arrive at random times
        try:
            lease: Lease = await limiter.acquire(acc, t, timeout)
        except QueueTimeout:
            outcomes["timeout"] += 1
            return
        try:
            enter("account", acc.max_concurrency)
            enter(t.name, t.max_concurrency)
            await asyncio.sleep(hold)  # the request runs a while
            if fail:
                raise RuntimeError("upstream blew up")
            outcomes["ok"] += 1
        except RuntimeError:
            outcomes["error"] += 1
        finally:
            holding["account"] -= 1
            holding[t.name] -= 1
            await lease.release()

    tasks = [asyncio.create_task(worker(i)) for i in range(150)]
    for task in rng.sample(tasks, 25):  # clients going away, mid-queue or mid-hold
        asyncio.get_running_loop().call_later(rng.uniform(0, 0.15), task.cancel)
    results = await asyncio.gather(*tasks, return_exceptions=True)
    outcomes["cancelled"] = sum(isinstance(r, asyncio.CancelledError) for r in results)
    assert not [r for r in results if isinstance(r, Exception)]
    assert peak["account"] == acc.max_concurrency  # the storm did saturate it
    assert all(outcomes[k] for k in ("ok", "error", "timeout", "cancelled")), outcomes
    await backend.assert_clean()


async def test_upstream_429s_halve_the_limit_which_then_recovers(backend: Backend) -> None:
    limiter = await backend.start(AdaptiveLimits(recover_s=0.3, cut_window_s=1.0))
    acc, a = account(4), tenant("a", 4)
    first = await limiter.acquire(acc, a, 1)  # the limiter learns the account
    limiter.upstream_saturated("main")
    limiter.upstream_saturated("main")  # the same burst: cut once, to 2
    second = await limiter.acquire(acc, a, 0.01)
    start = time.monotonic()
    third = await limiter.acquire(acc, a, 3)  # waits for the limit to grow back to 3
    assert 0.15 < time.monotonic() - start < 1.5
    fourth = await limiter.acquire(acc, a, 3)  # and then to 4
    for lease in (first, second, third, fourth):
        await lease.release()
    await backend.assert_clean()


def test_adaptive_limits_cut_once_per_burst_and_recover_step_by_step() -> None:
    now = [100.0]
    limits = AdaptiveLimits(recover_s=5.0, cut_window_s=1.0, clock=lambda: now[0])
    assert limits.limit("a", 8) == 8 and limits.next_step_s("a") is None
    assert limits.saturated("a", 8) == 4
    now[0] += 0.5
    assert limits.saturated("a", 8) == 4  # the same burst
    now[0] += 1.0
    assert limits.saturated("a", 8) == 2  # a new one
    now[0] += 5.0
    assert limits.limit("a", 8) == 3
    assert limits.next_step_s("a") == pytest.approx(5.0)
    now[0] += 30.0
    assert limits.limit("a", 8) == 8 and limits.next_step_s("a") is None
    for _ in range(4):  # never below one
        now[0] += 2.0
        limits.saturated("b", 3)
    assert limits.limit("b", 3) == 1


async def test_a_reload_that_raises_limits_lets_waiters_in_at_once(backend: Backend) -> None:
    limiter = await backend.start()
    acc = account(1)
    holder = await limiter.acquire(acc, tenant("a", 1), 1)
    waiter = asyncio.create_task(limiter.acquire(acc, tenant("a", 1), 5))
    await wait_queued(backend, 1)
    limiter.reconfigure({"main": account(2)}, {"a": tenant("a", 2)})
    lease = await asyncio.wait_for(waiter, 1)  # long before the holder lets go
    await lease.release()
    await holder.release()
    await backend.assert_clean()

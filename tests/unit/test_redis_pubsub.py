"""The limiter's pub/sub subscription notices a connection that died without a word, and is made
anew: grants and reclaims published afterwards arrive again."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from gateway.config import Account, LimiterSettings, Tenant
from gateway.limits.redis import RedisLimiter, heartbeat
from tests.poll import until
from tests.unit.redis_relay import RedisRelay, port_of


@pytest.fixture
async def proxy(redis_url: str) -> AsyncIterator[RedisRelay]:
    relay = RedisRelay(port_of(redis_url))
    yield relay
    await relay.close()


async def test_a_silently_dead_subscription_is_noticed_and_made_anew(
    redis_url: str, proxy: RedisRelay, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(heartbeat, "PUBSUB_PING_S", 0.2)  # the defaults are 1 s and 2 s
    monkeypatch.setattr(heartbeat, "PUBSUB_DEAD_S", 0.5)
    prefix = f"t{uuid.uuid4().hex[:8]}"
    url = await proxy.start()
    settings = LimiterSettings(backend="redis", redis_url=url, key_prefix=prefix, keep_slots_s=30)
    limiter = RedisLimiter(settings, probe_interval_s=0.1)
    direct = Redis.from_url(redis_url, decode_responses=True)  # not through the proxy
    leases = f"{prefix}:{{acct:main}}:leases"
    account = Account(name="main", api_key="wandb-test", max_concurrency=2)
    tenant = Tenant(
        name="a", key_hashes=frozenset(), account="main", project="acme/t", max_concurrency=2
    )

    async def leased_is(n: int) -> bool:
        return bool(await direct.zcard(leases) == n)

    async def subscribed(n: int) -> bool:
        return bool(
            await direct.pubsub_numsub(f"{prefix}:grants:all") == [(f"{prefix}:grants:all", n)]
        )

    async def a_reclaim_is_heard(subscriptions: int) -> None:
        """A kept slot goes back the moment a reclaim is published: only pub/sub tells it (no
        one queues, and it would be kept 30 s)."""
        await until(lambda: not limiter.degraded, what="shared limits")
        await until(lambda: subscribed(subscriptions), what=f"{subscriptions} subscription(s)")
        await (await limiter.acquire(account, tenant, 1)).release()
        assert await leased_is(1)
        await direct.publish(f"{prefix}:grants:all", leases)
        await until(lambda: leased_is(0), timeout_s=1, what="the kept slot given back")

    await limiter.start()
    try:
        await a_reclaim_is_heard(1)
        proxy.silence_subscribers()  # the subscription's connection dies without a word
        await until(lambda: proxy.subscribers() == 2, timeout_s=5, what="a new subscription")
        await until(lambda: leased_is(0), what="the outage gave the kept slot back")
        await a_reclaim_is_heard(2)  # published after the silent death: heard (the dead one
        # still counts as subscribed in Redis: it never heard of the death either)
        # A connection that is killed, not silently, is made anew by redis-py itself.
        await direct.client_kill_filter(_type="pubsub")
        await a_reclaim_is_heard(1)
    finally:
        await limiter.close()
        await direct.aclose()

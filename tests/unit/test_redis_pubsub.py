"""The limiter's pub/sub subscription notices a connection that died without a word, and is made
anew: grants and reclaims published afterwards arrive again."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from redis.asyncio import Redis

from gateway.config import Account, LimiterSettings, Tenant
from gateway.limits.redis import RedisLimiter, heartbeat
from tests.poll import until


@dataclass
class Relayed:
    """One connection through the proxy."""

    subscriber: bool = False  # it sent a SUBSCRIBE
    silent: bool = False  # relays nothing either way any more, and closes nothing: a dead link
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    writers: list[asyncio.StreamWriter] = field(default_factory=list)


class SilencingProxy:
    """A TCP relay to redis-server that can let a connection die silently: its bytes are dropped
    both ways, and no FIN comes, as when a NAT or a proxy forgets an idle connection."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.relayed: list[Relayed] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        return f"redis://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/0"

    def silence_subscribers(self) -> None:
        for conn in self.relayed:
            conn.silent = conn.silent or conn.subscriber

    def subscribers(self) -> int:
        return sum(conn.subscriber for conn in self.relayed)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        conn = Relayed(writers=[writer, up_writer])
        self.relayed.append(conn)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, up: bool) -> None:
            while data := await src.read(65536):
                conn.subscriber = conn.subscriber or (up and b"SUBSCRIBE" in data.upper())
                if not conn.silent:
                    dst.write(data)
                    await dst.drain()
            if not conn.silent:
                dst.close()

        conn.tasks = [
            asyncio.create_task(pipe(reader, up_writer, True)),
            asyncio.create_task(pipe(up_reader, writer, False)),
        ]
        await asyncio.gather(*conn.tasks, return_exceptions=True)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for conn in self.relayed:
            for task in conn.tasks:
                task.cancel()
            for writer in conn.writers:
                writer.close()
        await asyncio.gather(*(t for c in self.relayed for t in c.tasks), return_exceptions=True)
        writers = [w.wait_closed() for c in self.relayed for w in c.writers]
        await asyncio.gather(*writers, return_exceptions=True)
        if self.server is not None:
            await self.server.wait_closed()


@pytest.fixture
async def proxy(redis_url: str) -> AsyncIterator[SilencingProxy]:
    relay = SilencingProxy(int(redis_url.rsplit(":", 1)[1].split("/")[0]))
    yield relay
    await relay.close()


async def test_a_silently_dead_subscription_is_noticed_and_made_anew(
    redis_url: str, proxy: SilencingProxy, monkeypatch: pytest.MonkeyPatch
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

"""What only the Redis limiter promises: one limit across replicas, leases that survive long
requests and die with their replica, and serving on through Redis outages.

Every test uses private redis-servers (the ones on 6379 belong to the developer).
"""

from __future__ import annotations

import asyncio
import logging
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from gateway.config import Account, LimiterSettings, SentinelSettings, Tenant
from gateway.errors import QueueTimeout, Unavailable
from gateway.limits.redis import RedisLimiter
from gateway.limits.redis.scripts import Op
from tests.poll import until, until_sync
from tests.procs import ROOT, free_port

ACCOUNT = Account(name="main", api_key="wandb-test", max_concurrency=1)


def tenant(name: str, limit: int) -> Tenant:
    return Tenant(
        name=name, key_hashes=frozenset(), account="main", project="acme/t", max_concurrency=limit
    )


def account(limit: int) -> Account:
    return Account(name="main", api_key="wandb-test", max_concurrency=limit)


def settings(url: str, prefix: str, **kw: object) -> LimiterSettings:
    fields: dict[str, object] = {"redis_url": url, "keep_slots_s": 0, **kw}
    return LimiterSettings(backend="redis", key_prefix=prefix, **fields)  # type: ignore[arg-type]


class Redises:
    """Limiters sharing one prefix (replicas of one gateway), and a client to look inside."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.prefix = f"t{uuid.uuid4().hex[:8]}"
        # One retry, so its pooled connection survives a restarted server.
        self.client = Redis.from_url(url, decode_responses=True, retry=Retry(NoBackoff(), 1))
        self.limiters: list[RedisLimiter] = []

    async def replica(self, **kw: object) -> RedisLimiter:
        probe = float(kw.pop("probe_interval_s", 1.0))  # type: ignore[arg-type]
        limiter = RedisLimiter(settings(self.url, self.prefix, **kw), probe_interval_s=probe)
        await limiter.start()
        self.limiters.append(limiter)
        return limiter

    def key(self, name: str) -> str:
        return f"{self.prefix}:{{acct:main}}:{name}"

    async def wait_queued(self, n: int, timeout_s: float = 5.0) -> None:
        async def queued() -> bool:
            return await self.client.zcard(self.key("waiters")) == n

        await until(queued, timeout_s, f"{n} tickets queued")

    async def leases_become(self, n: int, timeout_s: float) -> None:
        async def leases() -> bool:
            return await self.client.zcard(self.key("leases")) == n

        await until(leases, timeout_s, f"{n} leases in Redis")

    async def assert_clean(self) -> None:
        keys = [k async for k in self.client.scan_iter(match=f"{self.prefix}:*")]
        assert all(k.endswith(":tenants") for k in keys), sorted(keys)

    async def close(self) -> None:
        for limiter in self.limiters:
            await limiter.close()
        await self.client.aclose()


@pytest.fixture
async def redises(redis_url: str) -> AsyncIterator[Redises]:
    r = Redises(redis_url)
    yield r
    await r.close()


@pytest.mark.parametrize("keep_s", [0, 30], ids=["slots-back-at-once", "kept-slots"])
async def test_replicas_share_one_limit(redises: Redises, keep_s: float) -> None:
    replicas = [await redises.replica(lease_ttl_s=2, keep_slots_s=keep_s) for _ in range(2)]
    rng = random.Random(3)
    acc, a, b = account(3), tenant("a", 2), tenant("b", 3)
    holding = peak = 0

    async def worker() -> None:
        nonlocal holding, peak
        await asyncio.sleep(rng.uniform(0, 0.03))  # requests arrive at random times
        lease = await rng.choice(replicas).acquire(acc, rng.choice([a, b]), 10)
        holding += 1
        peak = max(peak, holding)
        assert holding <= 3
        await asyncio.sleep(rng.uniform(0, 0.01))  # and hold their slot a while
        holding -= 1
        await lease.release()

    await asyncio.gather(*(worker() for _ in range(80)))
    assert peak == 3
    for limiter in replicas:  # kept slots go back at close
        await limiter.close()
    redises.limiters.clear()
    await redises.assert_clean()


async def evalsha_calls(redises: Redises) -> int:
    stats = await redises.client.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


async def test_acquires_and_releases_asked_together_share_calls(redises: Redises) -> None:
    """100 requests at once on one replica: far fewer script calls than 200 acquires and
    releases, the limit (8) still held exactly, and every slot handed back."""
    limiter = await redises.replica()
    acc, t = account(8), tenant("a", 8)
    holding = peak = 0

    async def request() -> None:
        nonlocal holding, peak
        lease = await limiter.acquire(acc, t, 10)
        holding += 1
        peak = max(peak, holding)
        await asyncio.sleep(0.002)  # holds its slot a while
        holding -= 1
        await lease.release()

    await request()  # the account's tenants are known; scripts are loaded
    before = await evalsha_calls(redises)
    await asyncio.gather(*(request() for _ in range(100)))
    calls = await evalsha_calls(redises) - before
    assert peak == 8
    assert calls < 100, f"{calls} script calls for 200 operations"
    await redises.assert_clean()


async def test_first_come_first_served_across_replicas(redises: Redises) -> None:
    r1, r2 = await redises.replica(), await redises.replica()
    a = tenant("a", 1)
    holder = await r1.acquire(ACCOUNT, a, 1)
    order: list[int] = []

    async def wait(limiter: RedisLimiter, i: int) -> None:
        lease = await limiter.acquire(ACCOUNT, a, 10)
        order.append(i)
        await lease.release()

    tasks = []
    for i in range(8):
        tasks.append(asyncio.create_task(wait(r2 if i % 2 == 0 else r1, i)))
        await redises.wait_queued(i + 1)
    await holder.release()
    await asyncio.gather(*tasks)
    assert order == list(range(8))
    await redises.assert_clean()


async def test_a_renewed_lease_outlives_its_ttl(redises: Redises) -> None:
    r1, r2 = await redises.replica(lease_ttl_s=0.6), await redises.replica(lease_ttl_s=0.6)
    a = tenant("a", 1)
    lease = await r1.acquire(ACCOUNT, a, 1)
    with pytest.raises(QueueTimeout):  # held for 2 s, over three TTLs: still ours
        await r2.acquire(ACCOUNT, a, 2.0)
    assert await redises.client.zcard(redises.key("leases")) == 1
    await lease.release()
    await redises.assert_clean()


CRASHING_REPLICA = """
import asyncio, sys
from gateway.config import Account, LimiterSettings, Tenant
from gateway.limits.redis import RedisLimiter

async def main():
    url, prefix, ttl = sys.argv[1], sys.argv[2], float(sys.argv[3])
    settings = LimiterSettings(backend="redis", redis_url=url, key_prefix=prefix, lease_ttl_s=ttl)
    limiter = RedisLimiter(settings)
    await limiter.start()
    tenant = Tenant(
        name="a", key_hashes=frozenset(), account="main", project="acme/t", max_concurrency=1
    )
    await limiter.acquire(Account(name="main", api_key="k", max_concurrency=1), tenant, 5)
    print("held", flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
"""


async def test_a_killed_replicas_slot_comes_back_within_the_ttl(redises: Redises) -> None:
    ttl = 0.6
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CRASHING_REPLICA,
        redises.url,
        redises.prefix,
        str(ttl),
        cwd=ROOT,
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None
    try:
        assert await asyncio.wait_for(proc.stdout.readline(), 15) == b"held\n"
        survivor = await redises.replica(lease_ttl_s=ttl)
        waiter = asyncio.create_task(survivor.acquire(ACCOUNT, tenant("a", 1), 10))
        await redises.wait_queued(1)
        # Time must pass beyond the TTL (no event marks it): the dead-to-be renews its lease,
        # so the waiter keeps waiting.
        await asyncio.sleep(ttl * 1.5)
        assert not waiter.done()
        proc.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        lease = await waiter
        # Expiry within the TTL, plus one heartbeat of the survivor to notice.
        assert time.monotonic() - killed < ttl + min(1.0, ttl / 4) + 0.3
        await lease.release()
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.communicate()
    await redises.assert_clean()


async def kill(limiter: RedisLimiter) -> None:
    """SIGKILL, in process: no more heartbeats, no grant heard, nothing released or withdrawn.

    Its requests stay blocked on their futures, which nothing resolves any more.
    """
    link = limiter._link
    tasks = [t for t in (link._runner, link._listener) if t is not None]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    link._runner = link._listener = None


async def scores(redises: Redises, name: str) -> dict[str, float]:
    return dict(await redises.client.zrange(redises.key(name), 0, -1, withscores=True))


async def next_beat_renews_leases(redises: Redises) -> bool:
    """Wait for the next heartbeat of the one replica with tickets: did it renew its leases?"""
    leases, tickets = await scores(redises, "leases"), await scores(redises, "waiters")

    async def renewed_tickets() -> bool:
        return await scores(redises, "waiters") != tickets

    # Polled often: the caller must act just after the beat, long before the next one.
    await until(renewed_tickets, 5, "a heartbeat", interval_s=0.002)
    return await scores(redises, "leases") != leases


async def redis_ms(redises: Redises) -> float:
    seconds, micros = await redises.client.time()
    return seconds * 1000 + micros / 1000


async def test_a_killed_replicas_queued_requests_do_not_keep_its_slot(redises: Redises) -> None:
    ttl = 2.0
    beat = min(1.0, ttl / 4)
    dead, survivor = await redises.replica(lease_ttl_s=ttl), await redises.replica(lease_ttl_s=ttl)
    a = tenant("a", 1)
    await dead.acquire(ACCOUNT, a, 1)  # never released
    queued = [asyncio.create_task(dead.acquire(ACCOUNT, a, 60)) for _ in range(3)]
    try:
        await redises.wait_queued(3)
        # Die just after a heartbeat that kept the tickets alive but did not renew the lease
        # (it does so every other beat): the tickets then outlive the lease, the case that once
        # handed the freed slot to a dead ticket for another whole TTL.
        while await next_beat_renews_leases(redises):
            pass
        await kill(dead)
        killed = time.monotonic()
        lease = await survivor.acquire(ACCOUNT, a, 10)
        recovered = time.monotonic() - killed
        # The lease expires within the TTL, then one heartbeat of the survivor to notice.
        assert recovered < ttl + beat + 0.3, f"the slot came back {recovered:.2f}s after the kill"
        assert await redises.client.zcard(redises.key("waiters")) == 0
        assert await redises.client.hlen(redises.key("tickets")) == 0
        await lease.release()
        await redises.assert_clean()  # no lease or ticket of the dead replica's is left
    finally:
        for task in queued:
            task.cancel()
        await asyncio.gather(*queued, return_exceptions=True)


async def test_a_slot_granted_to_a_dead_replicas_ticket_comes_back_quickly(
    redises: Redises,
) -> None:
    ttl = 2.0
    beat = min(1.0, ttl / 4)
    dead, survivor = await redises.replica(lease_ttl_s=ttl), await redises.replica(lease_ttl_s=ttl)
    a = tenant("a", 1)
    holder = await survivor.acquire(ACCOUNT, a, 1)
    queued = [asyncio.create_task(dead.acquire(ACCOUNT, a, 60)) for _ in range(3)]
    try:
        await redises.wait_queued(3)
        await kill(dead)
        killed, now_ms = time.monotonic(), await redis_ms(redises)
        await holder.release()  # the dead replica's first ticket gets the slot
        waiter = asyncio.create_task(survivor.acquire(ACCOUNT, a, 10))
        await redises.wait_queued(3)
        [expiry] = (await scores(redises, "leases")).values()
        # Only until the ticket would have expired, three heartbeats after its replica's last...
        assert expiry - now_ms <= 3 * beat * 1000 + 50, f"granted for {expiry - now_ms:.0f} ms"
        lease = await waiter
        recovered = time.monotonic() - killed
        # ...not a TTL from the grant; then one heartbeat of the survivor to notice.
        assert recovered < 4 * beat + 0.3, f"the slot came back {recovered:.2f}s after the kill"
        await lease.release()
        await redises.assert_clean()  # no lease or ticket of the dead replica's is left
    finally:
        for task in queued:
            task.cancel()
        await asyncio.gather(*queued, return_exceptions=True)


class OwnRedis:
    """A redis-server on a fixed port that a test can stop and start again."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.dir = tempfile.mkdtemp(prefix="redis-")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.dir],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip

        def pong() -> bool:
            ping = ["redis-cli", "-p", str(self.port), "ping"]
            return subprocess.run(ping, capture_output=True, check=False).stdout.strip() == b"PONG"

        until_sync(pong, 10, "redis-server answering")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None


@pytest.fixture
def own_redis() -> Iterator[OwnRedis]:
    server = OwnRedis()
    yield server
    server.stop()
    shutil.rmtree(server.dir, ignore_errors=True)


def limiter_records(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name.startswith("gateway.limits.redis") and r.levelno == level
    ]


async def test_redis_outage_falls_back_to_local_limits_and_recovers(
    own_redis: OwnRedis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.limits.redis")
    own_redis.start()
    redises = Redises(own_redis.url)
    try:
        limiter = await redises.replica(lease_ttl_s=1.2, probe_interval_s=0.1)
        a = tenant("a", 1)
        shared = await limiter.acquire(ACCOUNT, a, 1)
        waiter = asyncio.create_task(limiter.acquire(ACCOUNT, a, 10))
        await redises.wait_queued(1)

        own_redis.stop()
        local = await asyncio.wait_for(waiter, 5)  # the queued request is served locally
        assert limiter.degraded
        ok, detail = await limiter.ready()
        assert ok and "degraded" in detail
        with pytest.raises(QueueTimeout):  # the same limits, per process
            await limiter.acquire(ACCOUNT, a, 0.05)
        await shared.release()  # Redis is gone: retried later, never raised
        assert [p.inflight for p in limiter.pools() if p.name == "account:main"] == [1]
        assert len(limiter_records(caplog, logging.WARNING)) == 1

        own_redis.start()
        await until(lambda: not limiter.degraded, what="back to shared limits")
        again = await limiter.acquire(ACCOUNT, a, 1)  # shared again: Redis holds it
        assert await redises.client.zcard(redises.key("leases")) == 1
        assert await limiter.ready() == (True, "redis: shared limits")
        await again.release()
        await local.release()
        await redises.assert_clean()
        assert len(limiter_records(caplog, logging.WARNING)) == 1
        assert len([m for m in limiter_records(caplog, logging.INFO) if "again" in m]) == 1
    finally:
        await redises.close()


async def test_a_hung_redis_is_noticed_and_failed_releases_are_retried(
    own_redis: OwnRedis, caplog: pytest.LogCaptureFixture
) -> None:
    own_redis.start()
    assert own_redis.proc is not None
    redises = Redises(own_redis.url)
    try:
        limiter = await redises.replica(probe_interval_s=0.1)
        lease = await limiter.acquire(ACCOUNT, tenant("a", 1), 1)
        own_redis.proc.send_signal(signal.SIGSTOP)
        try:
            start = time.monotonic()
            await lease.release()  # times out once (2 s), then is kept to retry
            assert time.monotonic() - start < 3
            assert limiter.degraded
        finally:
            own_redis.proc.send_signal(signal.SIGCONT)
        await until(lambda: not limiter.degraded, what="back to shared limits")
        await redises.leases_become(0, timeout_s=5)  # the failed release, retried once Redis woke
        await redises.assert_clean()
        assert len(limiter_records(caplog, logging.WARNING)) == 1
    finally:
        await redises.close()


async def test_redis_down_at_start_serves_locally(
    own_redis: OwnRedis, caplog: pytest.LogCaptureFixture
) -> None:
    redises = Redises(own_redis.url)  # never started
    try:
        limiter = await redises.replica()
        assert limiter.degraded
        assert (await limiter.ready())[0]
        a = tenant("a", 1)
        lease = await limiter.acquire(ACCOUNT, a, 1)
        with pytest.raises(QueueTimeout):
            await limiter.acquire(ACCOUNT, a, 0.05)
        await lease.release()
        assert len(limiter_records(caplog, logging.WARNING)) == 1
    finally:
        await redises.close()


async def test_reject_answers_503_while_redis_is_down(own_redis: OwnRedis) -> None:
    redises = Redises(own_redis.url)
    try:
        limiter = await redises.replica(on_redis_error="reject", probe_interval_s=0.1)
        ok, detail = await limiter.ready()
        assert not ok and "reject" in detail
        with pytest.raises(Unavailable) as info:
            await limiter.acquire(ACCOUNT, tenant("a", 1), 1)
        assert info.value.status == 503

        own_redis.start()
        await until(lambda: not limiter.degraded, what="back to shared limits")
        lease = await limiter.acquire(ACCOUNT, tenant("a", 1), 1)
        await lease.release()
        await redises.assert_clean()
    finally:
        await redises.close()


async def test_pools_show_the_global_state(redises: Redises) -> None:
    r1, r2 = await redises.replica(lease_ttl_s=0.4), await redises.replica(lease_ttl_s=0.4)
    acc, a = account(2), tenant("a", 2)
    leases = [await r1.acquire(acc, a, 1), await r1.acquire(acc, a, 1)]
    waiter = asyncio.create_task(r2.acquire(acc, a, 10))
    await redises.wait_queued(1)

    def seen_by_r2() -> bool:
        pools = {p.name: p for p in r2.pools()}
        account_pool = pools.get("account:main")
        return account_pool is not None and (account_pool.inflight, account_pool.queued) == (2, 1)

    await until(seen_by_r2, what="r2 seeing 2 in flight and 1 queued")
    for lease in leases:
        await lease.release()
    await (await waiter).release()
    await redises.assert_clean()


def start_sentinel(master_port: int, workdir: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    conf = Path(workdir) / "sentinel.conf"
    conf.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {workdir}\n"
        f"sentinel monitor gw 127.0.0.1 {master_port} 1\n"
    )
    proc = subprocess.Popen(["redis-server", str(conf), "--sentinel"], stdout=subprocess.DEVNULL)

    def knows_master() -> bool:
        ask = ["redis-cli", "-p", str(port), "sentinel", "get-master-addr-by-name", "gw"]
        return b"127.0.0.1" in subprocess.run(ask, capture_output=True, check=False).stdout

    until_sync(knows_master, 10, "sentinel knowing the master")
    return proc, port


async def test_sentinel_finds_the_master(own_redis: OwnRedis) -> None:
    own_redis.start()
    proc, port = start_sentinel(own_redis.port, own_redis.dir)
    redises = Redises(own_redis.url)
    sentinel = SentinelSettings(master="gw", nodes=(("127.0.0.1", port),))
    try:
        limiter = await redises.replica(redis_url="redis:///0", sentinel=sentinel)
        assert not limiter.degraded
        lease = await limiter.acquire(ACCOUNT, tenant("a", 1), 1)
        assert await redises.client.zcard(redises.key("leases")) == 1
        await lease.release()
        await redises.assert_clean()
    finally:
        await redises.close()
        proc.terminate()
        proc.wait(timeout=10)


# -- kept slots (limiter.keep_slots_s) ------------------------------------------------------


async def test_a_released_slot_is_kept_for_the_next_request(redises: Redises) -> None:
    limiter = await redises.replica(keep_slots_s=30)
    acc, t = account(2), tenant("a", 2)
    await (await limiter.acquire(acc, t, 1)).release()
    before = await evalsha_calls(redises)
    for _ in range(5):
        await (await limiter.acquire(acc, t, 1)).release()
    assert await evalsha_calls(redises) == before  # no round trip at all
    assert await redises.client.zcard(redises.key("leases")) == 1  # still a lease in Redis
    limiter._link.states.clear()  # what the next heartbeat reports:
    await until(limiter.pools, what="a heartbeat's pool report")
    pools = {p.name: p for p in limiter.pools()}
    assert pools["account:main"].inflight == 0  # idle, as it is
    assert pools["tenant:a"].inflight == 0
    await limiter.close()  # closing gives it back
    await redises.assert_clean()


async def test_a_queued_ticket_takes_back_slots_kept_elsewhere_at_once(redises: Redises) -> None:
    r1 = await redises.replica(keep_slots_s=30)
    r2 = await redises.replica(keep_slots_s=30)
    acc, t = account(1), tenant("a", 1)
    await (await r1.acquire(acc, t, 1)).release()  # r1 keeps the only slot
    start = time.monotonic()
    lease = await r2.acquire(acc, t, 5)  # queues; r1 hears of it and gives the slot back
    assert time.monotonic() - start < 0.5  # not the heartbeat (1 s), nor keep_slots_s (30 s)
    await lease.release()


async def test_unused_kept_slots_go_back(redises: Redises) -> None:
    limiter = await redises.replica(keep_slots_s=0.2, lease_ttl_s=2)  # a beat every 0.5 s
    await (await limiter.acquire(account(2), tenant("a", 2), 1)).release()
    assert await redises.client.zcard(redises.key("leases")) == 1
    await redises.leases_become(0, timeout_s=3)
    await redises.assert_clean()


async def test_upstream_429s_give_kept_slots_back(redises: Redises) -> None:
    limiter = await redises.replica(keep_slots_s=30)
    acc = account(4)
    await (await limiter.acquire(acc, tenant("a", 4), 1)).release()
    limiter.upstream_saturated("main")
    await redises.leases_become(0, timeout_s=0.5)  # at once, not after keep_slots_s


async def test_kept_slots_over_a_lowered_limit_go_back(redises: Redises) -> None:
    limiter = await redises.replica(keep_slots_s=30)
    acc = account(4)
    first, second = [await limiter.acquire(acc, tenant("a", 2), 1) for _ in range(2)]
    await first.release()
    await second.release()  # both kept
    lease = await limiter.acquire(acc, tenant("a", 1), 1)  # a reload lowered the limit to 1
    await redises.leases_become(1, timeout_s=3)  # the other kept slot went back
    await lease.release()


async def test_a_release_never_overtakes_its_acquire(redises: Redises) -> None:
    """Asked in the same breath (a client gone while its acquire still waits to be sent): the
    release waits for the acquire's answer, whichever batch or sender either lands in."""
    limiter = await redises.replica()
    acct = limiter._account(account(2), tenant("a", 2))
    acquire = acct.ops.submit(Op.acquire("x-1", tenant("a", 2)))
    release = acct.ops.release("x-1")
    assert [op for op, _ in acct.ops.batch] == [Op("a", "x-1", "a", 2, 1)]  # the release is held
    assert await acquire == 1
    await release
    await redises.assert_clean()


async def test_a_lease_redis_lost_is_not_kept(redises: Redises) -> None:
    limiter = await redises.replica(keep_slots_s=30, lease_ttl_s=2)
    acc, t = account(1), tenant("a", 1)
    lease = await limiter.acquire(acc, t, 1)
    acct = limiter._accounts["main"]
    (lease_id,) = acct.held
    await redises.client.zrem(redises.key("leases"), lease_id)  # as if it had expired
    await until(lambda: lease_id not in acct.held, what="the heartbeat saying it is lost")
    await lease.release()
    assert not acct.kept  # a slot Redis no longer counts is not handed out again

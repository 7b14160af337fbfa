"""Micro-benchmark: the limiters' own cost (not a test).

Starts a private redis-server on a free loopback port, then times N=2000 sequential
acquire/release pairs and prints p50/p99 in microseconds, beside a bare PING (one round trip)
and the in-memory limiter for scale; "redis" gives every slot back at once (keep_slots_s=0),
"kept" keeps released slots for the next request (the default). Then the concurrent case: 64
requests at a time, each holding its slot ~1 ms, CONCURRENT_N pairs in all: this process's CPU
per pair and Redis script calls per pair (acquires and releases asked for together share a
call). Run: `.venv/bin/python bench/limiter_bench.py`.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable

from redis.asyncio import Redis

from gateway.config import Account, LimiterSettings, Tenant
from gateway.limits.base import Limiter
from gateway.limits.memory import MemoryLimiter
from gateway.limits.redis import RedisLimiter

N = 2000
WARMUP = 200
CONCURRENT_N = 20_000
WORKERS = 64
ACCOUNT = Account(name="bench", api_key="-", max_concurrency=8)
TENANT = Tenant(
    name="bench", key_hashes=frozenset(), account="bench", project="b/b", max_concurrency=8
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_redis(port: int, workdir: str) -> subprocess.Popen[bytes]:
    binary = shutil.which("redis-server") or "redis-server"
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", workdir],
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def percentiles(samples_ns: list[int]) -> str:
    us = sorted(s / 1000 for s in samples_ns)
    p99 = us[min(len(us) - 1, round(len(us) * 0.99))]
    return f"p50 {statistics.median(us):7.1f} µs   p99 {p99:7.1f} µs"


async def timed(op: Callable[[], Awaitable[object]]) -> int:
    start = time.perf_counter_ns()
    await op()
    return time.perf_counter_ns() - start


async def bench_limiter(name: str, limiter: Limiter) -> None:
    acquires, releases, pairs = [], [], []
    for i in range(WARMUP + N):
        t0 = time.perf_counter_ns()
        lease = await limiter.acquire(ACCOUNT, TENANT, 1.0)
        t1 = time.perf_counter_ns()
        await lease.release()
        t2 = time.perf_counter_ns()
        if i >= WARMUP:
            acquires.append(t1 - t0)
            releases.append(t2 - t1)
            pairs.append(t2 - t0)
    print(f"{name:7} acquire          {percentiles(acquires)}")
    print(f"{name:7} release          {percentiles(releases)}")
    print(f"{name:7} acquire+release  {percentiles(pairs)}")


async def bench_concurrent(name: str, limiter: Limiter, client: Redis | None) -> None:
    wide = Account(name="wide", api_key="-", max_concurrency=1024)
    tenant = Tenant(
        name="wide", key_hashes=frozenset(), account="wide", project="b/b", max_concurrency=1024
    )
    left = CONCURRENT_N

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            lease = await limiter.acquire(wide, tenant, 10.0)
            await asyncio.sleep(0.001)
            await lease.release()

    calls = await _evalsha_calls(client)
    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(WORKERS)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    calls = await _evalsha_calls(client) - calls
    per_call = f"   script calls/pair {calls / CONCURRENT_N:.3f}" if client is not None else ""
    print(
        f"{name:7} {WORKERS} at a time      CPU/pair {cpu / CONCURRENT_N * 1e6:7.1f} µs   "
        f"{CONCURRENT_N / wall:8.0f} pairs/s{per_call}"
    )


async def _evalsha_calls(client: Redis | None) -> int:
    if client is None:
        return 0
    stats = await client.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


async def main() -> None:
    workdir = tempfile.mkdtemp(prefix="bench-redis-")
    port = free_port()
    proc = start_redis(port, workdir)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        client = Redis.from_url(url)
        pings = [await timed(client.ping) for _ in range(WARMUP + N)][WARMUP:]
        print(f"N={N}, redis-server on 127.0.0.1:{port}")
        print(f"redis   PING (one round trip) {percentiles(pings)}")
        for keep_s, name in ((0.0, "redis"), (1.0, "kept")):  # without and with kept slots
            settings = LimiterSettings(
                backend="redis", redis_url=url, key_prefix=f"bench-{name}", keep_slots_s=keep_s
            )
            limiter = RedisLimiter(settings)
            await limiter.start()
            try:
                await bench_limiter(name, limiter)
                await bench_concurrent(name, limiter, client)
            finally:
                await limiter.close()
        memory = MemoryLimiter()
        await bench_limiter("memory", memory)
        await bench_concurrent("memory", memory, None)
        await memory.close()
        await client.aclose()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())

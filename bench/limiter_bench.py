"""Micro-benchmark: uncontended acquire + release on the Redis limiter (not a test).

Starts a private redis-server on a free loopback port, then times N=2000 sequential
acquire/release pairs and prints p50/p99 in microseconds, beside a bare PING (one round trip)
and the in-memory limiter for scale. Run: `.venv/bin/python bench/limiter_bench.py`.
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


async def main() -> None:
    workdir = tempfile.mkdtemp(prefix="bench-redis-")
    port = free_port()
    proc = start_redis(port, workdir)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        client = Redis.from_url(url)
        pings = [await timed(client.ping) for _ in range(WARMUP + N)][WARMUP:]
        await client.aclose()
        print(f"N={N}, redis-server on 127.0.0.1:{port}")
        print(f"redis   PING (one round trip) {percentiles(pings)}")
        limiter = RedisLimiter(LimiterSettings(backend="redis", redis_url=url, key_prefix="bench"))
        await limiter.start()
        try:
            await bench_limiter("redis", limiter)
        finally:
            await limiter.close()
        memory = MemoryLimiter()
        await bench_limiter("memory", memory)
        await memory.close()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())

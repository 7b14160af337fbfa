"""One tenant cannot run the process out of memory, nor slow another tenant down (#11).

A greedy tenant with one slot sends 40 concurrent 8 MiB streamed requests; meanwhile another
tenant's small requests must all succeed, quickly, and the gateway's RSS stays bounded: its
requests past `max_queue` or past its half of `server.max_buffered_body_bytes` are refused
before their bodies are read.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from collections.abc import Iterator
from multiprocessing.queues import Queue
from pathlib import Path

import httpx
import orjson
import pytest

from gateway.keys import hash_key
from tests.procs import ADS_KEY, LLAMA, Proc, base_config, start_fake, start_gateway

GREEDY_KEY = "sk-gw-test-greedy"
MIB = 1024 * 1024


@pytest.fixture(scope="module")
def pair() -> Iterator[tuple[Proc, Proc]]:
    fake = start_fake(concurrency=8)
    config = base_config(fake.url)
    config["tenants"]["greedy"] = {
        "keys": [hash_key(GREEDY_KEY)],
        "account": "main",
        "project": "acme/greedy",
        "max_concurrency": 1,
    }
    config["accounts"]["main"]["max_concurrency"] = 8
    gateway = start_gateway(config)
    yield fake, gateway
    gateway.stop()
    fake.stop()


def rss_mib(pid: int) -> float:
    """The process's resident set and its children's (the body reader), in MiB."""
    total = 0
    for p in [pid, *_children(pid)]:
        for line in Path(f"/proc/{p}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total / 1024


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _flood(url: str, out: Queue[list[tuple[int, str | None, str | None]]]) -> None:
    """The greedy tenant, in a process of its own (uploading 320 MiB from the measuring process
    would slow its own clock, not the gateway)."""
    text = "x" * (8 * MIB)
    body = orjson.dumps(
        {"model": LLAMA, "stream": True, "messages": [{"role": "user", "content": text}]}
    )
    answers = asyncio.run(_greedy(url, body))
    out.put(
        [
            (
                r.status_code,
                r.headers.get("retry-after"),
                r.json()["error"]["code"] if r.status_code >= 400 else None,
            )
            for r in answers
        ]
    )


async def _greedy(url: str, body: bytes) -> list[httpx.Response]:
    headers = {"authorization": f"Bearer {GREEDY_KEY}", "content-type": "application/json"}
    limits = httpx.Limits(max_connections=40)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as c:

        async def one() -> httpx.Response:
            try:
                async with c.stream(
                    "POST", "/v1/chat/completions", content=body, headers=headers
                ) as r:
                    await r.aread()
                    return r
            except httpx.TransportError:  # refused before the body was sent whole: fine
                return httpx.Response(0)

        return list(await asyncio.gather(*(one() for _ in range(40))))


async def _other(url: str, stop: asyncio.Event) -> list[tuple[int, float]]:
    headers = {"authorization": f"Bearer {ADS_KEY}"}
    body = {"model": LLAMA, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
    done: list[tuple[int, float]] = []
    async with httpx.AsyncClient(base_url=url, timeout=30) as c:
        while not stop.is_set() or len(done) < 20:
            t = time.monotonic()
            r = await c.post("/v1/chat/completions", json=body, headers=headers)
            done.append((r.status_code, time.monotonic() - t))
            await asyncio.sleep(0.02)
    return done


async def _sample(pid: int, stop: asyncio.Event, peak: list[float]) -> None:
    while not stop.is_set():
        peak.append(rss_mib(pid))
        await asyncio.sleep(0.05)


def test_one_tenant_flooding_big_bodies_keeps_memory_bounded_and_others_fast(
    pair: tuple[Proc, Proc],
) -> None:
    _, gateway = pair
    before = rss_mib(gateway.proc.pid)
    context = multiprocessing.get_context("spawn")
    out: Queue[list[tuple[int, str | None, str | None]]] = context.Queue()
    flood = context.Process(target=_flood, args=(gateway.url, out))

    async def run() -> tuple[list[tuple[int, float]], list[float]]:
        stop = asyncio.Event()
        peak: list[float] = []
        sampler = asyncio.create_task(_sample(gateway.proc.pid, stop, peak))
        other = asyncio.create_task(_other(gateway.url, stop))
        flood.start()
        await asyncio.to_thread(flood.join, 60)
        stop.set()
        await sampler
        return await other, peak

    other, peak = asyncio.run(run())
    greedy = out.get(timeout=5)
    statuses = [status for status, _, _ in greedy]
    assert statuses.count(200) >= 1
    refused = [(after, code) for status, after, code in greedy if status == 429]
    assert refused, statuses
    assert set(refused) == {("1", "rate_limit_exceeded")}
    assert set(statuses) <= {0, 200, 429}, statuses
    assert max(peak) < 300, f"RSS {before:.0f} MiB before, {max(peak):.0f} MiB at most"
    latencies = sorted(s for _, s in other)
    assert {code for code, _ in other} == {200}
    p99 = latencies[min(len(latencies) - 1, round(0.99 * len(latencies)))]
    assert p99 < 1.0, latencies
    print(
        f"\nRSS {before:.0f} -> {max(peak):.0f} MiB at most; greedy {statuses.count(200)} x 200, "
        f"{len(refused)} x 429; other {len(other)} requests, p99 {p99 * 1000:.0f} ms"
    )

"""Concurrency through the gateway: limits hold upstream, slots come back on every exit path."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.e2e.helpers import USER, aclient, faults, stats
from tests.poll import until
from tests.procs import (
    ADS_KEY,
    LIMITED_KEY,
    LLAMA,
    SEARCH_KEY,
    WANDB_KEY,
    Proc,
    base_config,
    start_fake,
    start_gateway,
)

GAUGES = ("gateway_inflight_requests", "gateway_queue_depth")


def pool_gauges(gateway: Proc) -> dict[tuple[str, str], float]:
    text = httpx.get(gateway.url + "/metrics").text
    found = re.findall(r'^(gateway_\w+)\{pool="([^"]+)"\} ([0-9.e+-]+)$', text, re.M)
    return {(name, pool): float(value) for name, pool, value in found}


def assert_pools_empty(gateway: Proc) -> None:
    gauges = pool_gauges(gateway)
    gauges = {k: v for k, v in gauges.items() if k[0] in GAUGES}
    assert gauges, "no pool gauges exported"
    busy = {k: v for k, v in gauges.items() if v != 0}
    assert busy == {}


async def test_upstream_never_sees_more_than_the_limits(gateway: Proc, fake: Proc) -> None:
    """60 concurrent calls from three tenants: all succeed, upstream stays within 4 (account),
    2 for `ads`, 1 for `limited`, even though the fake would allow 4 per project."""

    async def call(key: str, model: str) -> str | None:
        async with aclient(gateway, key=key) as c:
            resp = await c.chat.completions.create(
                model=model,
                messages=USER,
                extra_body={"x_fake": {"delay_s": 0.05}},
            )
        return resp.choices[0].message.content

    calls = [call(SEARCH_KEY, LLAMA) for _ in range(30)]
    calls += [call(ADS_KEY, LLAMA) for _ in range(20)]
    calls += [call(LIMITED_KEY, "gpt-4o-mini") for _ in range(10)]
    results = await asyncio.gather(*calls)
    assert all(results)
    s = stats(fake)
    assert s["rejected_429"] == 0
    assert 2 <= s["max_inflight"][WANDB_KEY] <= 4  # used in parallel, never past the limit
    assert s["max_inflight_project"]["acme/ads"] <= 2
    assert s["max_inflight_project"]["acme/limited"] == 1
    assert_pools_empty(gateway)


@pytest.fixture(scope="module")
def quick_queue(fake: Proc) -> Iterator[Proc]:
    proc = start_gateway(base_config(fake.url, limiter__queue_timeout_s=0.3))
    yield proc
    proc.stop()


async def test_queue_timeout_is_429_with_retry_after(quick_queue: Proc, fake: Proc) -> None:
    async with aclient(quick_queue, key=LIMITED_KEY) as c:
        holder = asyncio.create_task(
            c.chat.completions.create(
                model=LLAMA,
                messages=USER,
                extra_body={"x_fake": {"delay_s": 1.0}},
            )
        )
        await until(
            lambda: (
                pool_gauges(quick_queue).get(("gateway_inflight_requests", "tenant:limited")) == 1
            )
        )
        with pytest.raises(openai.RateLimitError) as err:
            await c.chat.completions.with_raw_response.create(model=LLAMA, messages=USER)
        await holder
    headers = err.value.response.headers
    assert err.value.code == "rate_limit_exceeded"
    assert int(headers["retry-after"]) >= 1
    assert int(headers["retry-after-ms"]) > 0
    assert "x-should-retry" not in headers
    assert 250 <= int(headers["x-gateway-queue-ms"]) < 1000  # it waited its 0.3 s queue timeout
    assert stats(fake)["requests"] == 1
    assert_pools_empty(quick_queue)


async def test_waiting_time_is_reported(gateway: Proc, fake: Proc) -> None:
    async with aclient(gateway, key=LIMITED_KEY) as c:
        first: asyncio.Task[Any] = asyncio.create_task(
            c.chat.completions.with_raw_response.create(
                model=LLAMA,
                messages=USER,
                extra_body={"x_fake": {"delay_s": 0.3}},
            )
        )
        await until(lambda: stats(fake)["requests"] == 1)
        second = await c.chat.completions.with_raw_response.create(model=LLAMA, messages=USER)
        assert int((await first).headers["x-gateway-queue-ms"]) < 50
    assert int(second.headers["x-gateway-queue-ms"]) >= 150


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
async def test_client_disconnect_frees_the_slot_and_closes_upstream(
    gateway: Proc, fake: Proc, stream: bool
) -> None:
    """`limited` has one slot. A client that goes away mid-request (upstream hangs) must give it
    back at once, and the upstream request must be closed."""
    body = {"model": LLAMA, "messages": USER, "stream": stream}
    if stream:
        body["x_fake"] = {"chunk_delay_s": 30}  # first chunks arrive, then nothing
    else:
        faults(fake, {"kind": "hang"})
    headers = {"Authorization": f"Bearer {LIMITED_KEY}"}
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http:
        request = http.build_request("POST", "/v1/chat/completions", json=body, headers=headers)
        resp_task = asyncio.create_task(http.send(request, stream=True))
        await until(lambda: stats(fake)["inflight"].get(WANDB_KEY) == 1)
        if stream:
            resp = await resp_task
            assert resp.status_code == 200
            await resp.aclose()
        else:
            resp_task.cancel()
    await until(lambda: stats(fake)["inflight"].get(WANDB_KEY) == 0)
    assert stats(fake)["disconnects"] == 1
    await until(lambda: pool_gauges(gateway)[("gateway_inflight_requests", "tenant:limited")] == 0)
    async with aclient(gateway, key=LIMITED_KEY) as c:  # the one slot is free again
        answer = await asyncio.wait_for(c.chat.completions.create(model=LLAMA, messages=USER), 5)
    assert answer.choices[0].message.content
    assert_pools_empty(gateway)


async def test_client_disconnect_while_queued_leaves_no_waiter(gateway: Proc, fake: Proc) -> None:
    async with aclient(gateway, key=LIMITED_KEY) as c:
        holder = asyncio.create_task(
            c.chat.completions.create(
                model=LLAMA,
                messages=USER,
                extra_body={"x_fake": {"delay_s": 2.0}},
            )
        )
        await until(lambda: stats(fake)["requests"] == 1)
        queued = asyncio.create_task(c.chat.completions.create(model=LLAMA, messages=USER))
        await until(lambda: pool_gauges(gateway)[("gateway_queue_depth", "tenant:limited")] == 1)
        queued.cancel()
        await until(lambda: pool_gauges(gateway)[("gateway_queue_depth", "tenant:limited")] == 0)
        await holder
    assert stats(fake)["requests"] == 1  # the cancelled one never went upstream
    assert_pools_empty(gateway)


async def test_upstream_429s_back_the_account_off(fake: Proc) -> None:
    """Someone else uses the same W&B key: upstream only takes 2 at a time although the account
    says 4. Requests are retried within their deadline, and the gateway's effective limit drops,
    so it stops pushing into the limit it cannot see."""
    narrow = start_fake(concurrency=2)
    gw = start_gateway(base_config(narrow.url, upstream__retries=6))
    try:
        async with aclient(gw) as c:
            results = await asyncio.gather(
                *(
                    c.chat.completions.create(
                        model=LLAMA, messages=USER, extra_body={"x_fake": {"delay_s": 0.1}}
                    )
                    for _ in range(24)
                )
            )
        assert all(r.choices[0].message.content for r in results)
        rejected = stats(narrow)["rejected_429"]
        assert rejected > 0  # it did meet the hidden limit ...
        limit = pool_gauges(gw)[("gateway_pool_limit", "account:main")]
        assert limit <= 2  # ... and backed off to what upstream takes
        print(f"\n24 requests, hidden limit 2 of 4: {rejected} upstream 429s, limit now {limit:g}")
    finally:
        gw.stop()
        narrow.stop()

"""Several gateway replicas on one real redis-server: one global limit, fairness, crashes,
Redis outages and shared budgets. Each test uses its own key prefix."""

from __future__ import annotations

import asyncio
import signal
import statistics
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis

from gateway.usage import month
from tests.e2e.helpers import USER, faults, prompt_tokens, seen, stats
from tests.poll import until, until_sync
from tests.procs import (
    ADS_KEY,
    LIMITED_KEY,
    LLAMA,
    SEARCH_KEY,
    WANDB_KEY,
    Proc,
    base_config,
    free_port,
    redis_server,
    start_gateway,
)


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with redis_server() as url:
        yield url


def redis_config(fake: Proc, url: str, **overrides: Any) -> dict[str, Any]:
    return base_config(
        fake.url,
        limiter__backend="redis",
        limiter__redis_url=url,
        limiter__key_prefix=f"t-{uuid.uuid4().hex[:8]}",
        **overrides,
    )


def replicas(config: dict[str, Any], n: int) -> list[Proc]:
    return [start_gateway(config) for _ in range(n)]


def leftovers(url: str, prefix: str) -> dict[str, int]:
    """Slots and waiters still in Redis under this prefix (usage rows are not state)."""
    client = redis.Redis.from_url(url)
    try:
        found = {}
        for key in client.scan_iter(f"{prefix}:*"):
            kind = client.type(key).decode()
            size = {"zset": client.zcard, "list": client.llen}.get(kind)
            if size and size(key):
                found[key.decode()] = size(key)
        return found
    finally:
        client.close()


async def post(http: httpx.AsyncClient, gateway: Proc, key: str, **body: Any) -> httpx.Response:
    return await http.post(
        gateway.url + "/v1/chat/completions",
        json={"model": LLAMA, "messages": USER, **body},
        headers={"Authorization": f"Bearer {key}"},
    )


def limits() -> httpx.Limits:
    return httpx.Limits(max_connections=400, max_keepalive_connections=400)


async def test_limit_is_global_across_three_replicas(fake: Proc, redis_url: str) -> None:
    config = redis_config(fake, redis_url)
    gws = replicas(config, 3)
    try:
        keys = [SEARCH_KEY] * 120 + [ADS_KEY] * 60 + [LIMITED_KEY] * 20
        async with httpx.AsyncClient(timeout=60, limits=limits()) as http:
            responses = await asyncio.gather(
                *(
                    post(http, gws[i % 3], key, x_fake={"delay_s": 0.02})
                    for i, key in enumerate(keys)
                )
            )
        assert [r.status_code for r in responses] == [200] * 200
        s = stats(fake)
        assert s["rejected_429"] == 0
        assert 2 <= s["max_inflight"][WANDB_KEY] <= 4  # the account's max_concurrency at most
        assert s["max_inflight_project"]["acme/ads"] <= 2
        assert s["max_inflight_project"]["acme/limited"] == 1
        # a replica keeps a released slot for limiter.keep_slots_s (1 s), then gives it back
        prefix = config["limiter"]["key_prefix"]
        until_sync(lambda: leftovers(redis_url, prefix) == {}, what="kept slots given back")
        async with httpx.AsyncClient() as http:
            for gw in gws:  # a finished response is not a client that went away
                text = (await http.get(gw.url + "/metrics")).text
                assert 'status="499"' not in text and "client_disconnect" not in text
                assert 'status="200"' in text
    finally:
        for gw in gws:
            gw.stop()


async def test_light_tenant_is_not_stuck_behind_a_flood(fake: Proc, redis_url: str) -> None:
    """`search` floods the account (4 slots) with 40 requests at a time from two replicas,
    10x its capacity; `ads` sends one request at a time. Round-robin across tenants means
    `ads` waits about one slot turnover, not behind the whole queue."""
    config = redis_config(fake, redis_url)
    gws = replicas(config, 2)
    light: list[float] = []
    flood: list[float] = []
    try:
        async with httpx.AsyncClient(timeout=60, limits=limits()) as http:
            stop = time.monotonic() + 4.0

            async def flooder(i: int) -> None:
                while time.monotonic() < stop:
                    r = await post(http, gws[i % 2], SEARCH_KEY, x_fake={"delay_s": 0.1})
                    assert r.status_code == 200
                    flood.append(int(r.headers["x-gateway-queue-ms"]))

            async def saturated() -> bool:
                got = (await http.get(fake.url + "/_fake/stats")).json()["inflight"]
                return bool(got.get(WANDB_KEY) == 4)

            async def light_caller() -> None:
                # the account's 4 slots are the flood's: what else it sends now queues
                await until(saturated, what="the flood holding all 4 slots upstream")
                while time.monotonic() < stop:
                    r = await post(http, gws[1], ADS_KEY, x_fake={"delay_s": 0.1})
                    assert r.status_code == 200
                    light.append(int(r.headers["x-gateway-queue-ms"]))

            await asyncio.gather(*(flooder(i) for i in range(40)), light_caller())
    finally:
        for gw in gws:
            gw.stop()
    light_p50 = statistics.median(light)
    flood_p50 = statistics.median(flood)
    light_p99 = statistics.quantiles(light, n=100)[98] if len(light) > 1 else light[0]
    print(
        f"\nqueue wait under a 10x flood: light tenant p50 {light_p50:.0f} ms, "
        f"p99 {light_p99:.0f} ms ({len(light)} requests); "
        f"flooding tenant p50 {flood_p50:.0f} ms ({len(flood)} requests)"
    )
    assert len(light) >= 5
    assert light_p50 * 3 < flood_p50


async def test_a_killed_replica_gives_its_slots_back(fake: Proc, redis_url: str) -> None:
    config = redis_config(fake, redis_url, limiter__lease_ttl_s=1.0)
    doomed, survivor = replicas(config, 2)
    try:
        faults(fake, {"kind": "hang"})
        async with httpx.AsyncClient(timeout=60) as http:
            holder = asyncio.create_task(post(http, doomed, LIMITED_KEY))  # takes the one slot
            await until(lambda: stats(fake)["inflight"].get(WANDB_KEY) == 1)
            doomed.proc.send_signal(signal.SIGKILL)
            doomed.proc.wait()
            started = time.monotonic()
            r = await post(http, survivor, LIMITED_KEY)
            waited = time.monotonic() - started
            with pytest.raises(httpx.TransportError):
                await holder
        assert r.status_code == 200
        assert waited < 1.0 + 1.5  # the lease TTL, plus the waiters' safety tick
        print(f"\nslot of a SIGKILLed replica came back after {waited:.2f}s (lease_ttl_s 1.0)")
    finally:
        survivor.stop()


async def test_stream_longer_than_the_lease_keeps_its_slot(fake: Proc, redis_url: str) -> None:
    config = redis_config(fake, redis_url, limiter__lease_ttl_s=0.6)
    a, b = replicas(config, 2)
    try:
        async with httpx.AsyncClient(timeout=60) as http:
            long = asyncio.create_task(
                post(http, a, LIMITED_KEY, stream=True, x_fake={"chunk_delay_s": 0.3})
            )  # about 2.4 s, four lease TTLs
            await until(lambda: stats(fake)["inflight"].get(WANDB_KEY) == 1)
            other = await post(http, b, LIMITED_KEY)
            assert (await long).text.rstrip().endswith("[DONE]")
        assert other.status_code == 200
        assert int(other.headers["x-gateway-queue-ms"]) > 1500  # it waited for the stream
        assert stats(fake)["max_inflight_project"]["acme/limited"] == 1
    finally:
        a.stop()
        b.stop()


def metric_value(gateway: Proc, name: str) -> float:
    for line in httpx.get(gateway.url + "/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not exported")


def test_redis_outage_is_not_an_outage(fake: Proc) -> None:
    port = free_port()
    with redis_server(port) as url:
        gw = start_gateway(redis_config(fake, url))
    try:  # Redis is gone now
        for _ in range(3):
            r = httpx.post(
                gw.url + "/v1/chat/completions",
                json={"model": LLAMA, "messages": USER},
                headers={"Authorization": f"Bearer {SEARCH_KEY}"},
            )
            assert r.status_code == 200
        ready = httpx.get(gw.url + "/readyz").json()
        assert "local" in ready["limiter"]["detail"]
        assert metric_value(gw, "gateway_limiter_degraded") == 1
        with redis_server(port):
            until_sync(
                lambda: metric_value(gw, "gateway_limiter_degraded") == 0,
                timeout_s=10,
                what="back on the shared limiter",
            )
            r = httpx.post(
                gw.url + "/v1/chat/completions",
                json={"model": LLAMA, "messages": USER},
                headers={"Authorization": f"Bearer {SEARCH_KEY}"},
            )
            assert r.status_code == 200
            logs = gw.logs()  # one line when it went, one when it came back: no log storm
            # (the usage store says so on its own when a flush fell in the outage)
            assert logs.count("limiter: Redis unreachable") == 1
            assert logs.count("limiter: Redis answers again") == 1
    finally:
        gw.stop()


def shared_spend(url: str, prefix: str, tenant: str) -> float:
    """The tenant's month spend in Redis, as a replica reads it when it first needs it."""
    client = redis.Redis.from_url(url)
    try:
        return float(client.hget(f"{prefix}:usage:{month()}:{tenant}", "total|usd") or 0.0)
    finally:
        client.close()


def until_done(url: str) -> int:
    """A streamed request read up to `[DONE]`, the connection closed at once, as a client that
    takes `[DONE]` for the end; its status."""
    body = {"model": LLAMA, "messages": USER, "stream": True}
    with httpx.stream("POST", url, json=body, headers={"Authorization": f"Bearer {ADS_KEY}"}) as r:
        for line in r.iter_lines():
            if line == "data: [DONE]":
                break
        return r.status_code


def whole(url: str) -> int:
    """A request answered whole; a refusal must be the budget's."""
    r = httpx.post(
        url, json={"model": LLAMA, "messages": USER}, headers={"Authorization": f"Bearer {ADS_KEY}"}
    )
    if r.status_code == 200:
        cost = (prompt_tokens(USER) + 8) * 0.22 / 1e6
        assert float(r.headers["x-gateway-cost-usd"]) == pytest.approx(cost, abs=1e-10)
    else:
        assert r.json()["error"]["code"] == "insufficient_quota"
    return r.status_code


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_budget_stops_sequential_requests_exactly_on_any_replica(
    fake: Proc, redis_url: str, stream: bool
) -> None:
    """A budget that allows exactly N requests of a known cost; 20 requests one after another,
    alternating between two replicas: exactly N reach W&B, the rest get 429 from both."""
    n, cost = 6, (prompt_tokens(USER) + 8) * 0.22 / 1e6
    config = redis_config(fake, redis_url)
    config["tenants"]["ads"]["monthly_budget_usd"] = (n - 0.5) * cost
    gws = replicas(config, 2)
    try:
        send = until_done if stream else whole
        statuses = [send(gws[i % 2].url + "/v1/chat/completions") for i in range(20)]
        assert statuses == [200] * n + [429] * (20 - n)
        assert len(seen(fake)) == n
        prefix = config["limiter"]["key_prefix"]
        assert shared_spend(redis_url, prefix, "ads") == pytest.approx(n * cost, abs=1e-12)
        direct = redis.Redis.from_url(redis_url)
        try:  # kept for at least 13 months
            assert direct.ttl(f"{prefix}:usage:{month()}:ads") >= 395 * 24 * 3600
        finally:
            direct.close()
    finally:
        for gw in gws:
            gw.stop()
    c = start_gateway(config)  # survives a restart: the spend is in Redis
    try:
        resp = httpx.get(c.url + "/v1/usage", headers={"Authorization": f"Bearer {ADS_KEY}"})
        assert resp.json()["models"][LLAMA]["completion_tokens"] == 8 * n
    finally:
        c.stop()


def test_a_past_month_is_read_from_redis(fake: Proc, redis_url: str) -> None:
    config = redis_config(fake, redis_url)
    prefix = config["limiter"]["key_prefix"]
    direct = redis.Redis.from_url(redis_url)
    try:
        direct.hset(
            f"{prefix}:usage:2025-11:search",
            mapping={f"{LLAMA}|prompt": 100, f"{LLAMA}|completion": 7, f"{LLAMA}|usd": 0.5},
        )
    finally:
        direct.close()
    gw = start_gateway(config)
    try:
        got = httpx.get(
            gw.url + "/v1/usage",
            params={"month": "2025-11"},
            headers={"Authorization": f"Bearer {SEARCH_KEY}"},
        ).json()
        assert (got["month"], got["spend_usd"]) == ("2025-11", 0.5)
        assert got["models"][LLAMA]["prompt_tokens"] == 100
        assert (
            httpx.get(
                gw.url + "/v1/usage", headers={"Authorization": f"Bearer {SEARCH_KEY}"}
            ).json()["models"]
            == {}
        )
    finally:
        gw.stop()

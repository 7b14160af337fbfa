"""Stored responses: each tenant reads only its own, and each has its own bounds, in memory and
in Redis (a real redis-server)."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import AsyncIterator

import pytest

from gateway.config import LimiterSettings
from gateway.redis_client import connect
from gateway.response_store import (
    MAX_ENTRIES,
    MAX_ENTRY_BYTES,
    MemoryResponseStore,
    RedisResponseStore,
    ResponseStore,
)


def rid() -> str:
    return "resp_" + secrets.token_hex(24)


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[ResponseStore]:
    if request.param == "memory":
        yield MemoryResponseStore()
        return
    url = request.getfixturevalue("redis_url")
    found = RedisResponseStore(
        *connect(LimiterSettings(redis_url=url)), f"r-{uuid.uuid4().hex[:8]}"
    )
    yield found
    await found.close()


async def test_a_tenant_reads_and_deletes_only_its_own(store: ResponseStore) -> None:
    one = rid()
    assert await store.put("acme", one, {"response": {"id": one}, "conversation": []})
    assert (await store.get("acme", one)) == {"response": {"id": one}, "conversation": []}
    assert await store.get("acme:x", one) is None  # a `:` in a name reaches no other tenant
    assert await store.get("other", one) is None
    assert not await store.delete("other", one)
    assert await store.get("acme", one) is not None
    assert await store.delete("acme", one)
    assert await store.get("acme", one) is None and not await store.delete("acme", one)


@pytest.mark.parametrize("bad", ["", "resp_1", "x:resp_" + "0" * 48, "resp_" + "G" * 48, "../x"])
async def test_ids_not_of_the_gateways_shape_are_never_looked_up(
    store: ResponseStore, bad: str
) -> None:
    await store._put("acme", bad, b"{}")  # there, under that id: only the shape keeps it out
    assert await store.get("acme", bad) is None and not await store.delete("acme", bad)


async def test_a_tenants_oldest_go_first_and_no_other_tenants(store: ResponseStore) -> None:
    kept = rid()
    await store.put("quiet", kept, {"n": 0})
    ids = [rid() for _ in range(MAX_ENTRIES + 5)]
    for n, response_id in enumerate(ids):
        await store.put("loud", response_id, {"n": n})
    assert await store.get("loud", ids[0]) is None  # pushed out by its own tenant's newer ones
    assert await store.get("loud", ids[4]) is None
    assert await store.get("loud", ids[5]) == {"n": 5}
    assert await store.get("quiet", kept) == {"n": 0}  # never by another tenant's


async def test_an_entry_too_large_is_not_kept(store: ResponseStore) -> None:
    big = rid()
    assert not await store.put("acme", big, {"blob": "x" * MAX_ENTRY_BYTES})
    assert await store.get("acme", big) is None


async def test_the_memory_store_bounds_every_tenant_together() -> None:
    store = MemoryResponseStore(max_entries=100, max_bytes=50_000, max_total_bytes=15_000)
    small = [rid() for _ in range(3)]
    for response_id in small:
        await store.put("small", response_id, {"blob": "s" * 1000})
    big = [rid() for _ in range(20)]
    for response_id in big:
        await store.put("big", response_id, {"blob": "b" * 1000})
    assert all([await store.get("small", r) for r in small])  # the biggest tenant paid
    assert await store.get("big", big[-1]) is not None and await store.get("big", big[0]) is None

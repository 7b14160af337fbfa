"""The Lua scripts' contract as `gateway.limits.redis.scripts` speaks it: ARGV built from named
ops, replies decoded into named types, against a private redis-server."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from gateway.config import Tenant
from gateway.limits.redis.scripts import (
    Counts,
    HeartbeatReply,
    Op,
    OpsReply,
    Scripts,
    account_keys,
)


def tenant(name: str, limit: int) -> Tenant:
    return Tenant(
        name=name, key_hashes=frozenset(), account="main", project="acme/t", max_concurrency=limit
    )


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()


def make_scripts(client: Redis, down: bool = False) -> Scripts:
    return Scripts(
        client, ttl_ms=10_000, ticket_ttl_ms=3_000, channels="t:grants:", down=lambda: down
    )


async def test_ops_answer_one_result_per_op_and_the_queue(client: Redis) -> None:
    scripts = make_scripts(client)
    await scripts.load()
    keys = account_keys(f"t{uuid.uuid4().hex[:8]}", "main")
    a = tenant("a", 1)
    ops = [Op.acquire("r1-1", a), Op.acquire("r1-2", a), Op.release("r1-9")]
    # A lease, then a ticket (the tenant is at its limit), then a release of nothing.
    assert await scripts.ops(keys, 2, ops) == OpsReply([1, 0, 0], 1)
    # A ticket withdrawn, a lease dropped; nobody queues any more.
    ops = [Op.release("r1-2"), Op.release("r1-1")]
    assert await scripts.ops(keys, 2, ops) == OpsReply([2, 1], 0)
    assert await scripts.ops(keys, 2, [Op.change(tenant("a", 2))]) == OpsReply([0], 0)
    assert await client.hget(keys[-1], "a") == "2 1"  # the tenants hash: "LIMIT WEIGHT"


async def test_heartbeat_reports_lost_leases_tickets_and_pools(client: Redis) -> None:
    scripts = make_scripts(client)
    await scripts.load()
    keys = account_keys(f"t{uuid.uuid4().hex[:8]}", "main")
    a = tenant("a", 1)
    assert await scripts.ops(keys, 1, [Op.acquire("r1-1", a), Op.acquire("r1-2", a)]) == (
        OpsReply([1, 0], 1)
    )
    reply = await scripts.heartbeat(keys, 1, ["r1-1", "r1-x"], ["r1-2", "r1-y"], ["a", "b"])
    assert reply == HeartbeatReply(
        lost=["r1-x"],
        tickets=["queued", "lost"],
        account=Counts(held=1, queued=1),
        tenants=[Counts(held=1, queued=1), Counts(held=0, queued=0)],
    )
    await scripts.ops(keys, 1, [Op.release("r1-1")])  # the slot goes to the ticket
    reply = await scripts.heartbeat(keys, 1, [], ["r1-2"], ["a"])
    assert reply == HeartbeatReply([], ["granted"], Counts(1, 0), [Counts(1, 0)])
    assert await scripts.ops(keys, 1, [Op.release("r1-2")]) == OpsReply([1], 0)


async def test_no_call_is_sent_while_redis_is_known_to_be_down(client: Redis) -> None:
    scripts = make_scripts(client, down=True)
    with pytest.raises(RedisConnectionError):
        await scripts.ops(account_keys("t", "main"), 1, [Op.release("r1-1")])

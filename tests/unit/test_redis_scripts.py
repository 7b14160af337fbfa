"""The Lua scripts' contract as `gateway.limits.redis.scripts` speaks it: ARGV built from named
ops, replies decoded into named types, against a private redis-server."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from gateway.config import ConfigError, Tenant, parse_settings
from gateway.limits.redis.scripts import (
    Counts,
    HeartbeatReply,
    Op,
    OpsReply,
    Scripts,
    account_keys,
)
from tests.procs import base_config


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


async def one_leased_one_queued(client: Redis) -> tuple[Scripts, list[str]]:
    """A fresh account with limit 1 and tenant `a` (limit 1): r1-1 holds the slot, r1-2 waits."""
    scripts = make_scripts(client)
    await scripts.load()
    keys = account_keys(f"t{uuid.uuid4().hex[:8]}", "main")
    a = tenant("a", 1)
    assert await scripts.ops(keys, 1, [Op.acquire("r1-1", a), Op.acquire("r1-2", a)]) == (
        OpsReply([1, 0], 1)
    )
    return scripts, keys


async def test_heartbeat_reports_lost_leases_tickets_and_pools(client: Redis) -> None:
    scripts, keys = await one_leased_one_queued(client)
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


@pytest.mark.parametrize("limit", [10**14, 10**15, 2**53])
async def test_limits_from_1e14_up_are_kept_as_digits(client: Redis, limit: int) -> None:
    """Lua writes a number from 1e14 on as '1e+14': a limit stored that way was read back as
    nothing, and the release that dispatched to the queue failed half-way through."""
    scripts = make_scripts(client)
    await scripts.load()
    keys = account_keys(f"t{uuid.uuid4().hex[:8]}", "main")
    big = Tenant(
        name="a",
        key_hashes=frozenset(),
        account="main",
        project="acme/t",
        max_concurrency=limit,
        weight=limit,
    )
    assert await scripts.ops(keys, limit, [Op.acquire("r1-1", big)]) == OpsReply([1], 0)
    assert await client.hget(keys[-1], "a") == f"{limit} {limit}"
    # The account's limit lowered to one (an upstream 429): the next request queues ...
    assert await scripts.ops(keys, 1, [Op.acquire("r1-2", big)]) == OpsReply([0], 1)
    # ... and the release hands it the slot, reading the tenant's limit and weight back.
    assert await scripts.ops(keys, limit, [Op.release("r1-1")]) == OpsReply([1], 0)
    reply = await scripts.heartbeat(keys, limit, [], ["r1-2"], ["a"])
    assert reply == HeartbeatReply([], ["granted"], Counts(1, 0), [Counts(1, 0)])
    assert await scripts.ops(keys, limit, [Op.release("r1-2")]) == OpsReply([1], 0)


async def test_a_limit_an_older_version_wrote_as_1e14_still_reads(client: Redis) -> None:
    scripts, keys = await one_leased_one_queued(client)
    await client.hset(keys[-1], "a", "1e+14 1")  # as the scripts used to store 10**14
    assert await scripts.ops(keys, 2, [Op.release("r1-1")]) == OpsReply([1], 0)
    reply = await scripts.heartbeat(keys, 2, [], ["r1-2"], ["a"])
    assert reply.tickets == ["granted"]


@pytest.mark.parametrize("field", ["max_concurrency", "weight"])
def test_limits_past_2_53_are_refused_by_the_config(field: str) -> None:
    raw = base_config("http://127.0.0.1:1")
    raw["accounts"]["main"]["max_concurrency"] = 2**53  # the largest a tenant may then take
    raw["tenants"]["search"][field] = 2**53 + 1  # Lua's doubles would round it
    with pytest.raises(ConfigError) as err:
        parse_settings(raw)
    assert err.value.problems == [
        f"tenants.search.{field}: must be a positive integer <= {2**53}, got {2**53 + 1}"
    ]
    raw["tenants"]["search"][field] = 2**53
    assert getattr(parse_settings(raw).tenants["search"], field) == 2**53

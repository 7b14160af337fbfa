"""The Lua scripts' contract on the Python side: their keys, their ARGV, and their replies
decoded into named types. Nothing else in the limiter builds an ARGV or reads a reply.

Each script is `redis_lib.lua` (the key schema and the policy) followed by its body,
`redis_ops.lua` or `redis_heartbeat.lua`, in `gateway/limits/`; their headers say what ARGV
holds and what they return. Both start ARGV with the same four values: the account's limit,
the lease ttl (ms), the ticket ttl (ms) and the prefix of the grant channels.

Numbers go as Python ints, which redis-py sends as their digits. What a script stores is those
ARGV strings, never a number Lua formatted (Lua writes 10**14 as "1e+14", which no pattern for
digits reads back); config_types.MAX_LIMIT keeps limits and weights where Lua's doubles are exact.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from importlib import resources
from typing import Any, Literal, NamedTuple

from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from gateway.config import Tenant

# What Redis in trouble looks like. Only ever caught around Redis calls: the builtin
# TimeoutError of a queue timeout is an OSError too.
TROUBLE = (RedisError, OSError)
# Redis calls in flight at once: more wait their turn instead of opening connections without
# end (the pool refuses past 100), and each holds its connection for one round trip only.
MAX_CALLS = 64
# In the order of KEYS in redis_lib.lua.
KEY_NAMES = (
    "leases",
    "holders",
    "inflight",
    "waiters",
    "tickets",
    "queue",
    "qstate",
    "ring",
    "tenants",
)


def tag(text: str) -> str:
    """Keep braces out of names, so the hash tag is always `{acct:NAME}`."""
    return text.replace("%", "%25").replace("{", "%7B").replace("}", "%7D")


def account_keys(prefix: str, account: str) -> list[str]:
    """KEYS of every script call for `account` (`prefix` already passed through `tag`)."""
    base = f"{prefix}:{{acct:{tag(account)}}}:"
    return [base + name for name in KEY_NAMES]


class Op(NamedTuple):
    """One op of a redis_ops.lua call: its five ARGV values, in order."""

    kind: Literal["a", "r", "c"]  # acquire, release, a tenant's limit or weight changed
    id: str  # the lease (or its ticket); "" for a change
    tenant: str  # "" for a release
    limit: int  # the tenant's; 0 for a release
    weight: int  # the tenant's; 0 for a release

    # Made with tuple.__new__: a NamedTuple's own __new__ would cost 100 ns more per op.

    @classmethod
    def acquire(cls, lease_id: str, tenant: Tenant) -> Op:
        return _tuple(cls, ("a", lease_id, tenant.name, tenant.max_concurrency, tenant.weight))

    @classmethod
    def release(cls, lease_id: str) -> Op:
        return _tuple(cls, ("r", lease_id, "", 0, 0))

    @classmethod
    def change(cls, tenant: Tenant) -> Op:
        return _tuple(cls, ("c", "", tenant.name, tenant.max_concurrency, tenant.weight))


_tuple = tuple.__new__


class OpsReply(NamedTuple):
    """What redis_ops.lua answers."""

    # One per op: an acquire 1 (leased) or 0 (queued); a release 1 (a lease dropped), 2 (a
    # ticket withdrawn) or 0 (nothing to drop); a change 0.
    results: list[int]
    waiting: int  # tickets still queued in the account

    @classmethod
    def decode(cls, raw: list[int]) -> OpsReply:
        return cls(raw[:-1], int(raw[-1]))


# A ticket the heartbeat asked about: leased (its request may go), still queued, or gone
# (purged while its replica was cut off: it must queue again).
TicketStatus = Literal["granted", "queued", "lost"]


class Counts(NamedTuple):
    """One pool as Redis counts it, across every replica."""

    held: int  # leases
    queued: int  # tickets


class HeartbeatReply(NamedTuple):
    """What redis_heartbeat.lua answers."""

    lost: list[str]  # of the leases asked to renew, those Redis no longer holds
    tickets: list[TicketStatus]  # one per ticket asked about, in order
    account: Counts
    tenants: list[Counts]  # one per tenant asked about, in order

    @classmethod
    def decode(cls, raw: list[Any]) -> HeartbeatReply:
        lost, statuses, state = raw
        tickets: list[TicketStatus] = [
            "queued" if status == 0 else "granted" if status == 1 else "lost" for status in statuses
        ]
        tenants = [Counts(state[i], state[i + 1]) for i in range(2, len(state), 2)]
        return cls(list(lost), tickets, Counts(state[0], state[1]), tenants)


def _lua(name: str) -> str:
    return resources.files("gateway.limits").joinpath(name).read_text()


class Scripts:
    """Both scripts on one client, run by EVALSHA, at most MAX_CALLS calls at a time."""

    def __init__(
        self,
        client: Redis,
        *,
        ttl_ms: int,
        ticket_ttl_ms: int,
        channels: str,
        down: Callable[[], bool],
    ) -> None:
        self._client = client
        self._ttl_ms = ttl_ms
        self._ticket_ttl_ms = ticket_ttl_ms
        self._channels = channels  # "<prefix>:grants:"; the replica id or "all" follows
        self._down = down  # Redis is known to be unreachable: calls fail fast
        self._calls = asyncio.Semaphore(MAX_CALLS)
        lib = _lua("redis_lib.lua")
        self._ops = client.register_script(lib + _lua("redis_ops.lua"))
        self._heartbeat = client.register_script(lib + _lua("redis_heartbeat.lua"))

    async def load(self) -> None:
        for script in (self._ops, self._heartbeat):
            script.sha = await self._client.script_load(script.script)

    async def ops(self, keys: list[str], limit: int, ops: Iterable[Op]) -> OpsReply:
        """Run `ops`, in order, in one call."""
        args: list[str | int] = [limit, self._ttl_ms, self._ticket_ttl_ms, self._channels]
        for op in ops:
            args += op
        return OpsReply.decode(await self._call(self._ops, keys, args))

    async def heartbeat(
        self, keys: list[str], limit: int, leases: list[str], tickets: list[str], tenants: list[str]
    ) -> HeartbeatReply:
        """Renew `leases`, keep `tickets` alive and ask after them, and count the account's
        pools and those of `tenants`."""
        args: list[str | int] = [limit, self._ttl_ms, self._ticket_ttl_ms, self._channels]
        args += [len(leases), *leases, len(tickets), *tickets, len(tenants), *tenants]
        return HeartbeatReply.decode(await self._call(self._heartbeat, keys, args))

    async def _call(self, script: AsyncScript, keys: list[str], args: list[str | int]) -> Any:
        async with self._calls:
            if self._down():  # went down while this call waited its turn: fail fast
                raise RedisConnectionError("Redis is unreachable")
            return await script(keys=keys, args=args)

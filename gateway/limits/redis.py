"""The Redis limiter: one set of limits shared by every gateway replica.

Every state change is a Lua script (`redis_*.lua` beside this module, each prefixed with
`redis_lib.lua`), loaded once and run atomically by EVALSHA, with Redis's clock (`TIME`) for
expiries. Keys, with P the `key_prefix` (so gateways can share one Redis) and every key of one
account under the hash tag `{acct:NAME}` (so each script touches one Redis Cluster slot):

    P:{acct:NAME}:leases    ZSET  lease id -> expiry (ms); account in-flight = ZCARD
    P:{acct:NAME}:holders   HASH  lease id -> tenant
    P:{acct:NAME}:inflight  HASH  tenant -> leases held (field dropped at 0)
    P:{acct:NAME}:waiters   ZSET  ticket id -> expiry (ms), renewed by its replica's heartbeat
    P:{acct:NAME}:tickets   HASH  ticket id -> "TENANT\\nSEQ", its place in the queue
    P:{acct:NAME}:queue     HASH  "TENANT\\nSEQ" -> ticket id: one FIFO per tenant
    P:{acct:NAME}:qstate    HASH  per tenant: head, tail, length, round-robin credit
    P:{acct:NAME}:ring      LIST  tenants with waiters, in round-robin order
    P:{acct:NAME}:tenants   HASH  tenant -> "LIMIT WEIGHT" (dispatch needs other tenants')
    P:grants:REPLICA        pub/sub channel: ticket ids just given a slot

Ids are "REPLICA-N"; a ticket that gets a slot becomes the lease of the same id. When idle, an
account leaves only its `tenants` hash behind.

Expiries: a lease lasts lease_ttl_s from its last renewal; a ticket only three heartbeats from
its replica's last one. A ticket that gets a slot hands its own expiry to the lease, until its
replica's next heartbeat claims the lease for lease_ttl_s. So of what a SIGKILLed replica
leaves, its leases come back within lease_ttl_s and its queued requests (granted or not) hold
no slot past three heartbeat intervals after its last heartbeat.

Scripts: `ops` runs a batch of acquires and releases of one account, in order. Acquire leases at
once when the tenant has no one queued and both pools have room, else queues a ticket. Release
drops a lease or withdraws a ticket, whichever the id is (so a timeout or cancellation racing a
grant never leaks the slot; a second call is a no-op), and freed slots go to waiting tenants in
turn, PUBLISHing each grant. Per account, up to 4 calls are in flight at once; the acquires and
releases asked for while all are busy go together in the next (uncontended: one round trip
each; under load, many requests share one). A release is sent only once its acquire is
answered. `heartbeat` is each replica's periodic call per account: renew its leases every
lease_ttl_s/3 (and claim those just granted to its tickets at every beat), keep its tickets
alive, purge what dead replicas left, dispatch, and report its tickets and the pools' state
(cached for `pools()`).

Waiting: each replica holds one pub/sub subscription and a future per ticket; a grant wakes the
waiter at once. The heartbeat, every min(1 s, lease_ttl_s/4), is only the safety net.

Kept slots (`keep_slots_s`): a released lease may stay with its replica, still a lease in Redis
(renewed, counted, never over a limit), for that tenant's next request, which then takes it
with no round trip. Only while no one in the account waits: a ticket that queues PUBLISHes on
"<channel prefix>all", and every replica gives its kept slots back at once (and at each
heartbeat that sees a queue or a pool over its limit, or when the account backs off from an
upstream 429); unused, they go back after `keep_slots_s`. Under a load below the limits,
requests then cost no Redis round trip at all; at the limits, every slot goes through Redis's
queue as before.

Redis trouble: with on_redis_error=local the limiter falls back to an in-process
`MemoryLimiter` with the same limits (per process, so N replicas may admit N times the limit),
logs once, PINGs every second and returns to the shared limits when Redis answers. With
`reject` it raises `Unavailable` meanwhile. Leases release where they were granted; releases
that fail are retried once Redis is back.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Literal

from redis.asyncio.client import PubSub
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from gateway.config import Account, LimiterSettings, Tenant
from gateway.errors import Unavailable, retry_headers
from gateway.limits.base import (
    AdaptiveLimits,
    HoldTimes,
    Lease,
    Limiter,
    PoolState,
    queue_timeout,
)
from gateway.limits.memory import MemoryLimiter
from gateway.redis_client import SOCKET_TIMEOUT_S, connect

logger = logging.getLogger(__name__)

# What Redis in trouble looks like. Only ever caught around Redis calls: the builtin
# TimeoutError of a queue timeout is an OSError too.
_TROUBLE = (RedisError, OSError)
# Redis calls in flight at once: more wait their turn instead of opening connections without
# end (the pool refuses past 100), and each holds its connection for one round trip only.
_MAX_CALLS = 64
# Per account, up to _MAX_SENDERS calls of redis_ops.lua in flight at once; acquires and
# releases asked for while all are busy go together in the next, at most _MAX_BATCH a call.
# One sender alone would be a queue: each of its round trips waits for a busy event loop to
# read the answer (measured: ~16 ms a cycle at 64 connections on a slow core).
_MAX_SENDERS = 4
_MAX_BATCH = 64

_Op = tuple[str, str, str, int, int]  # "a" | "r" | "c", id, tenant, tenant limit, weight
_Asked = tuple[_Op, "asyncio.Future[int]"]  # an op and who waits for its answer
# In the order of KEYS in redis_lib.lua.
_KEYS = (
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

_Status = Literal["granted", "lost", "down"]


def _unawaited(answer: asyncio.Future[int]) -> None:
    """Nobody waits for this answer: its failure (already logged) must not warn again."""
    answer.add_done_callback(lambda f: f.cancelled() or f.exception())


def _lua(name: str) -> str:
    return resources.files("gateway.limits").joinpath(name).read_text()


def _tag(text: str) -> str:
    """Keep braces out of names, so the hash tag is always `{acct:NAME}`."""
    return text.replace("%", "%25").replace("{", "%7B").replace("}", "%7D")


@dataclass(eq=False)
class _Account:
    name: str
    keys: list[str]
    configured: int
    tenants: dict[str, Tenant] = field(default_factory=dict)
    held: dict[str, _RedisLease] = field(default_factory=dict)
    pending: set[str] = field(default_factory=set)  # ids whose release must be retried
    # Ops waiting for a sender, and who waits for each answer.
    batch: list[_Asked] = field(default_factory=list)
    senders: int = 0  # tasks sending batches
    starting: bool = False  # one of them has not taken its batch yet
    unanswered: set[str] = field(default_factory=set)  # ids of acquires queued or in flight
    # Releases of those ids: sent after the acquire's call, so Redis never sees them reversed.
    deferred: dict[str, list[_Asked]] = field(default_factory=dict)
    waiting: int = 0  # tickets queued in the account, as of the last call
    reclaims: int = 0  # broadcasts heard: an answer older than the last one says nothing
    # Released slots kept for the tenant's next request: tenant -> [(lease id, kept at)].
    spare: dict[str, list[tuple[str, float]]] = field(default_factory=dict)


@dataclass(eq=False)
class _Ticket:
    account: _Account
    future: asyncio.Future[_Status]
    enqueued: bool = False  # only then may the heartbeat ask about it


class _RedisLease(Lease):
    __slots__ = (
        "_account",
        "_claimed",
        "_epoch",
        "_id",
        "_limiter",
        "_released",
        "_start",
        "queue_s",
        "tenant",
    )

    def __init__(
        self,
        limiter: RedisLimiter,
        account: _Account,
        lease_id: str,
        tenant: str,
        queue_s: float,
        claimed: bool,
    ) -> None:
        self._limiter = limiter
        self._account = account
        self._id = lease_id
        # False while Redis may still hold it on its ticket's short expiry: the next heartbeat
        # renews it whether or not renewals are due.
        self._claimed = claimed
        self.tenant = tenant
        self._epoch = limiter._epoch
        self._released = False
        self._start = time.monotonic()
        self.queue_s = queue_s

    async def release(self) -> None:
        if self._released:
            return
        self._released = True
        await self._limiter._release_lease(self, time.monotonic() - self._start)


class RedisLimiter(Limiter):
    def __init__(
        self,
        settings: LimiterSettings,
        *,
        adaptive: AdaptiveLimits | None = None,
        probe_interval_s: float = 1.0,
    ) -> None:
        self._settings = settings
        self._ttl_ms = max(1, round(settings.lease_ttl_s * 1000))
        self._beat_s = min(1.0, settings.lease_ttl_s / 4)
        self._renew_s = settings.lease_ttl_s / 3
        # Tickets outlive their replica's last heartbeat by three beats (never more than the
        # lease ttl), and so do slots granted to them until the replica claims them.
        self._ticket_ttl_ms = max(1, round(3 * self._beat_s * 1000))
        self._probe_s = probe_interval_s
        self._prefix = _tag(settings.key_prefix)
        self._replica = uuid.uuid4().hex[:16]
        self._ids = itertools.count()
        self._channels = f"{self._prefix}:grants:"
        self._channel = self._channels + self._replica
        self._reclaim_channel = self._channels + "all"  # a ticket queued: give kept slots back
        self._keep_s = settings.keep_slots_s
        self._adaptive = adaptive if adaptive is not None else AdaptiveLimits()
        self._local = MemoryLimiter(self._adaptive)
        self._holds = HoldTimes()
        self._accounts: dict[str, _Account] = {}
        self._tickets: dict[str, _Ticket] = {}
        self._states: dict[str, list[PoolState]] = {}
        self._degraded = False
        self._epoch = 0  # outages so far: a lease lost across one is no surprise
        self._runner: asyncio.Task[None] | None = None
        self._listener: asyncio.Task[None] | None = None
        self._ops: set[asyncio.Task[None]] = set()
        self._calls = asyncio.Semaphore(_MAX_CALLS)
        self._client, self._sentinel = connect(settings)
        lib = _lua("redis_lib.lua")
        self._ops_lua = self._client.register_script(lib + _lua("redis_ops.lua"))
        self._heartbeat_lua = self._client.register_script(lib + _lua("redis_heartbeat.lua"))

    @property
    def degraded(self) -> bool:
        """True while Redis is unreachable and limits are per process (or requests refused)."""
        return self._degraded

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        try:
            await self._client.ping()
            for script in (self._ops_lua, self._heartbeat_lua):
                script.sha = await self._client.script_load(script.script)
            await self._subscribe()
        except _TROUBLE as exc:
            self._went_down(exc)
        self._runner = asyncio.create_task(self._run(), name="redis-limiter")

    async def close(self) -> None:
        tasks = [t for t in (self._runner, self._listener) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._runner = self._listener = None
        # Requests still holding slots at shutdown will not finish here: hand the slots back.
        for acct in self._accounts.values():
            for lease in acct.held.values():
                lease._released = True
                acct.pending.add(lease._id)
            acct.held.clear()
            acct.pending.update(lease_id for kept in acct.spare.values() for lease_id, _ in kept)
            acct.spare.clear()
        if self._ops:
            await asyncio.wait(self._ops, timeout=SOCKET_TIMEOUT_S)
        if not self._degraded:
            try:
                await asyncio.gather(*(self._retry_releases(a) for a in self._accounts.values()))
            except _TROUBLE as exc:
                logger.warning("limiter: could not hand slots back to Redis at shutdown: %s", exc)
        await self._local.close()
        await self._client.aclose()
        if self._sentinel is not None:
            await self._sentinel.aclose()

    async def ready(self) -> tuple[bool, str]:
        if not self._degraded:
            return True, "redis: shared limits"
        if self._settings.on_redis_error == "reject":
            return False, "redis unreachable: refusing requests (on_redis_error=reject)"
        return True, "degraded: redis unreachable, per-process limits (on_redis_error=local)"

    # -- acquire and release ---------------------------------------------------------------

    async def acquire(self, account: Account, tenant: Tenant, timeout_s: float) -> Lease:
        acct = self._account(account, tenant)
        if not acct.waiting and not self._degraded:
            kept = acct.spare.get(tenant.name)
            if kept:  # a slot this replica kept: no round trip
                return self._lease(acct, kept.pop()[0], tenant, 0.0, claimed=True)
        deadline = asyncio.get_running_loop().time() + timeout_s
        if not self._degraded:
            lease = await self._acquire_shared(acct, tenant, deadline)
            if lease is not None:
                return lease
        if self._settings.on_redis_error == "reject":
            raise Unavailable(
                "The shared concurrency limiter (Redis) is unreachable; retry shortly.",
                headers=retry_headers(self._probe_s),
            )
        remaining = max(0.0, deadline - asyncio.get_running_loop().time())
        return await self._local.acquire(account, tenant, remaining)

    async def _acquire_shared(
        self, acct: _Account, tenant: Tenant, deadline: float
    ) -> _RedisLease | None:
        """A lease from Redis, or None if Redis failed us (the caller falls back)."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        lease_id = f"{self._replica}-{next(self._ids):x}"
        # Registered before the script runs: its grant may be published before the reply.
        ticket = _Ticket(acct, loop.create_future())
        self._tickets[lease_id] = ticket
        waited = False
        try:
            while True:
                op = ("a", lease_id, tenant.name, tenant.max_concurrency, tenant.weight)
                try:
                    leased = await self._submit(acct, op)
                except _TROUBLE:  # it may have run: the sender noted it, to withdraw it later
                    return None
                if not leased:
                    ticket.enqueued = waited = True
                    async with asyncio.timeout_at(deadline):
                        status = await ticket.future
                    if status == "down":
                        acct.pending.add(lease_id)
                        return None
                    if status == "lost":  # purged while we were cut off: queue again
                        ticket.future = loop.create_future()
                        ticket.enqueued = False
                        continue
                # A lease granted to its ticket is claimed (renewed) by the next heartbeat.
                queue_s = loop.time() - start if waited else 0.0
                return self._lease(acct, lease_id, tenant, queue_s, claimed=not waited)
        except BaseException as exc:
            queued = await self._release(acct, lease_id)  # sent even if this await is cancelled
            if isinstance(exc, TimeoutError):
                wait = self._holds.estimate_wait(acct.name, queued, self._limit(acct))
                raise queue_timeout(tenant, loop.time() - start, wait) from None
            raise
        finally:
            self._tickets.pop(lease_id, None)

    async def _call(self, script: AsyncScript, keys: list[str], args: list[Any]) -> Any:
        async with self._calls:
            if self._degraded:  # went down while this call waited its turn: fail fast
                raise RedisConnectionError("Redis is unreachable")
            return await script(keys=keys, args=args)

    def _lease(
        self, acct: _Account, lease_id: str, tenant: Tenant, queue_s: float, *, claimed: bool
    ) -> _RedisLease:
        lease = _RedisLease(self, acct, lease_id, tenant.name, queue_s, claimed)
        acct.held[lease_id] = lease
        return lease

    async def _release_lease(self, lease: _RedisLease, held_s: float) -> None:
        acct = lease._account
        held = acct.held.pop(lease._id, None) is lease  # not if Redis said it was lost
        self._holds.observe(acct.name, held_s)
        if (
            held
            and self._keep_s > 0
            and not acct.waiting
            and not self._degraded
            and lease._claimed
            and lease._epoch == self._epoch
            and self._limit(acct) >= acct.configured  # not while backing off from upstream 429s
        ):
            acct.spare.setdefault(lease.tenant, []).append((lease._id, time.monotonic()))
            return
        await self._release(acct, lease._id)

    def _give_back(self, acct: _Account, older_than: float | None = None) -> None:
        """Release the account's kept slots (those kept before `older_than`, or all)."""
        for tenant in list(acct.spare):
            kept = acct.spare.pop(tenant)
            fresh = [s for s in kept if older_than is not None and s[1] >= older_than]
            for lease_id, kept_at in kept:
                if older_than is None or kept_at < older_than:
                    _unawaited(self._release(acct, lease_id))
            if fresh:
                acct.spare[tenant] = fresh

    def _reclaim(self, leases_key: str) -> None:
        """Someone queued in this account (on any replica): give kept slots back now."""
        for acct in self._accounts.values():
            if acct.keys[0] == leases_key:
                acct.reclaims += 1
                acct.waiting = max(acct.waiting, 1)
                self._give_back(acct)

    def _release(self, acct: _Account, lease_id: str) -> asyncio.Future[int]:
        """Drop the lease or ticket `lease_id`; the future says how many still queue in the
        account. Queued at once, so the release happens even if its caller is cancelled."""
        if self._degraded:
            acct.pending.add(lease_id)
            done = asyncio.get_running_loop().create_future()
            done.set_result(self._queued(acct))
            return done
        return self._submit(acct, ("r", lease_id, "", 0, 0))

    def _submit(self, acct: _Account, op: _Op) -> asyncio.Future[int]:
        answer: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        if op[0] == "a":
            acct.unanswered.add(op[1])
        if op[0] == "r" and op[1] in acct.unanswered:
            acct.deferred.setdefault(op[1], []).append((op, answer))
        else:
            acct.batch.append((op, answer))
            self._kick(acct)
        return answer

    def _kick(self, acct: _Account) -> None:
        """Start a sender when ops wait, none is about to take them, and there is room."""
        if acct.batch and not acct.starting and acct.senders < _MAX_SENDERS:
            acct.senders += 1
            acct.starting = True
            task = asyncio.create_task(self._send(acct))
            self._ops.add(task)
            task.add_done_callback(self._ops.discard)

    async def _send(self, acct: _Account) -> None:
        """Send the account's queued ops, a batch per call, until none are left."""
        acct.starting = False
        try:
            while acct.batch:
                batch, acct.batch = acct.batch[:_MAX_BATCH], acct.batch[_MAX_BATCH:]
                self._kick(acct)  # more than a batch waits: another sender, if there is room
                acquires = [op[1] for op, _ in batch if op[0] == "a"]
                try:
                    await self._send_batch(acct, batch)
                finally:
                    acct.unanswered.difference_update(acquires)
                    for lease_id in acquires:
                        acct.batch += acct.deferred.pop(lease_id, ())
        finally:
            acct.senders -= 1
            if acct.senders == 0:  # only when cancelled (at close): nothing will send these
                for _, answer in acct.batch:
                    answer.cancel()
                acct.batch.clear()

    async def _send_batch(self, acct: _Account, batch: list[_Asked]) -> None:
        """One call. What its failure means is settled here, whether or not anyone still waits
        for the answers."""
        args = self._ops_args(acct, [op for op, _ in batch])
        reclaims = acct.reclaims
        try:
            results = await self._call(self._ops_lua, acct.keys, args)
        except _TROUBLE as exc:
            for (kind, lease_id, *_), _ in batch:  # may have run: undo once Redis is back
                if kind != "c":
                    acct.pending.add(lease_id)
            self._went_down(exc)
            for (kind, *_), answer in batch:
                if not answer.done():
                    if kind == "a":
                        answer.set_exception(exc)
                    else:
                        answer.set_result(self._queued(acct))
            return
        except Exception as exc:  # a bug: every caller learns of it, no one waits for ever
            logger.exception("limiter: a call to Redis failed")
            for _, answer in batch:
                if not answer.done():
                    answer.set_exception(exc)
            return
        if acct.reclaims == reclaims or results[-1]:  # no broadcast overtook this answer
            acct.waiting = int(results[-1])
        for ((kind, lease_id, *_), answer), result in zip(batch, results, strict=False):
            if kind == "r":
                acct.pending.discard(lease_id)
                result = acct.waiting
            if not answer.done():
                answer.set_result(int(result))

    async def _retry_releases(self, acct: _Account) -> None:
        pending = list(acct.pending)
        if not pending:
            return
        args = self._ops_args(acct, [("r", lease_id, "", 0, 0) for lease_id in pending])
        await self._call(self._ops_lua, acct.keys, args)
        acct.pending.difference_update(pending)

    def _ops_args(self, acct: _Account, ops: list[_Op]) -> list[str | int]:
        """ARGV of redis_ops.lua: the account's settings, then five per op."""
        args: list[str | int] = [self._limit(acct), self._ttl_ms, self._ticket_ttl_ms]
        args.append(self._channels)
        for op in ops:
            args += op
        return args

    # -- pools and the adaptive limit -------------------------------------------------------

    def _account(self, account: Account, tenant: Tenant) -> _Account:
        acct = self._accounts.get(account.name)
        if acct is None:
            base = f"{self._prefix}:{{acct:{_tag(account.name)}}}:"
            acct = _Account(account.name, [base + k for k in _KEYS], account.max_concurrency)
            self._accounts[account.name] = acct
        acct.configured = account.max_concurrency  # follows config reloads
        acct.tenants[tenant.name] = tenant
        return acct

    def _limit(self, acct: _Account) -> int:
        return self._adaptive.limit(acct.name, acct.configured)

    def _queued(self, acct: _Account) -> int:
        for state in self._states.get(acct.name, ()):
            if state.name == f"account:{acct.name}":
                return state.queued
        return 0

    def reconfigure(self, accounts: Mapping[str, Account], tenants: Mapping[str, Tenant]) -> None:
        self._local.reconfigure(accounts, tenants)
        for acct in self._accounts.values():
            account = accounts.get(acct.name)
            if account is not None:
                acct.configured = account.max_concurrency
            for name in list(acct.tenants):
                tenant = tenants.get(name)
                if tenant is not None and tenant.account == acct.name:
                    acct.tenants[name] = tenant
                    if not self._degraded:  # Redis dispatches to waiters a raised limit admits
                        op = ("c", "", name, tenant.max_concurrency, tenant.weight)
                        _unawaited(self._submit(acct, op))

    def upstream_saturated(self, account: str) -> None:
        # Per replica: each one backs off from what it sees, the sum follows.
        acct = self._accounts.get(account)
        if acct is not None:
            self._adaptive.saturated(account, acct.configured)
            self._give_back(acct)

    def pools(self) -> list[PoolState]:
        if self._degraded:
            return self._local.pools()
        return [state for states in self._states.values() for state in states]

    # -- background: heartbeat, grants, outages ---------------------------------------------

    async def _run(self) -> None:
        next_renewal = 0.0
        while True:
            if self._degraded:
                await asyncio.sleep(self._probe_s)
                try:
                    await self._client.ping()
                    await self._subscribe()
                except _TROUBLE:
                    continue
                self._came_back()
                next_renewal = 0.0  # renew whatever survived the outage at once
            started = time.monotonic()
            renew = started >= next_renewal
            results = await asyncio.gather(
                *(self._heartbeat(acct, renew) for acct in list(self._accounts.values())),
                return_exceptions=True,
            )
            failures = [r for r in results if isinstance(r, BaseException)]
            for failure in failures:
                if not isinstance(failure, _TROUBLE):  # a bug: keep renewing the others
                    logger.error("limiter: heartbeat failed", exc_info=failure)
            trouble = next((f for f in failures if isinstance(f, _TROUBLE)), None)
            if trouble is not None:
                self._went_down(trouble)
                continue
            if renew:
                next_renewal = started + self._renew_s
            await asyncio.sleep(self._beat_s)

    async def _heartbeat(self, acct: _Account, renew: bool) -> None:
        await self._retry_releases(acct)
        leases = [i for i, lease in acct.held.items() if renew or not lease._claimed]
        if renew:
            leases += (lease_id for kept in acct.spare.values() for lease_id, _ in kept)
        tickets = [i for i, t in self._tickets.items() if t.account is acct and t.enqueued]
        tenants = list(acct.tenants.values())
        args: list[str | int] = [self._limit(acct), self._ttl_ms, self._ticket_ttl_ms]
        args.append(self._channels)
        args += [len(leases), *leases, len(tickets), *tickets]
        args += [len(tenants), *(t.name for t in tenants)]
        reclaims = acct.reclaims
        lost, statuses, state = await self._call(self._heartbeat_lua, acct.keys, args)
        for lease_id in leases:
            held = acct.held.get(lease_id)
            if held is not None:
                held._claimed = True  # renewed, or lost just below
        if lost and acct.spare:
            gone = set(lost)
            for name, kept in list(acct.spare.items()):
                acct.spare[name] = [s for s in kept if s[0] not in gone]
        for lease_id in lost:
            lease = acct.held.pop(lease_id, None)
            if lease is None:
                continue
            if lease._epoch == self._epoch:
                logger.warning(
                    "limiter: a lease of tenant %r expired before it was renewed (event loop "
                    "stalled?); its slot may be handed out twice",
                    lease.tenant,
                )
            else:
                logger.info(
                    "limiter: a lease of tenant %r did not survive the outage", lease.tenant
                )
        for ticket_id, status in zip(tickets, statuses, strict=True):
            ticket = self._tickets.get(ticket_id)
            if ticket is not None and not ticket.future.done() and status != 0:
                ticket.future.set_result("granted" if status == 1 else "lost")
        if acct.reclaims == reclaims or state[1]:  # no broadcast overtook this answer
            acct.waiting = state[1]
        if acct.spare:
            # All back when someone waits, or a pool is over its limit (lowered by a reload);
            # else those unused for keep_slots_s.
            over = state[0] > self._limit(acct) or any(
                state[2 + 2 * i] > t.max_concurrency for i, t in enumerate(tenants)
            )
            everything = acct.waiting or over
            self._give_back(acct, None if everything else time.monotonic() - self._keep_s)
        # In flight, as the pools report it: without this replica's kept (idle) slots.
        idle = {name: len(slots) for name, slots in acct.spare.items()}
        inflight = state[0] - sum(idle.values())
        states = [PoolState(f"account:{acct.name}", self._limit(acct), inflight, state[1])]
        for i, tenant in enumerate(tenants):
            held = state[2 + 2 * i] - idle.get(tenant.name, 0)
            queued = state[3 + 2 * i]
            states.append(PoolState(f"tenant:{tenant.name}", tenant.max_concurrency, held, queued))
        self._states[acct.name] = states

    async def _subscribe(self) -> None:
        pubsub = self._client.pubsub()
        try:
            await pubsub.subscribe(self._channel, self._reclaim_channel)
        except BaseException:
            await pubsub.aclose()  # type: ignore[no-untyped-call]
            raise
        self._listener = asyncio.create_task(self._listen(pubsub), name="redis-limiter-grants")

    async def _listen(self, pubsub: PubSub) -> None:
        try:
            async for message in pubsub.listen():
                if message["type"] != "message":
                    continue
                if message["channel"] == self._reclaim_channel:
                    self._reclaim(message["data"])
                    continue
                ticket = self._tickets.get(message["data"])
                if ticket is not None and not ticket.future.done():
                    ticket.future.set_result("granted")
        except _TROUBLE as exc:
            if self._listener is asyncio.current_task():
                self._listener = None
            self._went_down(exc)
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call]

    def _went_down(self, exc: BaseException) -> None:
        if self._degraded:
            return
        self._degraded = True
        self._epoch += 1
        if self._settings.on_redis_error == "reject":
            then = "refusing requests with 503 (on_redis_error=reject)"
        else:
            then = "serving with per-process limits (on_redis_error=local)"
        logger.warning("limiter: Redis unreachable (%s); %s until it answers", exc, then)
        if self._listener is not None:
            self._listener.cancel()
            self._listener = None
        for ticket in self._tickets.values():
            if not ticket.future.done():
                ticket.future.set_result("down")
        for acct in self._accounts.values():  # kept slots: given back once Redis answers
            acct.pending.update(lease_id for kept in acct.spare.values() for lease_id, _ in kept)
            acct.spare.clear()

    def _came_back(self) -> None:
        self._degraded = False
        logger.info("limiter: Redis answers again; back to shared limits")

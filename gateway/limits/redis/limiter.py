"""The `RedisLimiter`: the parts of this package put together behind the `Limiter` contract.

It owns the accounts and the waiting tickets of this replica, the acquire path (a kept slot, else
Redis's queue, else the fallback) and what a released lease becomes (kept, or given back).

Free slots (`free_slots`, for `x-ratelimit-remaining-requests`), without a round trip: this
replica's own requests holding a slot now, plus the other replicas' as the last heartbeat counted
them (`_Active`). Off by what the others did since (at most a heartbeat ago), and by a slot of
this replica's taken or given back while the heartbeat's own call was on its way: the next
heartbeat sets both right.

Redis trouble: with on_redis_error=local the limiter falls back to an in-process `MemoryLimiter`
with the same limits (per process, so N replicas may admit N times the limit) until the link
(heartbeat.py) sees Redis answer again; with `reject` it raises `Unavailable` meanwhile. Leases
release where they were granted.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import uuid
from collections.abc import Mapping

from gateway.config import Account, LimiterSettings, Tenant
from gateway.errors import Unavailable, retry_headers
from gateway.limits.base import AdaptiveLimits, HoldTimes, Lease, Limiter, PoolState, queue_timeout
from gateway.limits.memory import MemoryLimiter
from gateway.limits.redis.account import RedisAccount, RedisLease, Ticket
from gateway.limits.redis.batch import unawaited
from gateway.limits.redis.heartbeat import Link
from gateway.limits.redis.scripts import TROUBLE, Op, tag
from gateway.redis_client import SOCKET_TIMEOUT_S

logger = logging.getLogger(__name__)


class _Active:
    """This replica's requests holding a slot in one account (per tenant, and in all), and the
    pools as the link's last heartbeat report counted them, with what this replica held at that
    point: the other replicas' part is the difference. A report is taken in at the first change
    after it (`sync`), so every change after it counts as this replica's own."""

    __slots__ = ("account", "now", "report", "tenants", "then", "then_total", "total")

    def __init__(self) -> None:
        self.now: dict[str, int] = {}  # tenant -> this replica's requests holding a slot
        self.total = 0
        self.report: list[PoolState] | None = None  # the link's report last taken in
        self.account = 0  # account in flight, in that report
        self.tenants: dict[str, int] = {}  # tenant in flight, in that report
        self.then: dict[str, int] = {}  # `now` when it was taken in
        self.then_total = 0

    def sync(self, report: list[PoolState] | None) -> None:
        if report is self.report:
            return
        self.report = report
        self.then, self.then_total = dict(self.now), self.total
        self.account, self.tenants = 0, {}
        for state in report or ():
            kind, _, name = state.name.partition(":")
            if kind == "tenant":
                self.tenants[name] = state.inflight
            else:
                self.account = state.inflight

    def others(self, tenant: str) -> tuple[int, int]:
        """The other replicas' requests holding a slot: (the tenant's, the account's)."""
        theirs = self.tenants.get(tenant, 0) - self.then.get(tenant, 0)
        return max(0, theirs), max(0, self.account - self.then_total)


class RedisLimiter(Limiter):
    def __init__(
        self,
        settings: LimiterSettings,
        *,
        adaptive: AdaptiveLimits | None = None,
        probe_interval_s: float = 1.0,
    ) -> None:
        self._settings = settings
        self._probe_s = probe_interval_s
        self._prefix = tag(settings.key_prefix)
        self._replica = uuid.uuid4().hex[:16]
        self._ids = itertools.count()
        self._keep_s = settings.keep_slots_s
        self._adaptive = adaptive if adaptive is not None else AdaptiveLimits()
        self._local = MemoryLimiter(self._adaptive)
        self._holds = HoldTimes()
        self._accounts: dict[str, RedisAccount] = {}
        self._tickets: dict[str, Ticket] = {}
        self._active: dict[str, _Active] = {}  # account -> its requests holding a slot here
        self._released = self._release_lease  # bound once: every lease calls it
        self._link = Link(
            settings,
            self._accounts,
            self._tickets,
            prefix=self._prefix,
            replica=self._replica,
            probe_s=probe_interval_s,
        )

    @property
    def degraded(self) -> bool:
        """True while Redis is unreachable and limits are per process (or requests refused)."""
        return self._link.degraded

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        await self._link.start()

    async def close(self) -> None:
        await self._link.stop()
        # Requests still holding slots at shutdown will not finish here: hand the slots back.
        for acct in self._accounts.values():
            for lease in acct.held.values():
                lease.released = True
                acct.ops.owed.add(lease.id)
            acct.held.clear()
            acct.ops.owed.update(acct.kept.clear())
        senders = {task for acct in self._accounts.values() for task in acct.ops.tasks}
        if senders:
            await asyncio.wait(senders, timeout=SOCKET_TIMEOUT_S)
        if not self._link.degraded:
            try:
                await asyncio.gather(*(a.ops.retry() for a in self._accounts.values()))
            except TROUBLE as exc:
                logger.warning("limiter: could not hand slots back to Redis at shutdown: %s", exc)
        await self._local.close()
        await self._link.close()

    async def ready(self) -> tuple[bool, str]:
        if not self._link.degraded:
            return True, "redis: shared limits"
        if self._settings.on_redis_error == "reject":
            return False, "redis unreachable: refusing requests (on_redis_error=reject)"
        return True, "degraded: redis unreachable, per-process limits (on_redis_error=local)"

    # -- acquire and release ---------------------------------------------------------------

    async def acquire(self, account: Account, tenant: Tenant, timeout_s: float) -> Lease:
        acct = self._account(account, tenant)
        if not self._link.degraded:
            kept = acct.kept.take(tenant.name)
            if kept is not None:  # a slot this replica kept: no round trip
                return self._lease(acct, kept, tenant, 0.0, claimed=True)
        deadline = asyncio.get_running_loop().time() + timeout_s
        if not self._link.degraded:
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
        self, acct: RedisAccount, tenant: Tenant, deadline: float
    ) -> RedisLease | None:
        """A lease from Redis, or None if Redis failed us (the caller falls back)."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        lease_id = f"{self._replica}-{next(self._ids):x}"
        # Registered before the script runs: its grant may be published before the reply.
        ticket = Ticket(acct, loop.create_future())
        self._tickets[lease_id] = ticket
        waited = False
        try:
            while True:
                try:
                    leased = await acct.ops.submit(Op.acquire(lease_id, tenant))
                except TROUBLE:  # it may have run: the batcher owes its release, for later
                    return None
                if not leased:
                    ticket.enqueued = waited = True
                    async with asyncio.timeout_at(deadline):
                        status = await ticket.future
                    if status == "down":
                        acct.ops.owed.add(lease_id)
                        return None
                    if status == "lost":  # purged while we were cut off: queue again
                        ticket.future = loop.create_future()
                        ticket.enqueued = False
                        continue
                # A lease granted to its ticket is claimed (renewed) by the next heartbeat.
                queue_s = loop.time() - start if waited else 0.0
                return self._lease(acct, lease_id, tenant, queue_s, claimed=not waited)
        except BaseException as exc:
            queued = await acct.ops.release(lease_id)  # sent even if this await is cancelled
            if isinstance(exc, TimeoutError):
                wait = self._holds.estimate_wait(acct.name, queued, acct.limit())
                raise queue_timeout(tenant, loop.time() - start, wait) from None
            raise
        finally:
            self._tickets.pop(lease_id, None)

    def _lease(
        self, acct: RedisAccount, lease_id: str, tenant: Tenant, queue_s: float, *, claimed: bool
    ) -> RedisLease:
        epoch = self._link.epoch
        lease = RedisLease(acct, lease_id, tenant.name, queue_s, claimed, epoch, self._released)
        acct.held[lease_id] = lease
        self._count(acct.name, tenant.name, 1)
        return lease

    def _count(self, account: str, tenant: str, step: int) -> None:
        active = self._active.get(account)
        if active is None:
            active = self._active[account] = _Active()
        active.sync(self._link.states.get(account))
        active.now[tenant] = active.now.get(tenant, 0) + step
        active.total += step

    def free_slots(self, account: Account, tenant: Tenant) -> int:
        if self._link.degraded:
            return self._local.free_slots(account, tenant)
        acct, active = self._accounts.get(account.name), self._active.get(account.name)
        if acct is None or active is None:
            return min(tenant.max_concurrency, account.max_concurrency)
        active.sync(self._link.states.get(account.name))
        others, others_in_account = active.others(tenant.name)
        mine = active.now.get(tenant.name, 0)
        free = min(
            tenant.max_concurrency - others - mine,
            acct.limit() - others_in_account - active.total,
        )
        return max(0, free)

    def _release_lease(self, lease: RedisLease, held_s: float) -> asyncio.Future[int] | None:
        """What a released lease becomes: a kept slot (None), or a release (its answer)."""
        acct = lease.account
        held = acct.held.pop(lease.id, None) is lease  # not if Redis said it was lost
        self._count(acct.name, lease.tenant, -1)
        self._holds.observe(acct.name, held_s)
        if (
            held
            and self._keep_s > 0
            and not acct.kept.waiting
            and not self._link.degraded
            and lease.claimed
            and lease.epoch == self._link.epoch
            and acct.limit() >= acct.configured  # not while backing off from upstream 429s
        ):
            acct.kept.keep(lease.tenant, lease.id)
            return None
        return acct.ops.release(lease.id)

    # -- accounts, reloads and the adaptive limit --------------------------------------------

    def _account(self, account: Account, tenant: Tenant) -> RedisAccount:
        acct = self._accounts.get(account.name)
        if acct is None:
            acct = RedisAccount(
                account.name,
                account.max_concurrency,
                prefix=self._prefix,
                adaptive=self._adaptive,
                keep_s=self._keep_s,
                link=self._link,
            )
            self._accounts[account.name] = acct
        acct.configured = account.max_concurrency  # follows config reloads
        acct.tenants[tenant.name] = tenant
        return acct

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
                    if not self._link.degraded:  # Redis dispatches to waiters a raised limit admits
                        unawaited(acct.ops.submit(Op.change(tenant)))

    def upstream_saturated(self, account: str) -> None:
        # Per replica: each one backs off from what it sees, the sum follows.
        acct = self._accounts.get(account)
        if acct is not None:
            self._adaptive.saturated(account, acct.configured)
            acct.release_all(acct.kept.give_back())

    def pools(self) -> list[PoolState]:
        if self._link.degraded:
            return self._local.pools()
        return self._link.pools()

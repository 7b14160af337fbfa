"""The in-process limiter: exact within one process, nothing shared between replicas.

Each account pool keeps its tenants' FIFO queues and a round-robin ring of the tenants that have
waiters. A release hands the freed slot straight to the next eligible waiter (its future is
resolved synchronously), so nobody polls and no slot is ever free while someone eligible waits.
The account's limit is the adaptive one (`AdaptiveLimits`); while it is backed off, a timer
hands out the slots it regains as it recovers.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

from gateway.config import Account, Tenant
from gateway.limits.base import (
    AdaptiveLimits,
    HoldTimes,
    Lease,
    Limiter,
    PoolState,
    queue_timeout,
)


@dataclass(eq=False)
class _TenantPool:
    name: str
    limit: int
    weight: int = 1
    inflight: int = 0
    credit: int = 0  # grants left in this tenant's current round-robin turn
    waiters: deque[asyncio.Future[None]] = field(default_factory=deque)


@dataclass(eq=False)
class _AccountPool:
    name: str
    limit: int  # effective: the configured one, or less while upstream pushes back
    configured: int
    inflight: int = 0
    tenants: dict[str, _TenantPool] = field(default_factory=dict)
    ring: deque[_TenantPool] = field(default_factory=deque)  # tenants with waiters, in turn

    def queued(self) -> int:
        return sum(len(t.waiters) for t in self.tenants.values())


class _MemoryLease(Lease):
    __slots__ = ("_account", "_limiter", "_released", "_start", "_tenant", "queue_s")

    def __init__(
        self, limiter: MemoryLimiter, account: _AccountPool, tenant: _TenantPool, queue_s: float
    ) -> None:
        self._limiter = limiter
        self._account = account
        self._tenant = tenant
        self._released = False
        self._start = time.monotonic()
        self.queue_s = queue_s

    async def release(self) -> None:
        self.release_now()

    def release_now(self) -> None:
        if self._released:
            return
        self._released = True
        self._limiter._free(self._account, self._tenant, time.monotonic() - self._start)


class MemoryLimiter(Limiter):
    def __init__(self, adaptive: AdaptiveLimits | None = None) -> None:
        self._accounts: dict[str, _AccountPool] = {}
        self._holds = HoldTimes()
        self._adaptive = adaptive if adaptive is not None else AdaptiveLimits()
        self._recovery: dict[str, asyncio.TimerHandle] = {}

    def _pools_for(self, account: Account, tenant: Tenant) -> tuple[_AccountPool, _TenantPool]:
        apool = self._accounts.get(account.name)
        if apool is None:
            apool = self._accounts[account.name] = _AccountPool(
                account.name, account.max_concurrency, account.max_concurrency
            )
        apool.configured = account.max_concurrency  # follows config reloads
        self._refresh_limit(apool)
        tpool = apool.tenants.get(tenant.name)
        if tpool is None:
            tpool = apool.tenants[tenant.name] = _TenantPool(tenant.name, tenant.max_concurrency)
        tpool.limit = tenant.max_concurrency
        tpool.weight = tenant.weight
        return apool, tpool

    async def acquire(self, account: Account, tenant: Tenant, timeout_s: float) -> Lease:
        apool, tpool = self._pools_for(account, tenant)
        if not tpool.waiters and apool.inflight < apool.limit and tpool.inflight < tpool.limit:
            apool.inflight += 1
            tpool.inflight += 1
            return _MemoryLease(self, apool, tpool, 0.0)

        start = time.monotonic()
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        tpool.waiters.append(fut)
        if tpool not in apool.ring:
            tpool.credit = tpool.weight
            apool.ring.append(tpool)
        try:
            async with asyncio.timeout(timeout_s):
                await fut
        except BaseException as exc:
            if fut.done() and not fut.cancelled():
                # Granted in the same tick we gave up: hand the slot on, don't leak it.
                self._free(apool, tpool, 0.0)
            else:
                fut.cancel()
                self._drop_waiter(apool, tpool, fut)
            if isinstance(exc, TimeoutError):
                wait = self._holds.estimate_wait(apool.name, apool.queued(), apool.limit)
                raise queue_timeout(tenant, time.monotonic() - start, wait) from None
            raise
        return _MemoryLease(self, apool, tpool, time.monotonic() - start)

    def _drop_waiter(
        self, apool: _AccountPool, tpool: _TenantPool, fut: asyncio.Future[None]
    ) -> None:
        with contextlib.suppress(ValueError):
            tpool.waiters.remove(fut)
        if not tpool.waiters and tpool in apool.ring:
            apool.ring.remove(tpool)
        # The one who left may have been blocking others of a weighted turn: nothing to hand
        # out here, since leaving frees no slot.

    def _free(self, apool: _AccountPool, tpool: _TenantPool, held_s: float) -> None:
        apool.inflight -= 1
        tpool.inflight -= 1
        if held_s:
            self._holds.observe(apool.name, held_s)
        apool.limit = self._adaptive.limit(apool.name, apool.configured)
        self._dispatch(apool)

    def _refresh_limit(self, apool: _AccountPool) -> None:
        """Follow the adaptive limit; slots it regained go to waiters before any newcomer."""
        limit = self._adaptive.limit(apool.name, apool.configured)
        raised = limit > apool.limit
        apool.limit = limit
        if raised:
            self._dispatch(apool)

    def reconfigure(self, accounts: Mapping[str, Account], tenants: Mapping[str, Tenant]) -> None:
        for apool in self._accounts.values():
            account = accounts.get(apool.name)
            if account is not None:
                apool.configured = account.max_concurrency
            for tpool in apool.tenants.values():
                tenant = tenants.get(tpool.name)
                if tenant is not None and tenant.account == apool.name:
                    tpool.limit, tpool.weight = tenant.max_concurrency, tenant.weight
            apool.limit = self._adaptive.limit(apool.name, apool.configured)
            self._dispatch(apool)

    def upstream_saturated(self, account: str) -> None:
        apool = self._accounts.get(account)
        if apool is None:
            return  # never admitted anything for it: nothing to back off from
        apool.limit = self._adaptive.saturated(account, apool.configured)
        self._schedule_recovery(apool)

    def _schedule_recovery(self, apool: _AccountPool) -> None:
        delay = self._adaptive.next_step_s(apool.name)
        old = self._recovery.pop(apool.name, None)
        if old is not None:
            old.cancel()
        if delay is not None:
            # A hair late, so the limit has grown when the timer fires.
            self._recovery[apool.name] = asyncio.get_running_loop().call_later(
                delay + 0.001, self._recover, apool
            )

    def _recover(self, apool: _AccountPool) -> None:
        self._recovery.pop(apool.name, None)
        self._refresh_limit(apool)
        self._schedule_recovery(apool)

    async def close(self) -> None:
        for handle in self._recovery.values():
            handle.cancel()
        self._recovery.clear()

    def _dispatch(self, apool: _AccountPool) -> None:
        """Hand free account slots to waiting tenants in turn."""
        ring = apool.ring
        skipped = 0
        while apool.inflight < apool.limit and ring and skipped < len(ring):
            tpool = ring[0]
            if tpool.inflight >= tpool.limit:
                ring.rotate(-1)  # this tenant is at its own limit: the next one's turn
                skipped += 1
                continue
            fut = tpool.waiters.popleft()
            if fut.done():  # cancelled; its owner has not run its own clean-up yet
                if not tpool.waiters:
                    ring.popleft()
                continue
            apool.inflight += 1
            tpool.inflight += 1
            fut.set_result(None)
            skipped = 0
            tpool.credit -= 1
            if not tpool.waiters:
                ring.popleft()
            elif tpool.credit <= 0:
                tpool.credit = tpool.weight
                ring.rotate(-1)

    def free_slots(self, account: Account, tenant: Tenant) -> int:
        apool = self._accounts.get(account.name)
        if apool is None:  # nothing admitted for the account yet
            return min(tenant.max_concurrency, account.max_concurrency)
        tpool = apool.tenants.get(tenant.name)
        if tpool is not None and tpool.waiters:  # its next request queues behind them
            return 0
        inflight = tpool.inflight if tpool is not None else 0
        return max(0, min(tenant.max_concurrency - inflight, apool.limit - apool.inflight))

    def pools(self) -> list[PoolState]:
        states: list[PoolState] = []
        for apool in self._accounts.values():
            states.append(
                PoolState(
                    f"account:{apool.name}",
                    self._adaptive.limit(apool.name, apool.configured),
                    apool.inflight,
                    apool.queued(),
                )
            )
            for tpool in apool.tenants.values():
                states.append(
                    PoolState(
                        f"tenant:{tpool.name}", tpool.limit, tpool.inflight, len(tpool.waiters)
                    )
                )
        return states

"""The limiter contract every backend keeps.

A request needs one slot in its account's pool (W&B limits concurrency per API key) and one in
its tenant's pool (the tenant's share of that account). `acquire` waits in line up to a timeout
and returns a `Lease`; `Lease.release()` gives both slots back and is safe to call any number of
times, so every exit path (success, error, timeout, cancellation, client disconnect) may call it.

Policy, the same in every backend: within a tenant, first come first served; across tenants of
one account, a freed account slot goes to the tenants with waiters in turn (round-robin, each
tenant served `weight` times per turn), so a light tenant waits about one slot turnover however
deep a flooding tenant's queue is.

The account's limit is adaptive (`AdaptiveLimits`): when W&B still answers 429 "Concurrency limit
reached" (someone else uses the same key outside the gateway), the proxy calls
`upstream_saturated` and the limit backs off, then creeps back to the configured value.
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from gateway.config import Account, Tenant
from gateway.errors import QueueTimeout


@dataclass
class PoolState:
    """A snapshot of one pool, for /readyz, usage and metrics."""

    name: str  # "account:NAME" or "tenant:NAME"
    limit: int
    inflight: int
    queued: int


class Lease(ABC):
    """Both slots of one admitted request."""

    queue_s: float = 0.0

    @abstractmethod
    async def release(self) -> None:
        """Give the slots back. Idempotent."""


class Limiter(ABC):
    @abstractmethod
    async def acquire(self, account: Account, tenant: Tenant, timeout_s: float) -> Lease:
        """Wait for a slot in both pools; raise QueueTimeout after timeout_s."""

    @abstractmethod
    def pools(self) -> list[PoolState]:
        """Every pool's current state."""

    @abstractmethod
    def free_slots(self, account: Account, tenant: Tenant) -> int:
        """How many more requests `tenant` could start now without waiting, in its own pool
        and in its account's, from what this process already knows (never a round trip): the
        `x-ratelimit-remaining-requests` of its answers."""

    async def start(self) -> None:  # noqa: B027 (an optional hook)
        """Connect; called once from the app's lifespan."""

    async def close(self) -> None:  # noqa: B027 (an optional hook)
        """Disconnect; called once from the app's lifespan."""

    async def ready(self) -> tuple[bool, str]:
        """Whether the backend can take requests, and a one-line detail."""
        return True, "ok"

    def upstream_saturated(self, account: str) -> None:  # noqa: B027 (an optional hook)
        """Upstream refused for concurrency although we held a slot: back the account off."""

    def reconfigure(  # noqa: B027 (an optional hook)
        self, accounts: Mapping[str, Account], tenants: Mapping[str, Tenant]
    ) -> None:
        """A reload changed limits or weights: apply them now, so that a raised limit lets
        queued requests in at once rather than when the next slot frees."""


class HoldTimes:
    """Per-account moving average of how long a slot is held, for an honest Retry-After."""

    def __init__(self, initial_s: float = 1.0, alpha: float = 0.2) -> None:
        self._avg: dict[str, float] = {}
        self._initial = initial_s
        self._alpha = alpha

    def observe(self, account: str, held_s: float) -> None:
        prev = self._avg.get(account, held_s)
        self._avg[account] = prev + self._alpha * (held_s - prev)

    def estimate_wait(self, account: str, queued: int, limit: int) -> float:
        """Seconds until a newcomer would likely get a slot."""
        hold = self._avg.get(account, self._initial)
        return hold * (math.floor(queued / max(limit, 1)) + 1)


def queue_timeout(tenant: Tenant, waited_s: float, retry_after_s: float) -> QueueTimeout:
    return QueueTimeout(
        f"Tenant {tenant.name!r} waited {waited_s:.1f}s for a free upstream slot without getting "
        f"one (limit {tenant.max_concurrency} concurrent for the tenant, shared account "
        f"{tenant.account!r}); retry later.",
        waited_s=waited_s,
        retry_after_s=retry_after_s,
    )


@dataclass
class _Cut:
    base: int  # the limit right after the last cut
    since: float  # when it was cut; recovery counts from here


class AdaptiveLimits:
    """AIMD on each account's effective limit, driven by upstream 429s the gateway could not see.

    One overload produces a burst of 429s, so a cut halves the limit (down to 1) at most once per
    `cut_window_s`. Without further 429s the limit grows back by one every `recover_s`, up to the
    configured value. Computed lazily from the clock: nothing runs in the background.
    """

    def __init__(
        self,
        recover_s: float = 5.0,
        cut_window_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._recover_s = recover_s
        self._window_s = cut_window_s
        self._clock = clock
        self._cuts: dict[str, _Cut] = {}

    def limit(self, account: str, configured: int) -> int:
        """The account's effective limit now: at most `configured`."""
        cut = self._cuts.get(account)
        if cut is None:
            return configured
        value = cut.base + int((self._clock() - cut.since) / self._recover_s)
        if value >= configured:
            del self._cuts[account]
            return configured
        return value

    def saturated(self, account: str, configured: int) -> int:
        """Record an upstream 429; return the new effective limit."""
        now = self._clock()
        current = self.limit(account, configured)
        cut = self._cuts.get(account)
        if cut is not None and now - cut.since < self._window_s:
            return current  # the same burst
        self._cuts[account] = _Cut(max(1, current // 2), now)
        return self.limit(account, configured)

    def next_step_s(self, account: str) -> float | None:
        """Seconds until the limit next grows, or None when it is back at the configured value."""
        cut = self._cuts.get(account)
        if cut is None:
            return None
        return self._recover_s - (self._clock() - cut.since) % self._recover_s

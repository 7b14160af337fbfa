"""The limiter contract every backend keeps.

A request needs one slot in its account's pool (W&B limits concurrency per API key) and one in
its tenant's pool (the tenant's share of that account). `acquire` waits in line up to a timeout
and returns a `Lease`; `Lease.release()` gives both slots back and is safe to call any number of
times, so every exit path (success, error, timeout, cancellation, client disconnect) may call it.

Policy, the same in every backend: within a tenant, first come first served; across tenants of
one account, a freed account slot goes to the tenants with waiters in turn (round-robin, each
tenant served `weight` times per turn), so a light tenant waits about one slot turnover however
deep a flooding tenant's queue is.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

from gateway.config import Account, Tenant
from gateway.errors import QueueTimeout, retry_headers


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

    async def start(self) -> None:  # noqa: B027 (an optional hook)
        """Connect; called once from the app's lifespan."""

    async def close(self) -> None:  # noqa: B027 (an optional hook)
        """Disconnect; called once from the app's lifespan."""

    async def ready(self) -> tuple[bool, str]:
        """Whether the backend can take requests, and a one-line detail."""
        return True, "ok"


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
        headers=retry_headers(retry_after_s),
    )

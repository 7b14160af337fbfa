"""What this replica knows of one account in Redis: its tenants, the leases its requests hold,
its ops on their way (batch.py) and its kept slots (kept.py); and the ticket of each request
waiting in an account's queue.

Ids are "REPLICA-N"; a ticket that gets a slot becomes the lease of the same id.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

from gateway.config import Tenant
from gateway.limits.base import AdaptiveLimits, Lease
from gateway.limits.redis.batch import Batcher, Link, unawaited
from gateway.limits.redis.kept import KeptSlots
from gateway.limits.redis.scripts import account_keys

# How a queued request's wait ended: a slot; its ticket purged while this replica was cut off
# (queue again); Redis unreachable (fall back).
Wake = Literal["granted", "lost", "down"]


class RedisAccount:
    """One account's state on this replica."""

    __slots__ = ("_adaptive", "configured", "held", "kept", "keys", "name", "ops", "tenants")

    def __init__(
        self,
        name: str,
        configured: int,
        *,
        prefix: str,
        adaptive: AdaptiveLimits,
        keep_s: float,
        link: Link,
    ) -> None:
        self.name = name
        self.keys = account_keys(prefix, name)
        self.configured = configured  # its max_concurrency, following config reloads
        self._adaptive = adaptive
        self.tenants: dict[str, Tenant] = {}  # those seen here, for the heartbeat to report
        self.held: dict[str, RedisLease] = {}  # lease id -> the lease a request holds
        self.kept = KeptSlots(keep_s)
        self.ops = Batcher(name, self.keys, self.limit, self.kept, link)

    def limit(self) -> int:
        """The account's limit now: the configured one, or less while backing off from 429s."""
        return self._adaptive.limit(self.name, self.configured)

    def release_all(self, lease_ids: Iterable[str]) -> None:
        """Release these slots (kept ones the kept-slot policy gave back); nobody waits."""
        for lease_id in lease_ids:
            unawaited(self.ops.release(lease_id))


class RedisLease(Lease):
    """Both slots of one request, a lease in Redis (`id`), held on this replica."""

    __slots__ = (
        "_release",
        "_start",
        "account",
        "claimed",
        "epoch",
        "id",
        "queue_s",
        "released",
        "tenant",
    )

    def __init__(
        self,
        account: RedisAccount,
        lease_id: str,
        tenant: str,
        queue_s: float,
        claimed: bool,
        epoch: int,
        release: Callable[[RedisLease, float], asyncio.Future[int] | None],
    ) -> None:
        # Called with positional arguments: keyword ones to a class call cost more than this
        # whole constructor (CPython 3.11), paid by every request, kept slot or not.
        self.account = account
        self.id = lease_id
        # False while Redis may still hold it on its ticket's short expiry: the next heartbeat
        # renews it whether or not renewals are due.
        self.claimed = claimed
        self.tenant = tenant
        self.epoch = epoch  # the outages so far: a lease lost across one is no surprise
        # The limiter's: keeps the slot (None) or gives it back (the release's answer).
        self._release = release
        self.released = False
        self._start = time.monotonic()
        self.queue_s = queue_s

    async def release(self) -> None:
        if self.released:
            return
        self.released = True
        answer = self._release(self, time.monotonic() - self._start)
        if answer is not None:
            await answer


@dataclass(eq=False)
class Ticket:
    """A request waiting in its account's queue, woken by a grant or the heartbeat."""

    account: RedisAccount
    future: asyncio.Future[Wake]
    enqueued: bool = False  # only then may the heartbeat ask about it

"""Kept slots (`keep_slots_s`), one account's on this replica.

A released lease may stay with its replica, still a lease in Redis (renewed, counted, never over
a limit), for that tenant's next request, which then takes it with no round trip. Only while no
one in the account waits: a ticket that queues PUBLISHes on "<channel prefix>all", and every
replica gives its kept slots back at once (and at each heartbeat that sees a queue or a pool over
its limit, or when the account backs off from an upstream 429); unused, they go back after
`keep_slots_s`. Under a load below the limits, requests then cost no Redis round trip at all; at
the limits, every slot goes through Redis's queue as before.

This module holds them and decides when they go back; whether a released lease is kept is the
limiter's to decide (it knows the lease), and releasing what goes back is the caller's.
"""

from __future__ import annotations

import time
from collections.abc import Iterable


class KeptSlots:
    """One account's kept slots, and whether anyone waits in the account."""

    __slots__ = ("_keep_s", "_reclaims", "_spare", "waiting")

    def __init__(self, keep_s: float) -> None:
        self._keep_s = keep_s
        # tenant -> [(lease id, kept at)]
        self._spare: dict[str, list[tuple[str, float]]] = {}
        self.waiting = 0  # tickets queued in the account, as of the last answer or broadcast
        self._reclaims = 0  # broadcasts heard: an answer older than the last one says nothing

    def __bool__(self) -> bool:
        return bool(self._spare)

    def take(self, tenant: str) -> str | None:
        """A slot kept for `tenant`, unless someone waits in the account."""
        if self.waiting:
            return None
        kept = self._spare.get(tenant)
        return kept.pop()[0] if kept else None

    def keep(self, tenant: str, lease_id: str) -> None:
        self._spare.setdefault(tenant, []).append((lease_id, time.monotonic()))

    def asked(self) -> int:
        """Taken just before a call to Redis, and handed to `heard` with its answer."""
        return self._reclaims

    def heard(self, waiting: int, asked: int) -> None:
        """A call made at `asked` answered that `waiting` tickets queue in the account."""
        if self._reclaims == asked or waiting:  # no broadcast overtook this answer
            self.waiting = waiting

    def reclaimed(self) -> list[str]:
        """Someone queued in this account (on any replica): every kept slot goes back now.
        Returns their lease ids, to release."""
        self._reclaims += 1
        self.waiting = max(self.waiting, 1)
        return self.give_back()

    def after_heartbeat(self, over: bool) -> list[str]:
        """All back when someone waits or a pool is `over` its limit (lowered by a reload);
        else those unused for keep_slots_s. Returns their lease ids, to release."""
        everything = self.waiting or over
        return self.give_back(None if everything else time.monotonic() - self._keep_s)

    def give_back(self, older_than: float | None = None) -> list[str]:
        """Forget the slots kept before `older_than` (or all); returns their lease ids."""
        back: list[str] = []
        for tenant in list(self._spare):
            kept = self._spare.pop(tenant)
            fresh = [s for s in kept if older_than is not None and s[1] >= older_than]
            for lease_id, kept_at in kept:
                if older_than is None or kept_at < older_than:
                    back.append(lease_id)
            if fresh:
                self._spare[tenant] = fresh
        return back

    def drop(self, lost: Iterable[str]) -> None:
        """Forget the slots Redis says it no longer holds: they are no one's to hand out."""
        gone = set(lost)
        for tenant, kept in list(self._spare.items()):
            self._spare[tenant] = [s for s in kept if s[0] not in gone]

    def ids(self) -> list[str]:
        return [lease_id for kept in self._spare.values() for lease_id, _ in kept]

    def idle(self) -> dict[str, int]:
        """Slots kept per tenant: held in Redis, yet free."""
        return {tenant: len(kept) for tenant, kept in self._spare.items()}

    def clear(self) -> list[str]:
        """Forget every kept slot (Redis unreachable, or closing); returns their lease ids."""
        ids = self.ids()
        self._spare.clear()
        return ids

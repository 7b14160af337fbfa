"""This replica's link to Redis: the connection and its scripts, the heartbeat, the pub/sub that
wakes waiters, outages and the come-back, and the pools' state reported for `pools()`.

Heartbeat: each replica's periodic call per account, every min(1 s, lease_ttl_s/4): renew its
leases every lease_ttl_s/3 (and claim those just granted to its tickets at every beat), keep its
tickets alive, purge what dead replicas left, dispatch, and report its tickets and the pools'
state. It is only the safety net for waiting: each replica holds one pub/sub subscription and a
future per ticket, and a grant wakes the waiter at once. The same subscription hears the
broadcast that takes kept slots back (kept.py). A subscription quiet for PUBSUB_PING_S is PINGed,
and one that answers nothing within PUBSUB_DEAD_S is dead (a silently dropped connection
otherwise waits forever): an outage, after which it is made anew.

Outages: a call (or the subscription) that fails marks the link `degraded`, logged once; every
waiter wakes with "down", kept slots become owed releases, and calls still waiting their turn
fail fast. The link then PINGs every probe interval and, once Redis answers and the subscription
is back, clears `degraded`; owed releases go at the next heartbeat, which renews at once
whatever survived the outage.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from redis.asyncio.client import PubSub
from redis.exceptions import ConnectionError as RedisConnectionError

from gateway.config import LimiterSettings, Tenant
from gateway.limits.base import PoolState
from gateway.limits.redis.account import RedisAccount, Ticket
from gateway.limits.redis.scripts import TROUBLE, HeartbeatReply, Scripts
from gateway.redis_client import SOCKET_TIMEOUT_S, connect

logger = logging.getLogger(__name__)

# The subscription's health check: a PING once it has been quiet this long, and the connection
# declared dead when no answer has come this long after it (an outage, as any other).
PUBSUB_PING_S = 1.0
PUBSUB_DEAD_S = SOCKET_TIMEOUT_S


class Link:
    """The limiter's connection to Redis and everything it runs in the background."""

    def __init__(
        self,
        settings: LimiterSettings,
        accounts: dict[str, RedisAccount],
        tickets: dict[str, Ticket],
        *,
        prefix: str,
        replica: str,
        probe_s: float,
    ) -> None:
        self._settings = settings
        self._accounts = accounts  # the limiter's: this replica's view of each account
        self._tickets = tickets  # the limiter's: ticket id -> its waiting request
        self._probe_s = probe_s
        self._beat_s = min(1.0, settings.lease_ttl_s / 4)
        self._renew_s = settings.lease_ttl_s / 3
        channels = f"{prefix}:grants:"
        self._channel = channels + replica
        self._reclaim_channel = channels + "all"  # a ticket queued: give kept slots back
        self.degraded = False  # Redis unreachable: limits are per process (or refused)
        self.epoch = 0  # outages so far: a lease lost across one is no surprise
        self.states: dict[str, list[PoolState]] = {}  # per account, as the last beat counted
        self._runner: asyncio.Task[None] | None = None
        self._listener: asyncio.Task[None] | None = None
        self._client, self._sentinel = connect(settings)
        self.scripts = Scripts(
            self._client,
            ttl_ms=max(1, round(settings.lease_ttl_s * 1000)),
            # Tickets outlive their replica's last heartbeat by three beats (never more than the
            # lease ttl), and so do slots granted to them until the replica claims them.
            ticket_ttl_ms=max(1, round(3 * self._beat_s * 1000)),
            channels=channels,
            down=lambda: self.degraded,
        )

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        try:
            await self._client.ping()
            await self.scripts.load()
            await self._subscribe()
        except TROUBLE as exc:
            self.went_down(exc)
        self._runner = asyncio.create_task(self._run(), name="redis-limiter")

    async def stop(self) -> None:
        """Stop the heartbeat and the subscription; the client stays open, for close."""
        tasks = [t for t in (self._runner, self._listener) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._runner = self._listener = None

    async def close(self) -> None:
        await self._client.aclose()
        if self._sentinel is not None:
            await self._sentinel.aclose()

    # -- what the heartbeat reports ----------------------------------------------------------

    def queued(self, account: str) -> int:
        """Tickets queued in the account, as the last heartbeat reported."""
        for state in self.states.get(account, ()):
            if state.name == f"account:{account}":
                return state.queued
        return 0

    def pools(self) -> list[PoolState]:
        return [state for states in self.states.values() for state in states]

    # -- the heartbeat -----------------------------------------------------------------------

    async def _run(self) -> None:
        next_renewal = 0.0
        while True:
            if self.degraded:
                await asyncio.sleep(self._probe_s)
                try:
                    await self._client.ping()
                    await self._subscribe()
                except TROUBLE:
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
                if not isinstance(failure, TROUBLE):  # a bug: keep renewing the others
                    logger.error("limiter: heartbeat failed", exc_info=failure)
            trouble = next((f for f in failures if isinstance(f, TROUBLE)), None)
            if trouble is not None:
                self.went_down(trouble)
                continue
            if renew:
                next_renewal = started + self._renew_s
            await asyncio.sleep(self._beat_s)

    async def _heartbeat(self, acct: RedisAccount, renew: bool) -> None:
        await acct.ops.retry()
        leases = [i for i, lease in acct.held.items() if renew or not lease.claimed]
        if renew:
            leases += acct.kept.ids()
        tickets = [i for i, t in self._tickets.items() if t.account is acct and t.enqueued]
        tenants = list(acct.tenants.values())
        asked = acct.kept.asked()
        reply = await self.scripts.heartbeat(
            acct.keys, acct.limit(), leases, tickets, [t.name for t in tenants]
        )
        self._renewed(acct, leases, reply.lost)
        for ticket_id, status in zip(tickets, reply.tickets, strict=True):
            ticket = self._tickets.get(ticket_id)
            if ticket is not None and not ticket.future.done() and status != "queued":
                ticket.future.set_result(status)
        acct.kept.heard(reply.account.queued, asked)
        if acct.kept:
            over = reply.account.held > acct.limit() or any(
                counts.held > t.max_concurrency
                for t, counts in zip(tenants, reply.tenants, strict=True)
            )
            acct.release_all(acct.kept.after_heartbeat(over))
        self.states[acct.name] = self._report(acct, tenants, reply)

    def _renewed(self, acct: RedisAccount, leases: list[str], lost: list[str]) -> None:
        """The heartbeat renewed `leases`, all but `lost`: those Redis no longer holds."""
        for lease_id in leases:
            held = acct.held.get(lease_id)
            if held is not None:
                held.claimed = True  # renewed, or lost just below
        if lost and acct.kept:
            acct.kept.drop(lost)
        for lease_id in lost:
            lease = acct.held.pop(lease_id, None)
            if lease is None:
                continue
            if lease.epoch == self.epoch:
                logger.warning(
                    "limiter: a lease of tenant %r expired before it was renewed (event loop "
                    "stalled?); its slot may be handed out twice",
                    lease.tenant,
                )
            else:
                logger.info(
                    "limiter: a lease of tenant %r did not survive the outage", lease.tenant
                )

    def _report(
        self, acct: RedisAccount, tenants: list[Tenant], reply: HeartbeatReply
    ) -> list[PoolState]:
        """The pools as Redis counts them, but with this replica's kept (idle) slots free."""
        idle = acct.kept.idle()
        inflight = reply.account.held - sum(idle.values())
        states = [PoolState(f"account:{acct.name}", acct.limit(), inflight, reply.account.queued)]
        for tenant, counts in zip(tenants, reply.tenants, strict=True):
            held = counts.held - idle.get(tenant.name, 0)
            states.append(
                PoolState(f"tenant:{tenant.name}", tenant.max_concurrency, held, counts.queued)
            )
        return states

    # -- grants and reclaims, by pub/sub ------------------------------------------------------

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
            await self._receive(pubsub)
        except TROUBLE as exc:
            if self._listener is asyncio.current_task():
                self._listener = None
            self.went_down(exc)
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def _receive(self, pubsub: PubSub) -> None:
        """Hand each message on; PING a quiet subscription, and call it dead when nothing, not
        even the PONG, comes back in time. A connection can die without a word (a NAT or a
        proxy dropping an idle one, a host gone): no FIN ever comes, and a plain read would wait
        forever while every grant and reclaim sent on it is lost."""
        heard = time.monotonic()
        pinged: float | None = None  # when the PING now unanswered went
        while True:
            wait = PUBSUB_PING_S if pinged is None else pinged + PUBSUB_DEAD_S - time.monotonic()
            message = await pubsub.get_message(timeout=max(wait, 0.01))
            now = time.monotonic()
            if message is not None:  # anything at all, a PONG too, shows the link alive
                heard, pinged = now, None
                self._deliver(message)
            elif pinged is not None and now - pinged >= PUBSUB_DEAD_S:
                raise RedisConnectionError(
                    f"the pub/sub connection answered no PING within {PUBSUB_DEAD_S:g}s"
                )
            elif pinged is None and now - heard >= PUBSUB_PING_S:
                await pubsub.ping()
                pinged = now

    def _deliver(self, message: dict[str, Any]) -> None:
        if message["type"] != "message":
            return
        if message["channel"] == self._reclaim_channel:
            self._reclaim(message["data"])
            return
        ticket = self._tickets.get(message["data"])
        if ticket is not None and not ticket.future.done():
            ticket.future.set_result("granted")

    def _reclaim(self, leases_key: str) -> None:
        """Someone queued in the account whose leases are at `leases_key`, on any replica."""
        for acct in self._accounts.values():
            if acct.keys[0] == leases_key:
                acct.release_all(acct.kept.reclaimed())

    # -- outages -----------------------------------------------------------------------------

    def went_down(self, exc: BaseException) -> None:
        if self.degraded:
            return
        self.degraded = True
        self.epoch += 1
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
            acct.ops.owed.update(acct.kept.clear())

    def _came_back(self) -> None:
        self.degraded = False
        logger.info("limiter: Redis answers again; back to shared limits")

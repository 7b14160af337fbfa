"""One account's ops on their way to Redis: batched into calls of redis_ops.lua, and the
releases owed to it while it cannot be reached.

Per account, up to MAX_SENDERS calls are in flight at once; the acquires, releases and changes
asked for while all are busy go together in the next, at most MAX_BATCH a call (uncontended: one
round trip each; under load, many requests share one). A release is sent only once its acquire
is answered, so Redis never sees the two reversed. A call that fails may still have run: the ids
it carried are owed, released once Redis answers again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Protocol

from gateway.limits.redis.kept import KeptSlots
from gateway.limits.redis.scripts import TROUBLE, Op, Scripts

logger = logging.getLogger(__name__)

# One sender alone would be a queue: each of its round trips waits for a busy event loop to
# read the answer (measured: ~16 ms a cycle at 64 connections on a slow core).
MAX_SENDERS = 4
MAX_BATCH = 64

Asked = tuple[Op, "asyncio.Future[int]"]  # an op and who waits for its answer


class Link(Protocol):
    """What a batcher needs of the limiter's link to Redis (heartbeat.Link)."""

    @property
    def scripts(self) -> Scripts: ...

    @property
    def degraded(self) -> bool: ...

    def went_down(self, exc: BaseException) -> None: ...

    def queued(self, account: str) -> int:
        """Tickets queued in the account, as the last heartbeat reported."""
        ...


def unawaited(answer: asyncio.Future[int]) -> None:
    """Nobody waits for this answer: its failure (already logged) must not warn again."""
    answer.add_done_callback(lambda f: f.cancelled() or f.exception())


class Batcher:
    """The ops of one account: queued, sent in batches, answered; and the releases owed."""

    __slots__ = (
        "_deferred",
        "_kept",
        "_keys",
        "_limit",
        "_link",
        "_name",
        "_senders",
        "_starting",
        "_unanswered",
        "batch",
        "owed",
        "tasks",
    )

    def __init__(
        self, name: str, keys: list[str], limit: Callable[[], int], kept: KeptSlots, link: Link
    ) -> None:
        self._name = name
        self._keys = keys
        self._limit = limit  # the account's limit now (adaptive)
        self._kept = kept  # told how many wait, at every answer
        self._link = link
        self.batch: list[Asked] = []  # ops waiting for a sender
        self._senders = 0  # tasks sending batches
        self._starting = False  # one of them has not taken its batch yet
        self._unanswered: set[str] = set()  # ids of acquires queued or in flight
        # Releases of those ids: sent after the acquire's call, so Redis never sees them reversed.
        self._deferred: dict[str, list[Asked]] = {}
        self.owed: set[str] = set()  # ids whose release must be retried
        self.tasks: set[asyncio.Task[None]] = set()  # the senders, for close to wait on

    def release(self, lease_id: str) -> asyncio.Future[int]:
        """Drop the lease or ticket `lease_id`; the future says how many still queue in the
        account. Queued at once, so the release happens even if its caller is cancelled."""
        if self._link.degraded:
            self.owed.add(lease_id)
            done = asyncio.get_running_loop().create_future()
            done.set_result(self._link.queued(self._name))
            return done
        return self.submit(Op.release(lease_id))

    def submit(self, op: Op) -> asyncio.Future[int]:
        """Queue `op` for the next call; the future gets its result (see OpsReply)."""
        answer: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        if op.kind == "a":
            self._unanswered.add(op.id)
        if op.kind == "r" and op.id in self._unanswered:
            self._deferred.setdefault(op.id, []).append((op, answer))
        else:
            self.batch.append((op, answer))
            self._kick()
        return answer

    async def retry(self) -> None:
        """Release, in one call, what failed calls left owed (at each heartbeat, and at close)."""
        owed = list(self.owed)
        if not owed:
            return
        await self._link.scripts.ops(self._keys, self._limit(), map(Op.release, owed))
        self.owed.difference_update(owed)

    def _kick(self) -> None:
        """Start a sender when ops wait, none is about to take them, and there is room."""
        if self.batch and not self._starting and self._senders < MAX_SENDERS:
            self._senders += 1
            self._starting = True
            task = asyncio.create_task(self._send())
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _send(self) -> None:
        """Send the account's queued ops, a batch per call, until none are left."""
        self._starting = False
        try:
            while self.batch:
                batch, self.batch = self.batch[:MAX_BATCH], self.batch[MAX_BATCH:]
                self._kick()  # more than a batch waits: another sender, if there is room
                acquires = [op.id for op, _ in batch if op.kind == "a"]
                try:
                    await self._send_batch(batch)
                finally:
                    self._unanswered.difference_update(acquires)
                    for lease_id in acquires:
                        self.batch += self._deferred.pop(lease_id, ())
        finally:
            self._senders -= 1
            if self._senders == 0:  # only when cancelled (at close): nothing will send these
                for _, answer in self.batch:
                    answer.cancel()
                self.batch.clear()

    async def _send_batch(self, batch: list[Asked]) -> None:
        """One call. What its failure means is settled here, whether or not anyone still waits
        for the answers."""
        asked = self._kept.asked()
        try:
            reply = await self._link.scripts.ops(self._keys, self._limit(), [op for op, _ in batch])
        except TROUBLE as exc:
            self._failed(batch, exc)
            return
        except Exception as exc:  # a bug: every caller learns of it, no one waits for ever
            logger.exception("limiter: a call to Redis failed")
            for _, answer in batch:
                if not answer.done():
                    answer.set_exception(exc)
            return
        self._kept.heard(reply.waiting, asked)
        waiting = self._kept.waiting
        for (op, answer), result in zip(batch, reply.results, strict=False):
            if op.kind == "r":
                self.owed.discard(op.id)
                result = waiting
            if not answer.done():
                answer.set_result(result)

    def _failed(self, batch: list[Asked], exc: BaseException) -> None:
        """Redis did not answer: the call may have run, so what it carried is owed (undone
        once Redis is back); acquires fail, releases answer with the last queue seen."""
        for op, _ in batch:
            if op.kind != "c":
                self.owed.add(op.id)
        self._link.went_down(exc)
        for op, answer in batch:
            if not answer.done():
                if op.kind == "a":
                    answer.set_exception(exc)
                else:
                    answer.set_result(self._link.queued(self._name))

"""`Keys`: the keys of one gateway process. It holds the view auth reads (`ring`), keeps it
current with the store (a watch that waits on the store's changes, at most `poll_s`), batches
the last-use times auth notes into the store (every `USED_FLUSH_S`, never on a request), and
runs the admin API's operations: create, revoke, rotate.

A change made here is in this replica's view before its answer goes; every other replica loads
it at its next look at the store (Redis: at once, by the published message, or within
`poll_s`). While the store cannot be reached the last view stays in force; a process that never
read it refuses keys it does not know with a 503 (retry), not a 401.

Ended keys (expired, revoked) keep their records `KEEP_ENDED_S`, so their refusals stay specific
and the list shows them; a later change removes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

from gateway.config import Settings
from gateway.errors import BadRequest, NotFound
from gateway.key_store import FileKeyStore, KeyStore, KeyStoreError, MemoryKeyStore, merge_used
from gateway.keyring import Keyring
from gateway.keys import KEY_ID_RE, ApiKey, hash_key, new_key, new_key_id

logger = logging.getLogger(__name__)
T = TypeVar("T")

KEEP_ENDED_S = 30 * 24 * 3600
USED_FLUSH_S = 5.0
MAX_API_KEYS = 10_000  # records held, ended ones included: what the store and each view hold
START_S = 2.0  # the first read of the store, before the gateway starts serving


def make_key_store(settings: Settings) -> KeyStore:
    """Redis with the Redis limiter; else the file `server.keys_store` (default: beside the
    config, `<name>.keys.json`); else, for settings that came from no file, memory."""
    if settings.limiter.backend == "redis":
        from gateway.key_store_redis import RedisKeyStore
        from gateway.redis_client import connect

        return RedisKeyStore(*connect(settings.limiter), settings.limiter.key_prefix)
    file = keys_store_path(settings)
    return MemoryKeyStore() if file is None else FileKeyStore(file)


def keys_store_path(settings: Settings) -> Path | None:
    named = settings.server.keys_store
    if settings.source == "<memory>":
        return None if named is None else Path(named)
    config = Path(settings.source)
    return config.parent / (named or f"{config.stem}.keys.json")


class Keys:
    def __init__(self, store: KeyStore, settings: Settings) -> None:
        self.store = store
        self.used: dict[str, float] = {}  # key id -> last use, not written yet
        self.ring = Keyring(settings, {}, loaded=False, used=self.used)
        self._watch_task: asyncio.Task[None] | None = None
        self._failing = False
        self._refreshing = asyncio.Lock()  # one read of the store at a time, views in order

    async def start(self) -> None:
        try:
            await asyncio.wait_for(self.refresh(), START_S)
        except (KeyStoreError, TimeoutError) as exc:
            self._failed(exc)
        self._watch_task = asyncio.create_task(self._watch(), name="key-store-watch")

    def reconfigure(self, settings: Settings) -> None:
        """A config reload: the same records under the new tenants and config keys."""
        ring = self.ring
        self.ring = Keyring(settings, ring.records, loaded=ring.loaded, used=self.used)

    async def refresh(self) -> None:
        """Load the records if the store has changed."""
        async with self._refreshing:
            records = await self.store.records()
            ring = self.ring
            if records is not None or not ring.loaded:
                held = ring.records if records is None else records
                if ring.records and not held:
                    logger.warning(
                        "key store: all %d API key record(s) are gone from the store (emptied, "
                        "or lost by Redis?): every API key is refused now",
                        len(ring.records),
                    )
                self.ring = Keyring(ring.settings, held, loaded=True, used=self.used)

    async def _watch(self) -> None:
        flush_at = time.monotonic() + USED_FLUSH_S
        while True:
            try:
                await self.store.wait(self.store.poll_s)
                await self.refresh()
                if self.used and time.monotonic() >= flush_at:
                    flush_at = time.monotonic() + USED_FLUSH_S
                    await self.flush_used()
            except KeyStoreError as exc:
                self._failed(exc)
            except Exception:  # a bug must not end the watch: this replica would go stale
                logger.exception("key store watch: unexpected error; watching on")
                await asyncio.sleep(self.store.poll_s)
            else:
                if self._failing:
                    self._failing = False
                    logger.info("key store reachable again")

    def _failed(self, exc: Exception) -> None:
        if not self._failing:
            self._failing = True
            logger.warning("key store unreachable (%s): the keys as last read stay in force", exc)

    async def flush_used(self) -> None:
        batch = dict(self.used)
        self.used.clear()
        try:
            await self.store.touch(batch)
        except BaseException:  # a failure, or the watch cancelled at exit: kept for next time
            merge_used(self.used, batch)
            raise

    async def last_used(self) -> dict[str, float]:
        """As the store has them, with this process's not written yet; only this process's
        while the store cannot be read (a listing is better than a 503)."""
        try:
            used = await self.store.last_used()
        except KeyStoreError:
            used = {}
        merge_used(used, self.used)
        return used

    async def close(self) -> None:
        if self._watch_task is not None:
            self._watch_task.cancel()
            await asyncio.gather(self._watch_task, return_exceptions=True)
        if self.used:
            with contextlib.suppress(KeyStoreError):
                await self.flush_used()
        await self.store.close()

    async def create(self, tenant: str, name: str, expires_at: float | None) -> tuple[ApiKey, str]:
        """A new key for the tenant: its record, and the key itself (shown once)."""
        now = time.time()
        secret = new_key()
        record = ApiKey(new_key_id(), tenant, name, hash_key(secret), now, expires_at)

        def change(records: dict[str, ApiKey]) -> None:
            _purge(records, now)
            _room(records)
            records[record.id] = record

        await self._apply(change)
        return record, secret

    async def revoke(self, key_id: str) -> ApiKey:
        """Refused from now on (a rotation's grace, if any, is cut short). Revoking a revoked
        key changes nothing."""
        now = time.time()

        def change(records: dict[str, ApiKey]) -> ApiKey:
            _purge(records, now)
            record = _find(records, key_id)
            if record.revoked_at is None or record.revoked_at > now:
                record = records[key_id] = replace(record, revoked_at=now)
            return record

        return await self._apply(change)

    async def rotate(
        self, key_id: str, grace_s: float, expires_at: float | None = None, inherit: bool = True
    ) -> tuple[ApiKey, str, ApiKey]:
        """A new key in this one's place (same tenant and name), this one accepted `grace_s`
        more. The new key ends at `expires_at`, or with `inherit` lives as long as this one
        was to (from now; if this one never expires, neither does it)."""
        now = time.time()
        secret = new_key()

        def change(records: dict[str, ApiKey]) -> tuple[ApiKey, ApiKey]:
            _purge(records, now)
            old = _find(records, key_id)
            if (why := old.ended_by(now)) is not None:
                raise BadRequest(
                    f"The key {key_id} is {why}: only a key in use can be rotated. "
                    "Create a new key instead.",
                    param="id",
                    code=f"key_{why}",
                )
            if old.tenant not in self.ring.settings.tenants:
                raise BadRequest(
                    f"The key {key_id} belongs to tenant {old.tenant!r}, which is no longer in "
                    "the config: it cannot be rotated.",
                    param="id",
                    code="tenant_unknown",
                )
            if old.replaced_by is not None:  # in its grace: a second live key would be lost
                raise BadRequest(
                    f"The key {key_id} was already rotated: its replacement is "
                    f"{old.replaced_by}. Rotate or revoke that one instead.",
                    param="id",
                    code="key_rotated",
                )
            _room(records)
            ends = expires_at
            if inherit:
                ends = None if old.expires_at is None else now + old.expires_at - old.created_at
            new = ApiKey(new_key_id(), old.tenant, old.name, hash_key(secret), now, ends)
            revoked = min(old.revoked_at or math.inf, now + grace_s)
            records[old.id] = old = replace(old, revoked_at=revoked, replaced_by=new.id)
            records[new.id] = new
            return new, old

        new, old = await self._apply(change)
        return new, secret, old

    async def _apply(self, change: Callable[[dict[str, ApiKey]], T]) -> T:
        answer = await self.store.update(change)
        with contextlib.suppress(KeyStoreError):
            await self.refresh()  # this replica knows at once; the others at their next look
        return answer


def _find(records: dict[str, ApiKey], key_id: str) -> ApiKey:
    record = records.get(key_id)
    if record is None:
        raise not_found(key_id)
    return record


def not_found(key_id: str) -> NotFound:
    shown = key_id if KEY_ID_RE.fullmatch(key_id) else "with that id"
    return NotFound(f"No key {shown}.", param="id", code="key_not_found")


def _room(records: dict[str, ApiKey]) -> None:
    if len(records) >= MAX_API_KEYS:
        raise BadRequest(
            f"The gateway holds {MAX_API_KEYS:,} keys, ended ones included: revoke some (ended "
            f"keys are forgotten {KEEP_ENDED_S // 86400} days after they end).",
            code="too_many_keys",
        )


def _purge(records: dict[str, ApiKey], now: float) -> None:
    for key_id in [k for k, r in records.items() if r.ends_at + KEEP_ENDED_S < now]:
        del records[key_id]

"""`Keyring`: who a key is, as auth asks it per request. One immutable view of the config's key
hashes and the admin API's records; a new view replaces it whenever either changes (a config
reload, a change in the key store), so a revoked key is refused from the moment its replica
loads the change.

A key seen before is a dict hit (`known`, bounded) and a comparison with its end; only a key not
seen yet in this view costs a SHA-256. Refusals say why (unknown, expired, revoked, its tenant
gone), naming the key's id, never the key.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass

from gateway.config import Settings, Tenant
from gateway.errors import (
    AuthenticationError,
    KeyRefused,
    PermissionDenied,
    Unavailable,
    retry_headers,
)
from gateway.keys import ApiKey, config_key_id, hash_key, rfc3339

KNOWN_KEYS_MAX = 10_000


@dataclass(frozen=True, slots=True)
class Grant:
    tenant: Tenant
    key_id: str
    until: float = math.inf  # unix time it stops being accepted; never for a config key
    record: ApiKey | None = None  # None for a config key


class Keyring:
    def __init__(
        self,
        settings: Settings,
        records: Mapping[str, ApiKey],
        *,
        loaded: bool,
        used: dict[str, float],
    ) -> None:
        self.settings = settings
        self.records = records  # key id -> the API's records, as the store had them
        self.loaded = loaded  # False until the store was read once (Redis away at start)
        self._used = used  # key id -> last use, shared by every view of one process
        self._config = {
            digest: Grant(tenant, config_key_id(digest))
            for digest, tenant in settings.tenant_by_key_hash.items()
        }
        self._api = {r.hash: r for r in records.values() if r.hash not in self._config}
        self.known: dict[str, Grant] = {}

    def grant(self, key: str) -> Grant:
        """The tenant and key id of a key that is accepted now, or the refusal."""
        grant = self.known.get(key)
        if grant is None:
            grant = self._resolve(key)
        now = time.time()
        if grant.until <= now:
            raise _ended(grant, now)
        self._used[grant.key_id] = now
        return grant

    def _resolve(self, key: str) -> Grant:
        digest = hash_key(key)
        grant = self._config.get(digest)
        if grant is None:
            record = self._api.get(digest)
            if record is None:
                if not self.loaded:
                    raise Unavailable(
                        "The gateway cannot check this key now (its key store is unreachable); "
                        "retry shortly.",
                        headers=retry_headers(1),
                    )
                raise AuthenticationError(
                    "Incorrect API key provided. Ask your platform team for a key."
                )
            tenant = self.settings.tenants.get(record.tenant)
            if tenant is None:
                raise KeyRefused(
                    f"The API key {record.id} belongs to tenant {record.tenant!r}, which this "
                    "gateway no longer serves.",
                    key_id=record.id,
                    code="tenant_unknown",
                )
            grant = Grant(tenant, record.id, record.ends_at, record)
        if len(self.known) < KNOWN_KEYS_MAX:
            self.known[key] = grant
        return grant

    def admin(self, key: str) -> str:
        """The id of an admin key, or the refusal (403 for any tenant's key)."""
        digest = hash_key(key)
        if digest in self.settings.server.admin_keys:
            return config_key_id(digest, "adm")
        if digest in self._config or digest in self._api:
            raise PermissionDenied("Admin routes refuse tenant keys; use an admin key.")
        raise AuthenticationError("Incorrect API key provided.")

    def config_keys(self) -> dict[str, str]:
        """The config's keys: key id -> tenant name."""
        return {grant.key_id: grant.tenant.name for grant in self._config.values()}


def _ended(grant: Grant, now: float) -> KeyRefused:
    record = grant.record
    assert record is not None  # only API keys end
    why = record.ended_by(now) or "revoked"
    if why == "expired":
        message = f"The API key {record.id} expired at {rfc3339(record.expires_at)}."
    elif record.replaced_by is not None:
        message = (
            f"The API key {record.id} was revoked at {rfc3339(record.revoked_at)}, when its "
            f"rotation's grace ended; use its replacement, {record.replaced_by}."
        )
    else:
        message = f"The API key {record.id} was revoked at {rfc3339(record.revoked_at)}."
    return KeyRefused(
        message + " Ask your platform team for a new key.", key_id=record.id, code=f"key_{why}"
    )

"""Gateway keys: how they are made, hashed and named. Keys are stored only as `sha256:<hex>` hashes.

A key made by the admin API (`ApiKey`) has a random id, `key_` + 24 hex digits, that says nothing
of its secret. A key listed in the config has no record to hold an id, so its id is derived from
its hash (`cfg_...`, admin keys `adm_...`): stable on every replica, and as one-way as the hash.
Adding a key to a tenant in the config file is gateway.config_edit's.
"""

from __future__ import annotations

import datetime
import hashlib
import math
import re
import secrets
from dataclasses import asdict, dataclass
from typing import Any

KEY_PREFIX = "sk-gw-"
KEY_HASH_RE = re.compile(r"sha256:[0-9a-fA-F]{64}")
KEY_ID_RE = re.compile(r"(key|cfg|adm)_[0-9a-f]{16,24}")


def new_key() -> str:
    """A fresh key with 32 bytes (256 bits) of entropy."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def new_key_id() -> str:
    return "key_" + secrets.token_hex(12)


def config_key_id(digest: str, kind: str = "cfg") -> str:
    """The id of a key the config lists by its hash (kind `adm` for server.admin_keys)."""
    named = hashlib.sha256(b"inference-gateway key id\0" + digest.lower().encode()).hexdigest()
    return f"{kind}_{named[:16]}"


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A key made over the admin API, as its store holds it (never the secret). It is accepted
    until `expires_at` or `revoked_at`, whichever comes first; a rotation sets `revoked_at` to
    the end of its grace, so it may lie in the future."""

    id: str
    tenant: str
    name: str
    hash: str
    created_at: float
    expires_at: float | None = None
    revoked_at: float | None = None
    replaced_by: str | None = None  # the key a rotation made in its place

    @property
    def ends_at(self) -> float:
        """When it stops being accepted (inf: never)."""
        ends = [t for t in (self.expires_at, self.revoked_at) if t is not None]
        return min(ends, default=math.inf)

    def ended_by(self, now: float) -> str | None:
        """Why it is no longer accepted at `now` (`revoked`, `expired`), or None."""
        ends = self.ends_at
        if ends > now:
            return None
        return "revoked" if ends == self.revoked_at else "expired"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ApiKey:
        return cls(
            id=str(data["id"]),
            tenant=str(data["tenant"]),
            name=str(data["name"]),
            hash=str(data["hash"]),
            created_at=float(data["created_at"]),
            expires_at=_number(data.get("expires_at")),
            revoked_at=_number(data.get("revoked_at")),
            replaced_by=None if data.get("replaced_by") is None else str(data["replaced_by"]),
        )


def _number(value: Any) -> float | None:
    return None if value is None else float(value)


def rfc3339(t: float | None) -> str | None:
    """A time as RFC 3339 in UTC to the second (`2026-12-04T01:12:34Z`), as the API shows it."""
    if t is None:
        return None
    when = datetime.datetime.fromtimestamp(math.floor(t), datetime.UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")

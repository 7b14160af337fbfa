"""Tokens and spend per tenant and model by month (UTC), and the budgets they are held to.

Each request's cost comes from `gateway.cost`. The store is in memory for one process, or in
Redis (shared by every replica, surviving restarts) when the limiter uses Redis:

    {prefix}:usage:{YYYY-MM}:{tenant}   HASH  "<model>|<kind>" (HINCRBY) for the token kinds
                                              prompt, completion, cached, reasoning, estimated;
                                              "<model>|usd" and "total|usd" (HINCRBYFLOAT);
                                              "key|<key id>|<kind>": prompt, completion,
                                              requests and usd, per key;
                                              "flush|<writer>": the last batch applied from
                                              one gateway process (see usage_redis)

A month's hash expires `RETENTION_DAYS` after its last write (so at least 13 months after the
month ends); the memory store forgets months as old.
"""

from __future__ import annotations

import functools
import time
from abc import ABC, abstractmethod
from collections import defaultdict

from gateway.cost import Usage

RETENTION_DAYS = 400


def month(now: float | None = None) -> str:
    """The calendar month (UTC) as YYYY-MM. Asked per request, so worked out once a minute."""
    return _month_of_minute(int((time.time() if now is None else now) // 60))


@functools.lru_cache(maxsize=4)
def _month_of_minute(minute: int) -> str:
    return time.strftime("%Y-%m", time.gmtime(minute * 60))


class UsageStore(ABC):
    def __init__(self) -> None:
        self.last_seen: dict[str, float] = {}  # tenant -> month spend at the last read or write

    async def add(
        self, tenant: str, model: str, usage: Usage, usd: float | None, key_id: str = "-"
    ) -> None:
        """Count one request's usage for this month (and for the key that made it)."""
        fields = usage_fields(model, usage, usd, key_id)
        self.last_seen[tenant] = await self._add(tenant, fields)

    async def commit(self) -> bool:
        """Make what was added so far visible to every replica now, not at the next flush (a
        budgeted tenant's charge); False when it could not, and it waits for the next flush."""
        return True

    async def spent(self, tenant: str) -> float:
        """USD spent by the tenant this month, as the store has it now."""
        self.last_seen[tenant] = total = await self._spent(tenant)
        return total

    def known_spent(self, tenant: str) -> float | None:
        """The same as last seen, when it needs no I/O; else None."""
        total = self._known_spent(tenant)
        if total is not None:
            self.last_seen[tenant] = total
        return total

    def _known_spent(self, tenant: str) -> float | None:
        return None

    @abstractmethod
    async def _add(self, tenant: str, fields: list[tuple[str, float]]) -> float:
        """Add the fields' increments; return the tenant's month spend after them."""

    @abstractmethod
    async def _spent(self, tenant: str) -> float: ...

    @abstractmethod
    async def row(self, tenant: str, month: str) -> dict[str, float]:
        """That month's fields, as the schema above."""

    async def by_model(self, tenant: str, month: str) -> dict[str, dict[str, float]]:
        """That month's `{model: {<kind>_tokens..., spend_usd}}` (see `usage_by_model`)."""
        return usage_by_model(await self.row(tenant, month))

    async def by_key(self, tenant: str, month: str) -> dict[str, dict[str, float]]:
        """That month's `{key id: {prompt_tokens, completion_tokens, requests, spend_usd}}`."""
        return usage_by_key(await self.row(tenant, month))

    async def close(self) -> None:  # noqa: B027 (an optional hook)
        """Release connections."""


class MemoryUsageStore(UsageStore):
    def __init__(self) -> None:
        super().__init__()
        self._data: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)

    async def _add(self, tenant: str, fields: list[tuple[str, float]]) -> float:
        current = month()
        if (current, tenant) not in self._data:
            self._forget(current)
        row = self._data[(current, tenant)]
        for field, value in fields:
            row[field] = row.get(field, 0) + value
        return row.get("total|usd", 0.0)

    def _forget(self, current: str) -> None:
        """Months past the retention, as Redis would have expired them."""
        oldest = month(time.time() - RETENTION_DAYS * 24 * 3600)
        for key in [k for k in self._data if k[0] < oldest and k[0] != current]:
            del self._data[key]

    async def _spent(self, tenant: str) -> float:
        return self._known_spent(tenant)

    def _known_spent(self, tenant: str) -> float:
        return self._data.get((month(), tenant), {}).get("total|usd", 0.0)

    async def row(self, tenant: str, month: str) -> dict[str, float]:
        return dict(self._data.get((month, tenant), {}))


_KINDS = {  # a hash field's kind -> its name in /v1/usage
    "prompt": "prompt_tokens",
    "completion": "completion_tokens",
    "cached": "cached_prompt_tokens",
    "reasoning": "reasoning_tokens",
    "estimated": "estimated_tokens",
    "usd": "spend_usd",
}


def usage_fields(
    model: str, usage: Usage, usd: float | None, key_id: str = "-"
) -> list[tuple[str, float]]:
    counts = (
        ("prompt", usage.prompt_tokens),
        ("completion", usage.completion_tokens),
        ("cached", usage.cached_tokens),
        ("reasoning", usage.reasoning_tokens),
        ("estimated", usage.estimated),
    )
    fields: list[tuple[str, float]] = [
        (f"{model}|{kind}", n) for kind, n in counts if n or kind in ("prompt", "completion")
    ]
    key = f"key|{key_id}|"
    fields += [(key + "prompt", usage.prompt_tokens), (key + "completion", usage.completion_tokens)]
    fields.append((key + "requests", 1))
    if usd is not None:
        fields += [(f"{model}|usd", usd), ("total|usd", usd), (key + "usd", usd)]
    return fields


def usage_by_model(row: dict[str, float]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for field, value in row.items():
        model, _, kind = field.rpartition("|")
        if model == "total" or kind not in _KINDS or model.startswith("key|"):
            continue  # the sum, a writer's mark, a key's
        entry = out.setdefault(model, {name: 0 for name in _KINDS.values()} | {"spend_usd": 0.0})
        entry[_KINDS[kind]] = float(value) if kind == "usd" else int(value)
    return out


_KEY_KINDS = {"prompt": "prompt_tokens", "completion": "completion_tokens", "requests": "requests"}


def empty_key_usage() -> dict[str, float]:
    """A key's figures before it made a request."""
    return dict.fromkeys(_KEY_KINDS.values(), 0) | {"spend_usd": 0.0}


def usage_by_key(row: dict[str, float]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for field, value in row.items():
        tag, _, rest = field.partition("|")
        key_id, _, kind = rest.rpartition("|")
        if tag != "key" or not key_id or (kind != "usd" and kind not in _KEY_KINDS):
            continue
        entry = out.setdefault(key_id, empty_key_usage())
        if kind == "usd":
            entry["spend_usd"] = float(value)
        else:
            entry[_KEY_KINDS[kind]] = int(value)
    return out

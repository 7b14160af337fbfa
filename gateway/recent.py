"""The replica's recent chat requests, for the console (`/admin/requests`, `/v1/requests`).

`Recent` keeps the last `SIZE` finished chat completions (and Responses API calls, which are
chat completions inside) of this process in a ring, and besides the last `TENANT_SIZE` of each
tenant in the tenant's own ring, so that a busy tenant never pushes a quiet one's out of its
view; it counts their errors by tenant and reason in one-minute buckets over the last
`WINDOW_MINUTES`. All of it is memory only, per process: with several replicas (or `serve
--workers N`) each shows what it served, and a restart forgets them.

On the hot path a request costs one `Finished` made and appended to two bounded deques (O(1),
no I/O, no lock: the event loop is the only writer), plus one dict increment when it failed. What
an entry holds is what the access log already shows: ids, never a key, never a prompt or an
answer. Its cost is worked out when the entry is read, from the price the request ran under,
so the hot path pays nothing for it; it is the figure added to the tenant's spend.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from gateway.config import Model
from gateway.cost import cost_usd
from gateway.exchange import Call, Result
from gateway.record import RequestRecord

SIZE = 1000  # entries kept per process, every tenant's
TENANT_SIZE = 100  # and each tenant's last ones, whatever the others do
WINDOW_MINUTES = 5  # error counts: this many one-minute buckets, the current one partial


@dataclass(slots=True)
class Finished:
    """One finished request, as the console lists it. Never written after it is made (not
    frozen only because a frozen dataclass costs three times as much to make)."""

    at: float  # unix time it finished
    request_id: str
    tenant: str
    key_id: str
    model: str  # the bounded label, as in the metrics and /v1/usage ("-": never understood)
    stream: bool | None  # None when the body was never understood
    price: Model | None  # the model's prices the request was admitted under
    result: Result

    def cost(self) -> float | None:
        """What was added to the tenant's spend for it; None without usage or a price."""
        result = self.result
        if result.charged:
            return result.cost_usd
        if result.usage is None:
            return None
        return cost_usd(self.price, result.usage)

    def as_json(self) -> dict[str, Any]:
        result, usage = self.result, self.result.usage
        return {
            "object": "gateway.request",
            "id": self.request_id,
            "finished_at": round(self.at, 3),
            "tenant": self.tenant,
            "key_id": self.key_id,
            "model": self.model,
            "stream": self.stream,
            "status": result.status,
            "reason": result.reason,
            "attempts": result.attempts,
            "queue_ms": round(result.queue_s * 1000),
            "latency_ms": round(result.elapsed_s * 1000),
            "first_byte_ms": (
                None if result.first_byte_s is None else round(result.first_byte_s * 1000)
            ),
            "prompt_tokens": None if usage is None else usage.prompt_tokens,
            "completion_tokens": None if usage is None else usage.completion_tokens,
            "estimated_tokens": None if usage is None else usage.estimated,
            "cost_usd": self.cost(),
        }


class Recent:
    def __init__(
        self,
        size: int = SIZE,
        tenant_size: int = TENANT_SIZE,
        window_minutes: int = WINDOW_MINUTES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._ring: deque[Finished] = deque(maxlen=size)
        self._tenant_size = tenant_size
        # One ring per tenant name ever served: tenants come from the config, so it is bounded.
        self._own: dict[str, deque[Finished]] = {}
        self.window_minutes = window_minutes
        self._clock = clock
        self._errors: dict[int, Counter[tuple[str, str]]] = {}  # minute -> (tenant, reason)

    def add(self, record: RequestRecord, call: Call | None, result: Result) -> None:
        """Keep one finished request: called once per chat completion, after its answer."""
        tenant = record.tenant
        if tenant is None:  # auth lets no chat request through without one
            return
        now = self._clock()
        entry = Finished(
            now,
            record.request_id,
            tenant.name,
            record.key_id or "-",
            record.model,
            None if call is None else call.stream,
            None if call is None else call.price,
            result,
        )
        self._ring.append(entry)
        own = self._own.get(tenant.name)
        if own is None:
            own = self._own[tenant.name] = deque(maxlen=self._tenant_size)
        own.append(entry)
        if result.reason:
            self._count(int(now // 60), tenant.name, result.reason)

    def _count(self, minute: int, tenant: str, reason: str) -> None:
        bucket = self._errors.get(minute)
        if bucket is None:  # a new minute: forget the ones past the window
            for old in [m for m in self._errors if m <= minute - self.window_minutes]:
                del self._errors[old]
            bucket = self._errors[minute] = Counter()
        bucket[(tenant, reason)] += 1

    def newest(self, tenant: str | None = None) -> Iterator[Finished]:
        """The entries newest first: every tenant's (up to `SIZE`), or only `tenant`'s (up to
        `TENANT_SIZE`, from its own ring)."""
        if tenant is None:
            return reversed(self._ring)
        own = self._own.get(tenant)
        return iter(()) if own is None else reversed(own)

    def find(self, tenant: str, request_id: str) -> Finished | None:
        """The tenant's newest entry with this request id (a client may reuse its ids)."""
        return next((e for e in self.newest(tenant) if e.request_id == request_id), None)

    def tenants(self) -> set[str]:
        return set(self._own)

    def errors(self, tenant: str | None = None) -> dict[str, dict[str, int]]:
        """Error counts over the window: `{tenant: {reason: count}}`, only `tenant`'s when
        given, reasons most frequent first."""
        since = int(self._clock() // 60) - self.window_minutes
        total: Counter[tuple[str, str]] = Counter()
        for minute, bucket in self._errors.items():
            if minute > since:
                total.update(bucket)
        out: dict[str, dict[str, int]] = {}
        for (name, reason), count in total.most_common():
            if tenant is None or name == tenant:
                out.setdefault(name, {})[reason] = count
        return out

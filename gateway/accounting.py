"""After a chat completion: the request, its latencies, tokens and spend, into the metrics and
the usage store.

`charge` adds one request's usage and cost to its tenant's month; the proxy calls it
before an answer's last byte, so the next request of the tenant (on any replica) sees it. A
budgeted tenant's charge is written through at once (`UsageStore.commit`). `settle` counts the
finished request in the metrics, charging first what was not charged yet (a client gone, an
answer that never came: tokens the gateway estimated, marked for
`gateway_estimated_tokens_total`).
"""

from __future__ import annotations

import logging

from gateway.config import Tenant
from gateway.cost import Usage, cost_usd
from gateway.exchange import Call, Result
from gateway.metrics import Metrics
from gateway.usage import UsageStore

logger = logging.getLogger(__name__)


class Accounting:
    def __init__(self, metrics: Metrics, store: UsageStore) -> None:
        self._metrics = metrics
        self._store = store
        self.lost = 0  # usage records the store could not take

    async def charge(self, call: Call, usage: Usage, usd: float | None) -> None:
        """Add the usage and its cost (`cost_usd`; None: no price) to the tenant's month."""
        try:
            await self._store.add(call.tenant.name, call.label, usage, usd, call.key_id)
        except Exception as exc:  # the request is done; losing a usage row must not fail it
            self.lost += 1
            if self.lost == 1 or self.lost % 1000 == 0:
                logger.warning(
                    "usage store unavailable (%s): %d usage record(s) lost so far",
                    type(exc).__name__,
                    self.lost,
                )
            return
        if call.tenant.monthly_budget_usd is not None:
            await self._store.commit()  # when it cannot, the next flush writes it

    async def settle(self, tenant: Tenant, call: Call | None, result: Result) -> None:
        """Count one finished chat completion: request, errors, latencies, tokens, spend.
        `call` is None when the request failed before it was understood."""
        m = self._metrics
        label = call.label if call is not None else "-"
        m.child(m.requests, tenant.name, label, str(result.status)).inc()
        if result.reason:
            m.child(m.errors, tenant.name, label, result.reason).inc()
        m.child(m.duration, label).observe(result.elapsed_s)
        if result.attempts or result.queue_s:  # queue timeouts too: they are the longest waits
            m.child(m.queue_wait, f"tenant:{tenant.name}").observe(result.queue_s)
            m.child(m.queue_wait, f"account:{tenant.account}").observe(result.queue_s)
        if result.first_byte_s is not None:
            m.child(m.ttft, label).observe(result.first_byte_s)
        usage = result.usage
        if call is None or usage is None:
            return
        if result.charged:
            usd = result.cost_usd
        else:
            usd = cost_usd(call.price, usage)
            await self.charge(call, usage, usd)
        for kind, count in (
            ("prompt", usage.prompt_tokens),
            ("completion", usage.completion_tokens),
            ("cached_prompt", usage.cached_tokens),
            ("reasoning", usage.reasoning_tokens),
        ):
            if count or kind in ("prompt", "completion"):
                m.child(m.tokens, tenant.name, label, kind).inc(count)
        if usage.estimated:
            m.child(m.estimated_tokens, label).inc(usage.estimated)
        if usd is None:
            m.child(m.unpriced_tokens, label).inc(usage.total)
        else:
            m.child(m.spend, tenant.name, label).inc(usd)

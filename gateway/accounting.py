"""After a chat completion: the request, its latencies, tokens and spend, into the metrics and
the usage store. `settle` reads only the `Call` and the `Result`; tokens of a stream cut short
arrive here already estimated (and marked so, for `gateway_estimated_tokens_total`).
"""

from __future__ import annotations

import logging

from gateway.config import Tenant
from gateway.exchange import Call, Result
from gateway.metrics import Metrics
from gateway.usage import UsageStore, spend_usd

logger = logging.getLogger(__name__)


class Accounting:
    def __init__(self, metrics: Metrics, store: UsageStore) -> None:
        self._metrics = metrics
        self._store = store
        self.lost = 0  # usage records the store could not take

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
        total = usage.prompt_tokens + usage.completion_tokens
        m.child(m.tokens, tenant.name, label, "prompt").inc(usage.prompt_tokens)
        m.child(m.tokens, tenant.name, label, "completion").inc(usage.completion_tokens)
        if usage.estimated:
            m.child(m.estimated_tokens, label).inc(total)
        usd = spend_usd(call.price, usage)
        if usd is None:
            m.child(m.unpriced_tokens, label).inc(total)
        else:
            m.child(m.spend, tenant.name, label).inc(usd)
        try:
            await self._store.add(tenant.name, label, usage, usd)
        except Exception as exc:  # the request is done; losing a usage row must not fail it
            self.lost += 1
            if self.lost == 1 or self.lost % 1000 == 0:
                logger.warning(
                    "usage store unavailable (%s): %d usage record(s) lost so far",
                    type(exc).__name__,
                    self.lost,
                )

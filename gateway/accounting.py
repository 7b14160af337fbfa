"""After a chat completion: the request, its latencies, tokens and spend, into the metrics and
the usage store.

Upstream's usage block is the truth. A stream that ended before it (client gone, upstream cut)
still used tokens that W&B bills: those are estimated, one token per relayed content chunk (W&B
streams a token a chunk) and about four prompt characters a token, and marked in
`gateway_estimated_tokens_total`.
"""

from __future__ import annotations

import logging
from typing import Any

from gateway.config import Tenant
from gateway.proxy import Call, Outcome
from gateway.runtime import Runtime
from gateway.usage import Usage, estimate_prompt_tokens, spend_usd

logger = logging.getLogger(__name__)


def final_usage(out: Outcome, messages: Any) -> Usage | None:
    if out.usage is not None:
        return out.usage
    meter = out.meter
    if meter is not None and meter.usage is not None:  # cut between reading and recording it
        return Usage(meter.usage["prompt_tokens"], meter.usage["completion_tokens"])
    if out.meter is not None and out.meter.content_chunks:
        return Usage(estimate_prompt_tokens(messages), out.meter.content_chunks, estimated=True)
    return None


async def settle(
    runtime: Runtime, tenant: Tenant, call: Call | None, label: str, out: Outcome, elapsed: float
) -> None:
    """Count one finished chat completion: request, errors, latencies, tokens, spend."""
    m = runtime.metrics
    m.child(m.requests, tenant.name, label, str(out.status)).inc()
    if out.reason:
        m.child(m.errors, tenant.name, label, out.reason).inc()
    m.child(m.duration, label).observe(elapsed)
    if out.attempts or out.queue_s:  # queue timeouts too: they are the longest waits
        m.child(m.queue_wait, f"tenant:{tenant.name}").observe(out.queue_s)
        m.child(m.queue_wait, f"account:{tenant.account}").observe(out.queue_s)
    if out.first_byte_s is not None:
        m.child(m.ttft, label).observe(out.first_byte_s)
    usage = final_usage(out, call.messages) if call else None
    if call is None or usage is None:
        return
    total = usage.prompt_tokens + usage.completion_tokens
    m.child(m.tokens, tenant.name, label, "prompt").inc(usage.prompt_tokens)
    m.child(m.tokens, tenant.name, label, "completion").inc(usage.completion_tokens)
    if usage.estimated:
        m.child(m.estimated_tokens, label).inc(total)
    usd = spend_usd(runtime.settings.models.get(call.model), usage)
    if usd is None:
        m.child(m.unpriced_tokens, label).inc(total)
    else:
        m.child(m.spend, tenant.name, label).inc(usd)
    store = runtime.usage
    try:
        await store.add(tenant.name, label, usage, usd)
    except Exception as exc:  # the request is done; losing a usage row must not fail it
        store.failures += 1
        if store.failures == 1 or store.failures % 1000 == 0:
            logger.warning(
                "usage store unavailable (%s): %d usage record(s) lost so far",
                type(exc).__name__,
                store.failures,
            )

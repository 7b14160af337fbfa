"""After a chat completion: its tokens and spend, into the metrics and the usage store.

Upstream's usage block is the truth. A stream that ended before it (client gone, upstream cut)
still used tokens that W&B bills: those are estimated, one token per relayed content chunk (W&B
streams a token a chunk) and about four prompt characters a token, and marked in
`gateway_estimated_tokens_total`.
"""

from __future__ import annotations

import logging
from typing import Any

from gateway.config import Settings
from gateway.metrics import Metrics
from gateway.proxy import Outcome
from gateway.usage import Usage, UsageStore, estimate_prompt_tokens, spend_usd

logger = logging.getLogger(__name__)


def final_usage(out: Outcome, messages: Any) -> Usage | None:
    if out.usage is not None:
        return out.usage
    if out.meter is not None and out.meter.content_chunks:
        return Usage(estimate_prompt_tokens(messages), out.meter.content_chunks, estimated=True)
    return None


async def account(
    settings: Settings,
    metrics: Metrics,
    store: UsageStore,
    tenant: str,
    model: str,
    label: str,
    usage: Usage,
) -> None:
    metrics.tokens.labels(tenant, label, "prompt").inc(usage.prompt_tokens)
    metrics.tokens.labels(tenant, label, "completion").inc(usage.completion_tokens)
    if usage.estimated:
        metrics.estimated_tokens.labels(label).inc(usage.prompt_tokens + usage.completion_tokens)
    usd = spend_usd(settings.models.get(model), usage)
    if usd is None:
        metrics.unpriced_tokens.labels(label).inc(usage.prompt_tokens + usage.completion_tokens)
    else:
        metrics.spend.labels(tenant, label).inc(usd)
    try:
        await store.add(tenant, label, usage, usd)
    except Exception as exc:  # the request is done; losing a usage row must not fail it
        store.failures += 1
        if store.failures == 1 or store.failures % 1000 == 0:
            logger.warning(
                "usage store unavailable (%s): %d usage record(s) lost so far",
                type(exc).__name__,
                store.failures,
            )

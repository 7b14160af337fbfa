"""The objects one running app holds, made in the lifespan and closed there."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from gateway.catalog import Catalog
from gateway.config import Settings
from gateway.limits import Limiter, MemoryLimiter
from gateway.metrics import LiveState, Metrics
from gateway.proxy import Proxy
from gateway.upstream import UpstreamClient
from gateway.usage import MemoryUsageStore, UsageStore

logger = logging.getLogger(__name__)


def make_limiter(settings: Settings) -> Limiter:
    if settings.limiter.backend == "redis":
        from gateway.limits.redis import RedisLimiter

        return RedisLimiter(settings.limiter)
    return MemoryLimiter()


@dataclass
class Runtime:
    settings: Settings
    client: UpstreamClient
    limiter: Limiter
    catalog: Catalog
    metrics: Metrics
    proxy: Proxy
    usage: UsageStore

    @classmethod
    async def start(cls, settings: Settings) -> Runtime:
        client = UpstreamClient.create(settings.upstream)
        limiter = make_limiter(settings)
        await limiter.start()
        usage = MemoryUsageStore()
        budgets = {
            t.name: t.monthly_budget_usd
            for t in settings.tenants.values()
            if t.monthly_budget_usd is not None
        }
        metrics = Metrics(
            LiveState(
                pools=limiter.pools,
                degraded=lambda: bool(getattr(limiter, "degraded", False)),
                budgets=lambda: budgets,
                month_spend=lambda: usage.last_seen,
            )
        )
        logger.info(
            "gateway ready: %d account(s), %d tenant(s), %d priced model(s), limiter %s, "
            "upstream %s",
            len(settings.accounts),
            len(settings.tenants),
            len(settings.models),
            settings.limiter.backend,
            settings.upstream.base_url,
        )
        return cls(
            settings=settings,
            client=client,
            limiter=limiter,
            catalog=Catalog(settings, client),
            metrics=metrics,
            proxy=Proxy(client, limiter, metrics),
            usage=usage,
        )

    async def close(self) -> None:
        await self.usage.close()
        await self.limiter.close()
        await self.client.close()

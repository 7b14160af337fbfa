"""The objects one running app holds, made in the lifespan and closed there, and the parts of
them that a config reload may change (tenants, keys, limits, prices, aliases)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from gateway.accounting import Accounting
from gateway.admission import Admission
from gateway.budget import Budgets
from gateway.catalog import Catalog
from gateway.chat_body import BodyReader
from gateway.config import Settings
from gateway.key_service import Keys, make_key_store
from gateway.limits import Limiter, MemoryLimiter
from gateway.metrics import LiveState, Metrics
from gateway.proxy import Proxy
from gateway.recent import Recent
from gateway.response_store import MemoryResponseStore, RedisResponseStore, ResponseStore
from gateway.upstream import UpstreamClient
from gateway.usage import MemoryUsageStore, UsageStore

if TYPE_CHECKING:
    from gateway.tracing.spans import Tracing

logger = logging.getLogger(__name__)


def make_limiter(settings: Settings) -> Limiter:
    if settings.limiter.backend == "redis":
        from gateway.limits.redis import RedisLimiter

        return RedisLimiter(settings.limiter)
    return MemoryLimiter()


def make_response_store(settings: Settings) -> ResponseStore:
    """Stored responses live where usage lives: Redis when configured, else this process."""
    if settings.limiter.backend == "redis":
        from gateway.redis_client import connect

        return RedisResponseStore(*connect(settings.limiter), settings.limiter.key_prefix)
    return MemoryResponseStore()


def make_usage_store(settings: Settings) -> UsageStore:
    """Usage lives where the limiter's state lives: Redis when configured, else this process."""
    if settings.limiter.backend == "redis":
        from gateway.redis_client import connect
        from gateway.usage_redis import RedisUsageStore

        return RedisUsageStore(*connect(settings.limiter), settings.limiter.key_prefix)
    return MemoryUsageStore()


def make_tracing(settings: Settings, metrics: Metrics, reader: BodyReader) -> Tracing | None:
    """Spans when `tracing` has somewhere to send them; OpenTelemetry is imported only then."""
    if not settings.tracing.url:
        return None
    from gateway.tracing.spans import Tracing

    def dropped(reason: str, spans: int) -> None:
        metrics.child(metrics.trace_spans_dropped, reason).inc(spans)

    return Tracing(settings, dropped, reader)


class Runtime:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.client = UpstreamClient.create(settings.upstream)
        self.limiter = make_limiter(settings)
        self.usage = make_usage_store(settings)
        self.catalog = Catalog(settings, self.client)
        self.metrics = Metrics(
            LiveState(
                pools=self.limiter.pools,
                degraded=lambda: bool(getattr(self.limiter, "degraded", False)),
                budgets=self._budgets,
                month_spend=lambda: self.usage.last_seen,
            )
        )
        self.budgets = Budgets(self.usage)
        self.accounting = Accounting(self.metrics, self.usage)
        self.proxy = Proxy(self.client, self.limiter, self.metrics, self.budgets, self.accounting)
        self.admission = Admission(settings.server.max_buffered_body_bytes)
        self.body_reader = BodyReader()
        self.keys = Keys(make_key_store(settings), settings)
        self.responses = make_response_store(settings)
        self.tracing = make_tracing(settings, self.metrics, self.body_reader)
        self.recent = Recent()  # the last requests, for the console (no I/O)

    @classmethod
    async def start(cls, settings: Settings) -> Runtime:
        runtime = cls(settings)
        await runtime.limiter.start()
        await runtime.keys.start()
        logger.info(
            "gateway ready: %d account(s), %d tenant(s), %d priced model(s), limiter %s, "
            "upstream %s",
            len(settings.accounts),
            len(settings.tenants),
            len(settings.models),
            settings.limiter.backend,
            settings.upstream.base_url,
        )
        return runtime

    def _budgets(self) -> dict[str, float]:
        return {
            t.name: t.monthly_budget_usd
            for t in self.settings.tenants.values()
            if t.monthly_budget_usd is not None
        }

    def apply(self, new: Settings) -> None:
        """Apply what can change live of a config read again (`lifecycle` reads it).

        Requests in flight keep the tenant and account they started with.
        """
        old = self.settings
        fixed = [
            name
            for name in ("upstream", "limiter", "tracing")
            if getattr(new, name) != getattr(old, name)
        ]
        server = old.server.model_copy(update={"admin_keys": new.server.admin_keys})
        if server != new.server:
            fixed.append("server")
        if fixed:
            logger.warning(
                "config reload: changes to %s take effect only after a restart", ", ".join(fixed)
            )
        new = new.model_copy(
            update={
                "upstream": old.upstream,
                "limiter": old.limiter,
                "tracing": old.tracing,
                "server": server,
            }
        )
        self.settings = new
        self.catalog.reconfigure(new)
        self.limiter.reconfigure(new.accounts, new.tenants)
        self.keys.reconfigure(new)
        keys = sum(len(t.key_hashes) for t in new.tenants.values())
        logger.info(
            "config reloaded from %s: %d tenant(s), %d key(s), %d model(s)",
            new.source,
            len(new.tenants),
            keys,
            len(new.models),
        )

    async def close(self) -> None:
        if self.tracing is not None:
            await self.tracing.close()
        self.body_reader.close()
        await self.keys.close()
        await self.responses.close()
        await self.usage.close()
        await self.limiter.close()
        await self.client.close()

"""What models exist: upstream's `/v1/models` (cached briefly), the tenant's allow-list, aliases.

Upstream is the only truth about what is offered (W&B retires models); the config adds prices
and alias names. `label()` keeps metric labels bounded: a name that is neither configured nor
listed upstream is counted as `other`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import orjson

from gateway.config import Account, Settings, Tenant
from gateway.errors import GatewayError, ModelNotFound, UpstreamConnectError
from gateway.upstream import WIRE_ERRORS, UpstreamClient, classify, wire_failure

logger = logging.getLogger(__name__)

OTHER = "other"


class Catalog:
    def __init__(self, settings: Settings, client: UpstreamClient) -> None:
        self.settings = settings
        self._client = client
        self._cache: dict[str, tuple[float, list[dict[str, Any]]]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._seen: set[str] = set(settings.models)

    def reconfigure(self, settings: Settings) -> None:
        self.settings = settings
        self._seen.update(settings.models)

    def label(self, model: str) -> str:
        return model if model in self._seen else OTHER

    async def upstream_models(self, account: Account, project: str) -> list[dict[str, Any]]:
        """Upstream's list for this account, from cache while fresh; stale beats an error."""
        cached = self._cache.get(account.name)
        if cached and cached[0] > time.monotonic():
            return cached[1]
        lock = self._locks.setdefault(account.name, asyncio.Lock())
        async with lock:
            cached = self._cache.get(account.name)
            if cached and cached[0] > time.monotonic():
                return cached[1]
            try:
                models = await self._fetch(account, project)
            except GatewayError:
                if cached:
                    logger.warning("upstream /models failed; serving the cached list")
                    return cached[1]
                raise
            ttl = self.settings.upstream.models_cache_ttl_s
            self._cache[account.name] = (time.monotonic() + ttl, models)
            self._seen.update(str(m.get("id")) for m in models)
            return models

    async def _fetch(self, account: Account, project: str) -> list[dict[str, Any]]:
        headers = {"Authorization": f"Bearer {account.api_key}", "OpenAI-Project": project}
        try:
            async with self._client.session.get(
                self._client.url("/models"), headers=headers, allow_redirects=False
            ) as resp:
                body = await resp.read()
                status = resp.status
        except WIRE_ERRORS as exc:  # not retried: the cache covers it
            failure = wire_failure(exc, "model list", self._client.settings.read_timeout_s).error
            assert failure is not None  # a wire failure always names one
            raise failure from None
        if status == 200:
            data = orjson.loads(body).get("data", [])
            return [m for m in data if isinstance(m, dict) and isinstance(m.get("id"), str)]
        verdict = classify(status, body, account, project)
        raise verdict.error or UpstreamConnectError(f"W&B answered the model list with {status}")

    async def list_for(self, tenant: Tenant) -> list[dict[str, Any]]:
        """Upstream's models narrowed to the tenant's allow-list, plus the aliases of those."""
        account = self.settings.accounts[tenant.account]
        upstream = await self.upstream_models(account, tenant.project)
        allowed = [m for m in upstream if self.allowed(tenant, m["id"])]
        listed = {m["id"]: m for m in allowed}
        aliases = [
            {**listed[target], "id": alias, "root": target}
            for alias, target in self.settings.aliases.items()
            if target in listed
        ]
        return allowed + aliases

    async def find(self, tenant: Tenant, name: str) -> dict[str, Any]:
        for model in await self.list_for(tenant):
            if model["id"] == name:
                return model
        raise ModelNotFound(name)

    @staticmethod
    def allowed(tenant: Tenant, model: str) -> bool:
        return tenant.models is None or model in tenant.models

"""What models exist: upstream's `/v1/models` (cached briefly), the tenant's allow-list, aliases.

Upstream is the only truth about what is offered (W&B retires models); the config adds prices
and alias names. `label()` keeps metric labels bounded: a name that is neither configured nor
listed upstream is counted as `other`.

Upstream's list is fetched once at a time per account, within `upstream.models_timeout_s`, and
every request that needs it meanwhile waits for that one fetch, no longer. When it fails or
times out, the list from before (if any) is served for another `models_cache_ttl_s`: a hung W&B
costs /v1/models one bounded wait per ttl, not 600 s per request behind a lock.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import orjson

from gateway.config import Account, Settings, Tenant
from gateway.errors import GatewayError, ModelNotFound, UpstreamConnectError, UpstreamTimeout
from gateway.upstream import WIRE_ERRORS, UpstreamClient, classify, wire_failure

logger = logging.getLogger(__name__)

OTHER = "other"


class Catalog:
    def __init__(self, settings: Settings, client: UpstreamClient) -> None:
        self.settings = settings
        self._client = client
        self._cache: dict[str, tuple[float, list[dict[str, Any]]]] = {}
        self._fetches: dict[str, asyncio.Future[list[dict[str, Any]]]] = {}
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
        fetch = self._fetches.get(account.name)
        if fetch is None:  # the first to find the list stale fetches it, for everyone
            fetch = asyncio.ensure_future(self._refresh(account, project))
            self._fetches[account.name] = fetch
            fetch.add_done_callback(lambda done: self._fetched(account.name, done))
        # Shielded: a caller that goes away does not cancel the fetch the others wait for.
        return await asyncio.shield(fetch)

    def _fetched(self, name: str, fetch: asyncio.Future[list[dict[str, Any]]]) -> None:
        if self._fetches.get(name) is fetch:
            del self._fetches[name]
        if not fetch.cancelled():
            fetch.exception()  # seen here, so a fetch whose callers all left is not reported

    async def _refresh(self, account: Account, project: str) -> list[dict[str, Any]]:
        """Fetch the list within models_timeout_s and cache it; else the list from before."""
        cached = self._cache.get(account.name)
        timeout_s = self.settings.upstream.models_timeout_s
        try:
            async with asyncio.timeout(timeout_s):
                models = await self._fetch(account, project)
        except (GatewayError, TimeoutError) as exc:
            error = (
                exc
                if isinstance(exc, GatewayError)
                else UpstreamTimeout(
                    f"W&B sent no model list within upstream.models_timeout_s ({timeout_s:g}s)"
                )
            )
            if not cached:
                raise error from None
            logger.warning("upstream /models failed (%s); serving the cached list", error.code)
            models = cached[1]
        else:
            self._seen.update(str(m.get("id")) for m in models)
        ttl = self.settings.upstream.models_cache_ttl_s
        self._cache[account.name] = (time.monotonic() + ttl, models)
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

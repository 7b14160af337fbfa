"""Usage for callers (`GET /v1/usage`, a tenant's own) and admins (`GET /admin/usage`, all)."""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter, Query

from gateway.config import Tenant
from gateway.errors import BadRequest
from gateway.limits import PoolState
from gateway.routers.deps import RuntimeDep, TenantDep
from gateway.routers.schemas import AdminUsage, OwnUsage, errors
from gateway.runtime import Runtime
from gateway.usage import month, usage_by_key, usage_by_model

router = APIRouter(tags=["usage"], responses=errors(400, 401))

_MONTH = re.compile(r"[0-9]{4}-(0[1-9]|1[0-2])")
MonthQuery = Annotated[
    str | None,
    Query(description="A month as YYYY-MM (UTC); this month when left out"),
]


def _month(asked: str | None) -> str:
    if asked is None:
        return month()
    if not _MONTH.fullmatch(asked):
        raise BadRequest("`month` must be a month as YYYY-MM, e.g. 2026-01.", param="month")
    return asked


def _pool(pools: dict[str, PoolState], name: str, limit: int) -> dict[str, int]:
    pool = pools.get(name)
    if pool is None:
        return {"limit": limit, "inflight": 0, "queued": 0}
    return {"limit": pool.limit, "inflight": pool.inflight, "queued": pool.queued}


async def tenant_usage(
    runtime: Runtime, tenant: Tenant, pools: dict[str, PoolState], of: str
) -> dict[str, Any]:
    row = await runtime.usage.row(tenant.name, of)
    models = usage_by_model(row)
    spent = round(sum(m["spend_usd"] for m in models.values()), 10)
    budget = tenant.monthly_budget_usd
    return {
        "tenant": tenant.name,
        "month": of,
        "spend_usd": spent,
        "budget_usd": budget,
        "remaining_usd": (
            None if budget is None or of != month() else round(max(budget - spent, 0.0), 10)
        ),
        "models": models,
        "keys": usage_by_key(row),
        "concurrency": _pool(pools, f"tenant:{tenant.name}", tenant.max_concurrency),
    }


@router.get("/v1/usage", response_model=OwnUsage)
async def own_usage(
    runtime: RuntimeDep, tenant: TenantDep, month: MonthQuery = None
) -> dict[str, Any]:
    """The tenant's month (this one, or `?month=YYYY-MM`): spend and tokens by model, budget
    and what remains of it, concurrency."""
    pools = {p.name: p for p in runtime.limiter.pools()}
    return {"object": "usage", **await tenant_usage(runtime, tenant, pools, _month(month))}


@router.get("/admin/usage", response_model=AdminUsage, responses=errors(403))
async def all_usage(runtime: RuntimeDep, month: MonthQuery = None) -> dict[str, Any]:
    """The same for every tenant, and every account's pool (admin keys only)."""
    pools = {p.name: p for p in runtime.limiter.pools()}
    settings = runtime.settings
    of = _month(month)
    return {
        "object": "usage.admin",
        "month": of,
        "tenants": {
            name: await tenant_usage(runtime, tenant, pools, of)
            for name, tenant in settings.tenants.items()
        },
        "accounts": {
            name: {
                **_pool(pools, f"account:{name}", account.max_concurrency),
                "max_concurrency": account.max_concurrency,
            }
            for name, account in settings.accounts.items()
        },
    }

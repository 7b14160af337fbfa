"""This replica's recent chat requests (`gateway.recent`): every tenant's for admins, a tenant's
own for its keys.

    GET /admin/requests[?limit=N&tenant=NAME]   admin key: the newest N (default 100)
    GET /v1/requests[?limit=N]                  tenant key: its own newest N (at most 100 held)
    GET /v1/requests/{id}                       tenant key: one of its own, by request id

Each list comes with the error counts by reason over the last minutes, of the same tenants.
The ring is per process: behind several replicas each answers for what it served.
"""

from __future__ import annotations

import itertools
from typing import Annotated, Any

from fastapi import APIRouter, Query

from gateway.errors import BadRequest, NotFound
from gateway.recent import SIZE, TENANT_SIZE, Recent
from gateway.routers.deps import RuntimeDep, TenantDep
from gateway.routers.schemas import RecentList, RecentRequest, errors

router = APIRouter(tags=["requests"], responses=errors(400, 401))

DEFAULT_LIMIT = 100

LimitQuery = Annotated[
    str | None,
    Query(
        description=f"How many, newest first: 1 to {SIZE} (default {DEFAULT_LIMIT})",
        # read as text, to answer a bad one with the usual 400 envelope; documented as it is
        json_schema_extra={
            "anyOf": [{"type": "integer", "minimum": 1, "maximum": SIZE}, {"type": "null"}]
        },
    ),
]


def _limit(asked: str | None) -> int:
    if asked is None:
        return DEFAULT_LIMIT
    if not (asked.isascii() and asked.isdigit() and 1 <= int(asked) <= SIZE):
        raise BadRequest(f"`limit` must be a whole number from 1 to {SIZE}.", param="limit")
    return int(asked)


def _listed(recent: Recent, tenant: str | None, limit: int) -> dict[str, Any]:
    data = [entry.as_json() for entry in itertools.islice(recent.newest(tenant), limit)]
    return {
        "object": "list",
        "data": data,
        "errors": {"window_s": recent.window_minutes * 60, "tenants": recent.errors(tenant)},
    }


@router.get("/admin/requests", response_model=RecentList, responses=errors(403))
async def all_requests(
    runtime: RuntimeDep,
    limit: LimitQuery = None,
    tenant: Annotated[str | None, Query(description="only this tenant's requests")] = None,
) -> dict[str, Any]:
    """This replica's newest chat requests, every tenant's (admin keys only), and their error
    counts by reason over the last minutes."""
    count = _limit(limit)
    recent = runtime.recent
    known = runtime.settings.tenants
    if tenant is not None and tenant not in known and tenant not in recent.tenants():
        names = ", ".join(sorted(known))
        raise BadRequest(f"Unknown tenant {tenant[:64]!r} (known: {names}).", param="tenant")
    return _listed(recent, tenant, count)


@router.get("/v1/requests", response_model=RecentList)
async def own_requests(
    runtime: RuntimeDep, tenant: TenantDep, limit: LimitQuery = None
) -> dict[str, Any]:
    """The tenant's newest chat requests on this replica, and its error counts."""
    return _listed(runtime.recent, tenant.name, _limit(limit))


@router.get("/v1/requests/{request_id}", response_model=RecentRequest, responses=errors(404))
async def own_request(request_id: str, runtime: RuntimeDep, tenant: TenantDep) -> dict[str, Any]:
    """One of the tenant's recent requests by its `x-request-id` (the newest, if an id was
    used twice); another tenant's, or one this replica no longer holds, is a 404."""
    entry = runtime.recent.find(tenant.name, request_id)
    if entry is None:
        raise NotFound(
            "No recent request of yours with this id on this gateway replica: each replica "
            f"keeps the last {TENANT_SIZE} requests of each tenant, in memory.",
            param="request_id",
            code="request_not_found",
        )
    return entry.as_json()

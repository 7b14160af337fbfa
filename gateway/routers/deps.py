"""What the FastAPI routes depend on, as `Depends`: the running app's parts, and the caller's
tenant as auth found it (the routes behind these are never reached without one). They are
`async def` so that FastAPI calls them in place; a plain `def` would cost a hop to its thread pool
per request."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from gateway.config import Tenant
from gateway.lifecycle import Lifecycle
from gateway.record import RequestRecord
from gateway.runtime import Runtime


async def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


async def _lifecycle(request: Request) -> Lifecycle:
    lifecycle: Lifecycle = request.app.state.lifecycle
    return lifecycle


async def _tenant(request: Request) -> Tenant:
    record: RequestRecord = request.state.record
    assert record.tenant is not None  # auth answers 401 before any tenant route
    return record.tenant


RuntimeDep = Annotated[Runtime, Depends(_runtime)]
LifecycleDep = Annotated[Lifecycle, Depends(_lifecycle)]
TenantDep = Annotated[Tenant, Depends(_tenant)]

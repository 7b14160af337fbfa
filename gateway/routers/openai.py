"""The OpenAI-shaped routes other than chat: the model list and one model."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from gateway.routers.deps import RuntimeDep, TenantDep
from gateway.routers.schemas import ModelList, ModelObject, errors

router = APIRouter(tags=["openai"], responses=errors(401, 502, 503, 504))


@router.get("/v1/models", response_model=ModelList, response_model_exclude_unset=True)
async def list_models(runtime: RuntimeDep, tenant: TenantDep) -> dict[str, Any]:
    """Upstream's models (cached briefly), narrowed to the tenant's allow-list, plus aliases."""
    return {"object": "list", "data": await runtime.catalog.list_for(tenant)}


@router.get(
    "/v1/models/{model:path}",
    response_model=ModelObject,
    response_model_exclude_unset=True,
    responses=errors(404),
)
async def get_model(model: str, runtime: RuntimeDep, tenant: TenantDep) -> dict[str, Any]:
    """One of those (model ids contain `/`)."""
    return await runtime.catalog.find(tenant, model)

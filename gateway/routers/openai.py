"""The OpenAI-shaped routes other than chat: the model list and one model."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from gateway.runtime import Runtime

router = APIRouter()


@router.get("/v1/models")
async def list_models(request: Request) -> dict[str, Any]:
    runtime: Runtime = request.app.state.runtime
    return {"object": "list", "data": await runtime.catalog.list_for(request.state.tenant)}


@router.get("/v1/models/{model:path}")
async def get_model(model: str, request: Request) -> dict[str, Any]:
    runtime: Runtime = request.app.state.runtime
    return await runtime.catalog.find(request.state.tenant, model)

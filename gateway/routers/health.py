"""Probes and the Prometheus scrape: the public paths (see auth.PUBLIC_PATHS)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from gateway.runtime import Runtime

router = APIRouter()


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    ok, detail = await runtime.limiter.ready()
    draining = request.app.state.lifecycle.draining
    body: dict[str, Any] = {
        "status": "draining" if draining else "ready" if ok else "unready",
        "config": runtime.settings.source,
        "limiter": {"backend": runtime.settings.limiter.backend, "detail": detail},
    }
    return JSONResponse(body, status_code=200 if ok and not draining else 503)


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    return Response(runtime.metrics.render(), media_type=CONTENT_TYPE_LATEST)

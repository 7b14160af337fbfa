"""Probes and the Prometheus scrape: the public paths (see auth.PUBLIC_PATHS)."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from gateway.routers.deps import LifecycleDep, RuntimeDep
from gateway.routers.schemas import Health, LimiterState, Readiness

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
async def healthz() -> dict[str, str]:
    """Alive: answers without credentials."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "unready, or draining"}},
)
async def readyz(runtime: RuntimeDep, lifecycle: LifecycleDep) -> Response:
    """Config loaded and the limiter ready (200), else 503, also while draining."""
    ok, detail = await runtime.limiter.ready()
    draining = lifecycle.draining
    body = Readiness(
        status="draining" if draining else "ready" if ok else "unready",
        config=runtime.settings.source,
        limiter=LimiterState(backend=runtime.settings.limiter.backend, detail=detail),
    )
    return JSONResponse(body.model_dump(), status_code=200 if ok and not draining else 503)


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text"}},
)
async def metrics(runtime: RuntimeDep) -> Response:
    """Every metric the gateway exports (see the README's Metrics section)."""
    return Response(runtime.metrics.render(), media_type=CONTENT_TYPE_LATEST)

"""create_app(settings): the ASGI app, its lifespan, middleware order and routes.

Nothing happens at import: the upstream session and the limiter are made in the lifespan and
closed there. Every error, the framework's own 404/405/422 included, leaves in OpenAI's envelope.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway import logs
from gateway.auth import AuthMiddleware
from gateway.config import Settings
from gateway.errors import BadRequest, GatewayError, MethodNotAllowed, NotFound
from gateway.lifecycle import Lifecycle, install_sighup, watch_config
from gateway.middleware import RequestContextMiddleware
from gateway.responses import send_error
from gateway.routers import health, openai, usage
from gateway.routers.chat import ChatCompletions
from gateway.runtime import Runtime

logger = logging.getLogger(__name__)


def _tune_gc() -> None:
    """p99 spikes come from the cyclic garbage collector walking every object the app made at
    start-up (measured: 19 ms -> 3.4 ms p99 at 16 connections). Freeze those out of its reach,
    and collect the young generation less often: a request makes few cycles."""
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, gen1, gen2)


GC_GEN0_THRESHOLD = 50_000
GC_SWEEP_S = 60.0


async def _sweep_cycles() -> None:
    """With the thresholds above, full collections are rare, and aiohttp leaves a reference
    cycle behind each upstream connection that closes (measured: RSS +2.4 MiB over a million
    requests, all of it collectable). A full collection once a minute keeps that flat; with the
    start-up objects frozen it takes about 5 ms."""
    while True:
        await asyncio.sleep(GC_SWEEP_S)
        gc.collect()


def _render(exc: GatewayError) -> Response:
    return Response(exc.body(), exc.status, exc.headers, media_type="application/json")


async def _gateway_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, GatewayError)
    request.state.error_reason = exc.reason
    return _render(exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    where = f"{request.method} {request.url.path}"
    if exc.status_code == 405:
        return _render(MethodNotAllowed(f"Method not allowed ({where})."))
    if exc.status_code == 404:
        return _render(NotFound(f"Invalid URL ({where})."))
    error = GatewayError(str(exc.detail))
    error.status = exc.status_code
    return _render(error)


async def _validation_error(request: Request, exc: Exception) -> Response:
    return _render(BadRequest("Invalid request."))


async def _unexpected(request: Request, exc: Exception) -> Response:
    logger.exception("unhandled error in %s %s", request.method, request.url.path)
    rid = getattr(request.state, "request_id", "-")
    return _render(GatewayError(f"The gateway had an internal error (request id {rid})."))


def create_app(settings: Settings, lifecycle: Lifecycle | None = None) -> Gateway:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = await Runtime.start(settings)
        app.state.runtime = runtime
        app.state.lifecycle.on_grace_over.append(runtime.proxy.cut_streams)
        _tune_gc()
        sweeper = asyncio.create_task(_sweep_cycles())
        wake = asyncio.Event()
        install_sighup(wake)
        watcher = None
        if settings.files:
            poll_s = settings.server.reload_poll_s
            watcher = asyncio.create_task(watch_config(runtime, poll_s, wake))
        try:
            yield
        finally:
            for task in (watcher, sweeper):
                if task is not None:
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
            await runtime.close()
            logs.access.flush()

    app = FastAPI(
        title="inference-gateway",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.lifecycle = lifecycle or Lifecycle()
    app.router.routes.append(
        Route("/v1/chat/completions", ChatCompletions(), methods=["POST"], include_in_schema=False)
    )
    app.include_router(openai.router)
    app.include_router(health.router)
    app.include_router(usage.router)

    app.add_exception_handler(GatewayError, _gateway_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected)

    # Order matters; the last added runs first. Request context is outermost so that even a
    # 401 carries x-request-id and gets its access-log line; auth runs before any route.
    app.add_middleware(AuthMiddleware)
    app.add_middleware(RequestContextMiddleware, log=settings.server.access_log)
    return Gateway(app, log=settings.server.access_log)


class Gateway:
    """The ASGI app. `POST /v1/chat/completions`, the hot path, goes straight to its handler
    through the same two middlewares, in the same order, skipping FastAPI's layers (they cost
    about as much as the rest of the gateway's work); everything else goes through FastAPI."""

    def __init__(self, app: FastAPI, *, log: bool) -> None:
        self.app = app
        self.state = app.state
        self._chat = RequestContextMiddleware(AuthMiddleware(_Guarded(ChatCompletions())), log=log)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["path"] == "/v1/chat/completions"
            and scope["method"] == "POST"
        ):
            scope["app"] = self.app
            await self._chat(scope, receive, send)
        else:
            await self.app(scope, receive, send)


class _Guarded:
    """What FastAPI's error middleware would do: a bug becomes a 500 envelope, not a trace."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.app(scope, receive, send)
        except Exception:
            rid = scope.get("state", {}).get("request_id", "-")
            logger.exception("unhandled error in %s %s", scope["method"], scope["path"])
            with contextlib.suppress(Exception):  # fails if the response had started
                await send_error(
                    send, GatewayError(f"The gateway had an internal error (request id {rid}).")
                )


def app_from_env() -> Gateway:
    """The factory `serve --workers N` hands uvicorn: each worker loads $GATEWAY_CONFIG itself."""
    from gateway import logs
    from gateway.config import config_path, load_settings

    logs.setup()
    return create_app(load_settings(config_path(None)))

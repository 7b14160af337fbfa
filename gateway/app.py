"""create_app(settings): the ASGI app, its lifespan, its one middleware chain and its routes.

    RequestContext -> Guard -> Auth -> dispatch -+- POST /v1/chat/completions -> ChatCompletions
                                                 +- everything else           -> FastAPI routes

The chain is built once, for every path. The chat path, the hot one, is dispatched before
FastAPI's own layers (its error middlewares and router cost 12 us a request and 17 us a 20-chunk
stream, measured in-process, against about 460 us of CPU for a whole plain request); every
other path goes through FastAPI, whose OpenAPI document (`/openapi.json`) describes them all,
chat included.

Errors: a `GatewayError` is rendered by `errors.render`, wherever it is raised; the framework's
own 404/405/422 become `GatewayError`s first; a bug becomes the 500 envelope in one place,
`_internal` (logged once, with its request id, never a traceback in the body).

Nothing happens at import: the runtime (upstream session, limiter, usage store), the access
log, the GC tuning and the config watcher are made in the lifespan and undone there.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway import gc_tuning
from gateway.auth import PUBLIC_PATHS, AuthMiddleware
from gateway.config import Settings
from gateway.errors import (
    BadRequest,
    GatewayError,
    MethodNotAllowed,
    NotFound,
    RequestRefused,
    UnsupportedEncoding,
    internal_error,
    render,
)
from gateway.lifecycle import Lifecycle, reloading
from gateway.logs import AccessLog
from gateway.middleware import RequestContextMiddleware
from gateway.record import RequestRecord
from gateway.responses import send_error
from gateway.routers import chat, health, keys, openai, requests, responses, ui, usage
from gateway.runtime import Runtime

logger = logging.getLogger(__name__)


def create_app(settings: Settings, lifecycle: Lifecycle | None = None) -> Gateway:
    access = AccessLog() if settings.server.access_log else None

    @contextlib.asynccontextmanager
    async def lifespan(api: FastAPI) -> AsyncIterator[None]:
        runtime = await Runtime.start(settings)
        api.state.runtime = runtime
        api.state.lifecycle.on_grace_over.append(runtime.proxy.cut_streams)
        if access is not None:
            access.open()
        try:
            async with gc_tuning.tuned(), reloading(runtime):
                yield
        finally:
            if access is not None:
                access.close()
            api.state.lifecycle.on_grace_over.remove(runtime.proxy.cut_streams)
            await runtime.close()

    api = FastAPI(
        title="inference-gateway",
        summary="OpenAI-compatible gateway in front of W&B Inference",
        version="0.1.0",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json",
        redirect_slashes=False,  # `/v1/models/` is a 404, never a redirect built from `Host`
    )
    api.state.lifecycle = lifecycle or Lifecycle()
    api.include_router(openai.router)
    api.include_router(usage.router)
    api.include_router(keys.router)
    api.include_router(responses.router)
    api.include_router(health.router)
    api.include_router(requests.router)
    api.include_router(ui.router)
    api.add_exception_handler(GatewayError, _gateway_error)
    api.add_exception_handler(StarletteHTTPException, _http_error)
    api.add_exception_handler(RequestValidationError, _validation_error)
    api.add_exception_handler(Exception, _unexpected)
    api.openapi = _openapi(api)  # type: ignore[method-assign]
    return Gateway(api, access)


class Gateway:
    """The ASGI app uvicorn serves: the chain below in front of the dispatch."""

    def __init__(self, api: FastAPI, access: AccessLog | None) -> None:
        self.api = api
        self.state = api.state
        # Outermost first. Request context wraps everything, so that even a 401 carries
        # x-request-id and gets its access-log line; the guard turns any bug below it into the
        # 500 envelope; auth runs before any route.
        self._app = RequestContextMiddleware(_Guard(AuthMiddleware(_Dispatch(api))), access=access)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan (and websockets, which have no route)
            await self.api(scope, receive, send)
            return
        scope["app"] = self.api
        await self._app(scope, receive, send)


class _Dispatch:
    """The chat and responses paths to their handlers (any other method on them: 405), the
    rest to FastAPI; a compressed request body to no one (415)."""

    def __init__(self, api: FastAPI) -> None:
        self._api = api
        self._handlers: dict[str, ASGIApp] = {
            chat.PATH: chat.ChatCompletions(),
            responses.PATH: responses.ResponsesCreate(),
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        error = _encoded(scope)
        handler = self._handlers.get(scope["path"])
        if error is None and handler is None:
            await self._api(scope, receive, send)
        elif error is None and scope["method"] == "POST":
            assert handler is not None
            await handler(scope, receive, send)
        else:
            error = error or _method_not_allowed(scope, ["POST"])
            scope["state"]["record"].refused(error)
            await send_error(send, error)


def _encoded(scope: Scope) -> GatewayError | None:
    """A body in a Content-Encoding the gateway does not decode: refused, never passed on as
    if it were plain (W&B would fail to read it, and the gateway would blame W&B)."""
    for name, value in scope["headers"]:
        if name == b"content-encoding" and value.strip().lower() not in (b"", b"identity"):
            coding = value.decode("latin-1")[:40]
            return UnsupportedEncoding(
                f"The gateway does not accept request bodies with Content-Encoding {coding!r}: "
                "send the body uncompressed."
            )
    return None


class _Guard:
    """Every exception below becomes the 500 envelope, if no response has started."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.app(scope, receive, send)
        except Exception:
            record: RequestRecord = scope["state"]["record"]
            if record.reason == GatewayError.reason:  # FastAPI answered via `_unexpected`, then
                return  # raised it again: reported and answered
            error = _internal(scope)
            if record.status == 0:
                await send_error(send, error)


def _internal(scope: Scope) -> GatewayError:
    """The 500 path: log the bug with its request id, answer with the id and nothing else."""
    record: RequestRecord = scope["state"]["record"]
    logger.exception(
        "unhandled error in %s %s (request id %s)",
        scope["method"],
        scope["path"],
        record.request_id,
    )
    error = internal_error(record.request_id)
    record.refused(error)
    return error


def _response(request: Request, error: GatewayError) -> Response:
    request.state.record.refused(error)
    status, headers, body = render(error)
    response = Response(body, status)
    response.raw_headers = headers
    return response


async def _gateway_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, GatewayError)
    return _response(request, exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 405:
        allowed = (exc.headers or {}).get("Allow", "").split(", ")
        return _response(request, _method_not_allowed(request.scope, allowed))
    if exc.status_code == 404:
        return _response(request, NotFound(_invalid_url(request.method, request.url.path)))
    if 400 <= exc.status_code < 500:
        return _response(request, RequestRefused(str(exc.detail), exc.status_code))
    return _response(request, GatewayError(str(exc.detail)))


async def _validation_error(request: Request, exc: Exception) -> Response:
    return _response(request, BadRequest("Invalid request."))


async def _unexpected(request: Request, exc: Exception) -> Response:
    return _response(request, _internal(request.scope))


def _invalid_url(method: str, path: str) -> str:
    shown = f"Invalid URL ({method} {path[:200]})."
    if not path.startswith("/v1/"):
        return shown
    return (
        f"{shown} This gateway serves chat completions (POST /v1/chat/completions), responses "
        "(POST /v1/responses) and models (GET /v1/models) for W&B Inference; embeddings, "
        "completions, images, audio and OpenAI's other APIs are not offered."
    )


def _method_not_allowed(scope: Scope, allowed: list[str]) -> MethodNotAllowed:
    error = MethodNotAllowed(f"Method not allowed ({scope['method']} {scope['path']}).")
    if any(allowed):
        error.headers["allow"] = ", ".join(allowed)
    return error


def _openapi(api: FastAPI) -> Callable[[], dict[str, Any]]:
    """FastAPI's document, plus the chat path (dispatched before FastAPI sees it) and the
    bearer key every non-public path needs."""

    def build() -> dict[str, Any]:
        if api.openapi_schema is None:
            schema = get_openapi(
                title=api.title, version=api.version, summary=api.summary, routes=api.routes
            )
            schema["paths"][chat.PATH] = chat.OPENAPI
            schema["paths"][responses.PATH] = responses.OPENAPI
            schema.setdefault("components", {})["securitySchemes"] = {
                "gatewayKey": {"type": "http", "scheme": "bearer"}
            }
            for path, operations in schema["paths"].items():
                if path not in PUBLIC_PATHS:
                    for operation in operations.values():
                        operation["security"] = [{"gatewayKey": []}]
            api.openapi_schema = schema
        return api.openapi_schema

    return build


def app_from_env() -> Gateway:
    """The factory `serve --workers N` hands uvicorn: each worker loads $GATEWAY_CONFIG itself."""
    from gateway import logs
    from gateway.config import config_path, load_settings

    logs.setup()
    return create_app(load_settings(config_path(None)))

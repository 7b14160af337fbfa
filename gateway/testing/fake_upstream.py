"""Fake W&B Inference upstream: an aiohttp server that answers like the documented service.

Owns the simulation of ``https://api.inference.wandb.ai/v1`` used by end-to-end tests over real
sockets and by users trying the gateway without a W&B account: authentication (Bearer key plus
``OpenAI-Project: entity/project``), the model list, retired models (404), per-key and
per-project concurrency limits (429), the documented error table, deterministic completions
(plain JSON and SSE, reasoning text for reasoning models, tool calls and JSON answers made
from the request's schemas, usage with cached and reasoning token details), prompt prefix
caching isolated by ``cache_salt``, and a control API under ``/_fake/`` to script faults and
inspect traffic.

Every answer but the control API's carries the account-level headers W&B's edge would send
(``ACCOUNT_HEADERS``: the organisation, rate limits, a cookie, HSTS, CORS, ``alt-svc``): none of
them is a tenant's business, so a gateway must not relay them.

This module holds the routes, the checks a chat request passes in order (key and project,
body, queued fault, model, concurrency slot; then the prefix cache is asked) and the server's
lifecycle; it is also the import surface for the CLI and the tests. The rest lives beside it
in ``gateway.testing``:

- ``settings``: ``FakeSettings``, ``DEFAULT_KEY``, the model catalogue and its reasoning models;
- ``errors``: the error envelope and W&B's error table;
- ``faults``: the kinds of fault the control API queues and how each is given;
- ``state``: ``FakeState``, what one app remembers;
- ``completions``: the request parsed into a ``Call``, the token formula and the answer's body;
- ``structured``: the answer's form: the usual words, a tool call, or a JSON document;
- ``schema_values``: the value a JSON schema describes (tool arguments, JSON answers);
- ``prefix_cache``: the message prefixes seen, per ``cache_salt`` (``cached_tokens``);
- ``answer``: writing that answer over the connection (waits, cuts, SSE);
- ``control``: the ``/_fake/`` handlers.
"""

from __future__ import annotations

import json
import logging
from types import MappingProxyType
from typing import Any, Final

from aiohttp import web
from aiohttp.typedefs import Handler

from gateway.testing import control
from gateway.testing.answer import answer, dropped
from gateway.testing.completions import (
    REASONING_WORDS,
    WORDS,
    parse_call,
    prompt_tokens,
    set_cached,
)
from gateway.testing.errors import ERRORS, BadRequest, error, known_error
from gateway.testing.prefix_cache import CACHE_LIMIT
from gateway.testing.settings import (
    DEFAULT_KEY,
    MODELS_CREATED,
    FakeSettings,
    default_settings,
    model_list,
)
from gateway.testing.state import RECORD_LIMIT, STATE, FakeState

__all__ = [
    "ACCOUNT_HEADERS",
    "CACHE_LIMIT",
    "DEFAULT_KEY",
    "MODELS_CREATED",
    "REASONING_WORDS",
    "RECORD_LIMIT",
    "STATE",
    "WORDS",
    "FakeSettings",
    "FakeState",
    "build_app",
    "default_settings",
    "prompt_tokens",
    "run",
    "start",
]

logger = logging.getLogger(__name__)

ACCOUNT_HEADERS: Final = MappingProxyType(
    {
        "openai-organization": "fake-wandb-account-org",
        "openai-processing-ms": "7",
        "openai-version": "2020-10-01",
        "x-ratelimit-limit-requests": "10000",
        "x-ratelimit-remaining-requests": "9999",
        "x-ratelimit-reset-requests": "6ms",
        "x-ratelimit-limit-tokens": "2000000",
        "x-ratelimit-remaining-tokens": "1999000",
        "set-cookie": "__cf_bm=fake-account-session; path=/; HttpOnly; Secure",
        "alt-svc": 'h3=":443"; ma=86400',
        "strict-transport-security": "max-age=31536000; includeSubDomains; preload",
        "access-control-allow-origin": "*",
        "x-request-id": "fake-upstream-request-id",
    }
)


# --- checks --------------------------------------------------------------------------------


def _bearer_key(request: web.Request, settings: FakeSettings) -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token in settings.api_keys else None


def _project(request: web.Request, key: str, settings: FakeSettings) -> str | None:
    project = request.headers.get("OpenAI-Project", "")
    parts = project.split("/")
    if len(parts) != 2 or not all(parts):
        return None
    allowed = settings.api_keys[key]
    return project if allowed is None or project in allowed else None


# --- handlers ------------------------------------------------------------------------------


async def _chat(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    settings = state.settings
    state.counts["requests"] += 1
    key = _bearer_key(request, settings)
    project = _project(request, key, settings) if key is not None else None
    if key is None or project is None:
        return known_error("401")
    record: dict[str, Any] = {
        "headers": {name.lower(): value for name, value in request.headers.items()},
        "body": None,
        "status": None,
    }
    state.records.append(record)
    resp = await _checked_chat(request, state, key, project, record)
    if record["status"] is None:
        record["status"] = resp.status
    return resp


async def _checked_chat(
    request: web.Request, state: FakeState, key: str, project: str, record: dict[str, Any]
) -> web.StreamResponse:
    try:
        record["body"] = body = json.loads(await request.read())
        call = parse_call(body, state.settings)
    except ValueError:
        return error(400, "The request body is not valid JSON", "invalid_request_error", None)
    except BadRequest as exc:
        return error(400, exc.message, "invalid_request_error", None, exc.param)
    fault = state.next_fault()
    if fault is not None:
        if fault.kind in ERRORS:
            return known_error(fault.kind)
        if fault.kind == "reset" or (fault.kind == "cut" and not call.stream):
            return dropped(request, record)
        if fault.kind == "redirect":
            return web.Response(status=307, headers={"Location": str(request.url)})
        if fault.kind == "cut":
            call.cut_after = fault.params["after"]
        elif fault.kind == "delay":
            call.delay_s += fault.params["seconds"]
        elif fault.kind == "think":
            call.think_s += fault.params["seconds"]
        else:
            call.hang = True
    if call.model in state.settings.retired or call.model not in state.settings.models:
        message = f"The model `{call.model}` does not exist."
        return error(404, message, "invalid_request_error", "model_not_found", "model")
    if not state.admit(key, project):
        state.counts["rejected_429"] += 1
        return known_error("429")
    set_cached(call, state.prefix_cache.use(call.cache_salt, call.prefixes))
    try:
        return await answer(request, state, call, record)
    finally:
        state.release(key, project)


async def _models(request: web.Request) -> web.StreamResponse:
    settings = request.app[STATE].settings
    if _bearer_key(request, settings) is None:
        return known_error("401")
    return web.json_response(model_list(settings))


@web.middleware
async def _openai_404(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPNotFound:
        message = f"Unknown request URL: {request.method} {request.path}"
        return error(404, message, "invalid_request_error", "unknown_url")
    except web.HTTPMethodNotAllowed:
        message = f"Method {request.method} not allowed on {request.path}"
        return error(405, message, "invalid_request_error", "method_not_allowed")


async def _account_headers(request: web.Request, response: web.StreamResponse) -> None:
    if not request.path.startswith("/_fake/"):
        response.headers.update(ACCOUNT_HEADERS)


async def _on_shutdown(app: web.Application) -> None:
    app[STATE].closing.set()


# --- lifecycle -----------------------------------------------------------------------------


def build_app(settings: FakeSettings) -> web.Application:
    """The fake upstream as an aiohttp application with fresh state."""
    # Bodies as big as the gateway lets through (W&B takes 32 MiB too; aiohttp stops at 1 MiB).
    app = web.Application(middlewares=[_openai_404], client_max_size=64 * 1024 * 1024)
    app[STATE] = FakeState(settings)
    app.on_shutdown.append(_on_shutdown)
    app.on_response_prepare.append(_account_headers)
    app.router.add_get("/v1/models", _models)
    app.router.add_post("/v1/chat/completions", _chat)
    app.router.add_post("/_fake/faults", control.add_faults)
    app.router.add_get("/_fake/stats", control.stats)
    app.router.add_get("/_fake/requests", control.requests)
    app.router.add_post("/_fake/reset", control.reset)
    return app


async def start(settings: FakeSettings, host: str, port: int) -> web.AppRunner:
    """Start listening (port 0 picks a free one: see ``runner.addresses``); caller cleans up."""
    runner = web.AppRunner(build_app(settings))
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner


def run(settings: FakeSettings, host: str, port: int) -> None:
    """Serve until interrupted (for the CLI)."""
    keys, concurrency = len(settings.api_keys), settings.concurrency
    message = "fake W&B upstream on http://%s:%d (keys: %d, concurrency: %d)"
    logger.info(message, host, port, keys, concurrency)
    web.run_app(build_app(settings), host=host, port=port, print=None)

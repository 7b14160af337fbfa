"""Fake W&B Inference upstream: an aiohttp server that answers like the documented service.

Owns the simulation of ``https://api.inference.wandb.ai/v1`` used by end-to-end tests over real
sockets and by users trying the gateway without a W&B account: authentication (Bearer key plus
``OpenAI-Project: entity/project``), the model list, retired models (404), per-key and
per-project concurrency limits (429), the documented error table, deterministic completions
(plain JSON and SSE) and a control API under ``/_fake/`` to script faults and inspect traffic.

Deterministic answers, so tests can compute them independently:

- ``prompt_tokens`` = sum over messages of ``3 + words(content)``, ``words(s) = len(s.split())``;
  when content is a list of parts it is the words of every ``{"type": "text"}`` part's ``text``
  plus 85 per ``{"type": "image_url"}`` part; any other content counts 0.
- Tokens per choice: ``x_fake.tokens`` if given, else 8; when ``max_completion_tokens`` (or else
  ``max_tokens``) is smaller, that cap is used and ``finish_reason`` is ``"length"``, otherwise
  ``"stop"``. The text is that many words cycled from ``WORDS``, each but the last followed by a
  space: one word = one token = one streamed content chunk.
- ``n`` choices (default 1) carry the same text; ``completion_tokens = tokens * n``.

Per-request knobs ride in a vendor field the real service would ignore:
``"x_fake": {"delay_s": float, "chunk_delay_s": float, "tokens": int, "cut_after": int}``.

Control API (no auth): ``POST /_fake/faults`` queues faults, ``GET /_fake/stats``,
``GET /_fake/requests`` and ``POST /_fake/reset``. Faults of kind ``delay``, ``hang`` and ``cut``
shape the answer after the model and concurrency checks (the request is in flight meanwhile);
the other kinds answer at once. ``stats.requests`` counts every chat request, authenticated or
not; ``records`` hold those past authentication, with ``status`` 0 when no response was sent.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final

from aiohttp import web
from aiohttp.typedefs import Handler

logger = logging.getLogger(__name__)

DEFAULT_KEY: Final = "fake-wandb-key"
WORDS: Final = ("Hello", "from", "the", "fake", "W&B", "upstream", "for", "testing")
MODELS_CREATED: Final = 1_700_000_000
RECORD_LIMIT: Final = 2000
_DEFAULT_TOKENS: Final = 8
_IMAGE_TOKENS: Final = 85
_POLL_S: Final = 0.02
_HANG_MAX_S: Final = 600.0

# kind -> (status, message, type, code), messages verbatim from W&B's error table.
_QUOTA: Final = "You exceeded your current quota, please check your plan and billing details"
_CONCURRENCY: Final = "Concurrency limit reached for requests"
_REGION: Final = "Country, region, or territory not supported"
_INTERNAL: Final = "The server had an error while processing your request"
_OVERLOADED: Final = "The engine is currently overloaded, please try again later"
_ERRORS: Final = MappingProxyType(
    {
        "401": (401, "Invalid Authentication", "invalid_authentication_error", "invalid_api_key"),
        "403": (403, _REGION, "permission_error", "unsupported_country_region_territory"),
        "429": (429, _CONCURRENCY, "rate_limit_error", "concurrency_limit"),
        "quota": (429, _QUOTA, "insufficient_quota", "insufficient_quota"),
        "quota402": (402, _QUOTA, "insufficient_quota", "insufficient_quota"),
        "500": (500, _INTERNAL, "server_error", None),
        "503": (503, _OVERLOADED, "server_error", None),
    }
)
_FAULT_KINDS: Final = frozenset(_ERRORS) | {"reset", "cut", "delay", "hang"}
_COUNTS: Final = ("requests", "completed", "rejected_429", "disconnects")


@dataclass
class FakeSettings:
    """What the fake accepts and how fast it answers."""

    api_keys: dict[str, frozenset[str] | None]  # key -> allowed projects (None: any)
    concurrency: int = 8
    project_concurrency: int | None = None
    models: tuple[str, ...] = (
        "meta-llama/Llama-3.1-8B-Instruct",
        "meta-llama/Llama-3.3-70B-Instruct",
        "microsoft/Phi-4-mini-instruct",
    )
    retired: tuple[str, ...] = (
        "deepseek-ai/DeepSeek-R1-0528",
        "deepseek-ai/DeepSeek-V3-0324",
        "meta-llama/Llama-4-Scout-17B-16E-Instruct",
    )
    delay_s: float = 0.0
    chunk_delay_s: float = 0.0


def default_settings() -> FakeSettings:
    """Settings accepting ``DEFAULT_KEY`` for any project."""
    return FakeSettings(api_keys={DEFAULT_KEY: None})


@dataclass
class _Fault:
    kind: str
    remaining: int
    params: dict[str, Any]


@dataclass
class _Call:
    """One chat request, parsed: everything needed to answer it."""

    model: str
    stream: bool
    include_usage: bool
    choices: int
    tokens: int
    finish_reason: str
    prompt_tokens: int
    delay_s: float
    chunk_delay_s: float
    cut_after: int | None
    hang: bool = False


class _BadRequest(Exception):
    def __init__(self, message: str, param: str | None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


@dataclass
class FakeState:
    """Everything the fake remembers; one per app, reached through ``STATE``."""

    settings: FakeSettings
    faults: deque[_Fault] = field(default_factory=deque)
    records: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=RECORD_LIMIT))
    inflight: Counter[str] = field(default_factory=Counter)
    inflight_project: Counter[str] = field(default_factory=Counter)
    max_inflight: dict[str, int] = field(default_factory=dict)
    max_inflight_project: dict[str, int] = field(default_factory=dict)
    counts: Counter[str] = field(default_factory=Counter)  # the _COUNTS, for stats
    last_id: int = 0
    closing: asyncio.Event = field(default_factory=asyncio.Event)

    def admit(self, key: str, project: str) -> bool:
        s = self.settings
        limit_project = s.project_concurrency
        if self.inflight[key] >= s.concurrency or (
            limit_project is not None and self.inflight_project[project] >= limit_project
        ):
            return False
        self.inflight[key] += 1
        self.inflight_project[project] += 1
        self.max_inflight[key] = max(self.max_inflight.get(key, 0), self.inflight[key])
        self.max_inflight_project[project] = max(
            self.max_inflight_project.get(project, 0), self.inflight_project[project]
        )
        return True

    def release(self, key: str, project: str) -> None:
        self.inflight[key] -= 1
        self.inflight_project[project] -= 1

    def next_fault(self) -> _Fault | None:
        if not self.faults:
            return None
        head = self.faults[0]
        head.remaining -= 1
        if head.remaining <= 0:
            self.faults.popleft()
        return head

    def pending(self) -> int:
        return sum(f.remaining for f in self.faults)

    def reset(self) -> None:
        self.faults.clear()
        self.records.clear()
        self.max_inflight.clear()
        self.max_inflight_project.clear()
        self.counts.clear()


STATE: Final = web.AppKey("fake_upstream_state", FakeState)


# --- helpers -------------------------------------------------------------------------------


def _error(
    status: int, message: str, type_: str, code: str | None, param: str | None = None
) -> web.Response:
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return web.json_response(body, status=status)


def _known_error(kind: str) -> web.Response:
    return _error(*_ERRORS[kind])


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


def _words(text: object) -> int:
    return len(text.split()) if isinstance(text, str) else 0


def prompt_tokens(messages: list[Any]) -> int:
    """The fake's prompt token count (formula in the module docstring)."""
    total = 0
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        total += 3
        if isinstance(content, list):
            for part in content:
                kind = part.get("type") if isinstance(part, dict) else None
                if kind == "text":
                    total += _words(part.get("text"))
                elif kind == "image_url":
                    total += _IMAGE_TOKENS
        else:
            total += _words(content)
    return total


def _int(obj: dict[str, Any], name: str, default: int, param: str) -> int:
    value = obj.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _BadRequest(f"'{name}' must be a non-negative integer", param)
    return value


def _float(obj: dict[str, Any], name: str, default: float, param: str) -> float:
    value = obj.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise _BadRequest(f"'{name}' must be a non-negative number", param)
    return float(value)


def _parse_call(body: object, settings: FakeSettings) -> _Call:
    if not isinstance(body, dict):
        raise _BadRequest("The request body must be a JSON object", None)
    model, messages = body.get("model"), body.get("messages")
    if not isinstance(model, str):
        raise _BadRequest("'model' is a required string", "model")
    if not isinstance(messages, list):
        raise _BadRequest("'messages' is a required array", "messages")
    knobs = body.get("x_fake") or {}
    if not isinstance(knobs, dict):
        raise _BadRequest("'x_fake' must be an object", "x_fake")
    choices = _int(body, "n", 1, "n")
    if choices < 1:
        raise _BadRequest("'n' must be at least 1", "n")
    cap = _int(body, "max_completion_tokens", 0, "max_completion_tokens")
    cap = cap or _int(body, "max_tokens", 0, "max_tokens")
    wanted = _int(knobs, "tokens", _DEFAULT_TOKENS, "x_fake")
    capped = bool(cap) and cap < wanted
    options = body.get("stream_options")
    return _Call(
        model=model,
        stream=body.get("stream") is True,
        include_usage=isinstance(options, dict) and options.get("include_usage") is True,
        choices=choices,
        tokens=cap if capped else wanted,
        finish_reason="length" if capped else "stop",
        prompt_tokens=prompt_tokens(messages),
        delay_s=_float(knobs, "delay_s", settings.delay_s, "x_fake"),
        chunk_delay_s=_float(knobs, "chunk_delay_s", settings.chunk_delay_s, "x_fake"),
        cut_after=None if knobs.get("cut_after") is None else _int(knobs, "cut_after", 0, "x_fake"),
    )


def _abort(request: web.Request) -> None:
    """Drop the connection with no further bytes: the client sees a reset or early EOF."""
    if request.transport is not None:
        request.transport.abort()


def _dropped(request: web.Request, record: dict[str, Any]) -> web.Response:
    """Answer nothing: abort the connection and record status 0.

    The returned response is never sent: aiohttp's write fails on the closed transport and it
    treats that as a client disconnect, quietly.
    """
    _abort(request)
    record["status"] = 0
    return web.Response()


async def _wait(request: web.Request, state: FakeState, seconds: float) -> bool:
    """Sleep up to ``seconds``; False as soon as the client has gone away.

    Needed because aiohttp (>= 3.9) does not cancel handlers when the client disconnects.
    Returns early (True) when the server shuts down, so cleanup never waits on a sleeper.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while request.transport is not None and not request.transport.is_closing():
        remaining = deadline - loop.time()
        if remaining <= 0 or state.closing.is_set():
            return True
        await asyncio.sleep(min(_POLL_S, remaining))
    return False


def _text_words(tokens: int) -> list[str]:
    words = [WORDS[i % len(WORDS)] for i in range(tokens)]
    return [w + " " for w in words[:-1]] + words[-1:]


def _usage(call: _Call) -> dict[str, int]:
    prompt, completion = call.prompt_tokens, call.tokens * call.choices
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


# --- answering -----------------------------------------------------------------------------


def _completion(call: _Call, ident: str) -> dict[str, Any]:
    message = {"role": "assistant", "content": "".join(_text_words(call.tokens))}
    choices = [
        {"index": i, "message": message, "logprobs": None, "finish_reason": call.finish_reason}
        for i in range(call.choices)
    ]
    head = {"id": ident, "object": "chat.completion", "created": int(time.time())}
    return {**head, "model": call.model, "choices": choices, "usage": _usage(call)}


async def _write_stream(
    request: web.Request, state: FakeState, resp: web.StreamResponse, call: _Call, ident: str
) -> bool:
    """Write the SSE events, one write each; False when the stream was cut on purpose."""
    head = {"id": ident, "object": "chat.completion.chunk", "created": int(time.time())}
    extra: dict[str, Any] = {"usage": None} if call.include_usage else {}

    async def send(event: dict[str, Any] | str) -> None:
        data = event if isinstance(event, str) else json.dumps(event, separators=(",", ":"))
        await resp.write(f"data: {data}\n\n".encode())

    async def send_choice(index: int, delta: dict[str, str], finish: str | None) -> None:
        choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
        await send({**head, "model": call.model, "choices": [choice], **extra})

    for i in range(call.choices):
        await send_choice(i, {"role": "assistant", "content": ""}, None)
    sent = 0
    for word in _text_words(call.tokens):
        for i in range(call.choices):
            if call.cut_after is not None and sent >= call.cut_after:
                break
            delay = call.chunk_delay_s if sent else 0.0
            if delay > 0 and not await _wait(request, state, delay):
                raise ConnectionResetError("client went away")
            await send_choice(i, {"content": word}, None)
            sent += 1
    if call.cut_after is not None:  # past the end counts as "cut before the finish chunk"
        _abort(request)
        return False
    for i in range(call.choices):
        await send_choice(i, {}, call.finish_reason)
    if call.include_usage:
        await send({**head, "model": call.model, "choices": [], "usage": _usage(call)})
    await send("[DONE]")
    return True


async def _admitted(
    request: web.Request, state: FakeState, call: _Call, record: dict[str, Any]
) -> web.StreamResponse:
    if call.hang or call.delay_s > 0:
        if not await _wait(request, state, _HANG_MAX_S if call.hang else call.delay_s):
            state.counts["disconnects"] += 1
            return _dropped(request, record)
        if call.hang:  # released by shutdown or the 600 s cap: still no answer
            return _dropped(request, record)
    if call.cut_after is not None and not call.stream:
        return _dropped(request, record)
    state.last_id += 1
    ident = f"chatcmpl-fake-{state.last_id}"
    if call.stream:
        headers = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        resp: web.StreamResponse = web.StreamResponse(headers=headers)
    else:
        resp = web.json_response(_completion(call, ident))
    # Written here rather than by aiohttp after return, so "in flight" ends with the last byte.
    try:
        await resp.prepare(request)
        if call.stream and not await _write_stream(request, state, resp, call, ident):
            return resp
        await resp.write_eof()
    except ConnectionError:
        state.counts["disconnects"] += 1
        return resp
    state.counts["completed"] += 1
    return resp


# --- handlers ------------------------------------------------------------------------------


async def _chat(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    settings = state.settings
    state.counts["requests"] += 1
    key = _bearer_key(request, settings)
    project = _project(request, key, settings) if key is not None else None
    if key is None or project is None:
        return _known_error("401")
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
        call = _parse_call(body, state.settings)
    except ValueError:
        return _error(400, "The request body is not valid JSON", "invalid_request_error", None)
    except _BadRequest as exc:
        return _error(400, exc.message, "invalid_request_error", None, exc.param)
    fault = state.next_fault()
    if fault is not None:
        if fault.kind in _ERRORS:
            return _known_error(fault.kind)
        if fault.kind == "reset" or (fault.kind == "cut" and not call.stream):
            return _dropped(request, record)
        if fault.kind == "cut":
            call.cut_after = fault.params["after"]
        elif fault.kind == "delay":
            call.delay_s += fault.params["seconds"]
        else:
            call.hang = True
    if call.model in state.settings.retired or call.model not in state.settings.models:
        message = f"The model `{call.model}` does not exist."
        return _error(404, message, "invalid_request_error", "model_not_found", "model")
    if not state.admit(key, project):
        state.counts["rejected_429"] += 1
        return _known_error("429")
    try:
        return await _admitted(request, state, call, record)
    finally:
        state.release(key, project)


async def _models(request: web.Request) -> web.StreamResponse:
    settings = request.app[STATE].settings
    if _bearer_key(request, settings) is None:
        return _known_error("401")
    data = [
        {"id": m, "object": "model", "created": MODELS_CREATED, "owned_by": m.split("/")[0]}
        for m in settings.models
    ]
    return web.json_response({"object": "list", "data": data})


def _parse_fault(spec: object) -> _Fault:
    if not isinstance(spec, dict) or spec.get("kind") not in _FAULT_KINDS:
        raise ValueError(f"unknown fault {spec!r}; kinds: {sorted(_FAULT_KINDS)}")
    count, after = spec.get("count", 1), spec.get("after", 1)
    seconds = spec.get("seconds", 1.0)
    if not (isinstance(count, int) and count >= 1 and isinstance(after, int) and after >= 0):
        raise ValueError(f"'count' must be >= 1 and 'after' >= 0 in {spec!r}")
    if not isinstance(seconds, int | float) or seconds < 0:
        raise ValueError(f"'seconds' must be a non-negative number in {spec!r}")
    return _Fault(spec["kind"], count, {"after": after, "seconds": float(seconds)})


async def _add_faults(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    try:
        body = json.loads(await request.read())
        specs = body.get("faults") if isinstance(body, dict) else None
        if not isinstance(specs, list):
            raise ValueError('expected {"faults": [{"kind": ..., "count": 1, ...}]}')
        faults = [_parse_fault(spec) for spec in specs]
    except ValueError as exc:
        return _error(400, str(exc), "invalid_request_error", None, "faults")
    state.faults.extend(faults)
    return web.json_response({"queued": state.pending()})


async def _stats(request: web.Request) -> web.StreamResponse:
    s = request.app[STATE]
    return web.json_response(
        {
            "inflight": dict(s.inflight),
            "max_inflight": s.max_inflight,
            "max_inflight_project": s.max_inflight_project,
            **{name: s.counts[name] for name in _COUNTS},
            "faults_pending": s.pending(),
        }
    )


async def _requests(request: web.Request) -> web.StreamResponse:
    return web.json_response({"data": list(request.app[STATE].records)})


async def _reset(request: web.Request) -> web.StreamResponse:
    request.app[STATE].reset()
    return web.json_response({"reset": True})


@web.middleware
async def _openai_404(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPNotFound:
        message = f"Unknown request URL: {request.method} {request.path}"
        return _error(404, message, "invalid_request_error", "unknown_url")
    except web.HTTPMethodNotAllowed:
        message = f"Method {request.method} not allowed on {request.path}"
        return _error(405, message, "invalid_request_error", "method_not_allowed")


async def _on_shutdown(app: web.Application) -> None:
    app[STATE].closing.set()


# --- lifecycle -----------------------------------------------------------------------------


def build_app(settings: FakeSettings) -> web.Application:
    """The fake upstream as an aiohttp application with fresh state."""
    app = web.Application(middlewares=[_openai_404])
    app[STATE] = FakeState(settings)
    app.on_shutdown.append(_on_shutdown)
    app.router.add_get("/v1/models", _models)
    app.router.add_post("/v1/chat/completions", _chat)
    app.router.add_post("/_fake/faults", _add_faults)
    app.router.add_get("/_fake/stats", _stats)
    app.router.add_get("/_fake/requests", _requests)
    app.router.add_post("/_fake/reset", _reset)
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

"""Answering an admitted chat request over its connection: waits, cuts, the body or the stream.

Owns everything that touches the client's socket once a request holds a concurrency slot: the
delay or hang a fault or ``x_fake`` asks for, dropping the connection, writing the JSON body or
the SSE events (one write per event: reasoning chunks, then content or tool-call chunks, as
``completions.deltas`` lists them), and counting
completions and client disconnects.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, Final

from aiohttp import web

from gateway.testing.completions import Call, completion, deltas, role_delta, usage
from gateway.testing.state import FakeState

_POLL_S: Final = 0.02
_HANG_MAX_S: Final = 600.0


def abort(request: web.Request) -> None:
    """Drop the connection with no further bytes: the client sees a reset or early EOF."""
    if request.transport is not None:
        request.transport.abort()


def dropped(request: web.Request, record: dict[str, Any]) -> web.Response:
    """Answer nothing: abort the connection and record status 0.

    The returned response is never sent: aiohttp's write fails on the closed transport and it
    treats that as a client disconnect, quietly.
    """
    abort(request)
    record["status"] = 0
    return web.Response()


async def wait(request: web.Request, state: FakeState, seconds: float) -> bool:
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


async def write_stream(
    request: web.Request, state: FakeState, resp: web.StreamResponse, call: Call, ident: str
) -> bool:
    """Write the SSE events, one write each; False when the stream was cut on purpose."""
    head = {"id": ident, "object": "chat.completion.chunk", "created": int(time.time())}
    extra: dict[str, Any] = {"usage": None} if call.include_usage else {}

    async def send(event: dict[str, Any] | str) -> None:
        data = event if isinstance(event, str) else json.dumps(event, separators=(",", ":"))
        await resp.write(f"data: {data}\n\n".encode())

    async def send_choice(index: int, delta: dict[str, Any], finish: str | None) -> None:
        choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
        await send({**head, "model": call.model, "choices": [choice], **extra})

    if call.think_s > 0 and not await wait(request, state, call.think_s):
        raise ConnectionResetError("client went away")
    for i in range(call.choices):
        await send_choice(i, role_delta(call), None)
    sent = 0  # token chunks: what cut_after counts
    for delta, token in deltas(call):
        for i in range(call.choices):
            if call.cut_after is not None and sent >= call.cut_after:
                break
            delay = call.chunk_delay_s if sent and token else 0.0
            if delay > 0 and not await wait(request, state, delay):
                raise ConnectionResetError("client went away")
            await send_choice(i, delta, None)
            sent += token
    if call.cut_after is not None:  # past the end counts as "cut before the finish chunk"
        abort(request)
        return False
    for i in range(call.choices):
        await send_choice(i, {}, call.finish_reason)
    if call.include_usage:
        await send({**head, "model": call.model, "choices": [], "usage": usage(call)})
    await send("[DONE]")
    return True


async def answer(
    request: web.Request, state: FakeState, call: Call, record: dict[str, Any]
) -> web.StreamResponse:
    """Answer ``call``, which holds a slot: the caller releases it once this returns."""
    if call.hang or call.delay_s > 0:
        if not await wait(request, state, _HANG_MAX_S if call.hang else call.delay_s):
            state.counts["disconnects"] += 1
            return dropped(request, record)
        if call.hang:  # released by shutdown or the 600 s cap: still no answer
            return dropped(request, record)
    if call.cut_after is not None and not call.stream:
        return dropped(request, record)
    state.last_id += 1
    ident = f"chatcmpl-fake-{state.last_id}"
    if call.stream:
        headers = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        resp: web.StreamResponse = web.StreamResponse(headers=headers)
    else:
        resp = web.json_response(completion(call, ident))
    # Written here rather than by aiohttp after return, so "in flight" ends with the last byte.
    try:
        await resp.prepare(request)
        if call.stream and not await write_stream(request, state, resp, call, ident):
            return resp
        await resp.write_eof()
    except ConnectionError:
        state.counts["disconnects"] += 1
        return resp
    state.counts["completed"] += 1
    return resp

"""Request identity and the access log, as pure ASGI (no buffering, streaming untouched).

Every response carries `x-request-id`: the client's when it sent a sane one, else a new one. The
same id goes upstream and into the one access-log line written per request.
"""

from __future__ import annotations

import os
import re
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import Unavailable
from gateway.lifecycle import PROBE_PATHS
from gateway.logs import access
from gateway.responses import send_error

_SANE_ID = re.compile(rb"[A-Za-z0-9._:/+=-]{1,128}")


def request_id_from(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            if _SANE_ID.fullmatch(value):
                return str(value.decode())
            break
    return "req_" + os.urandom(16).hex()


def _path(scope: Scope) -> str:
    """The path as the client sent it, still percent-encoded (so `%0A` cannot forge a log line),
    and bounded."""
    raw = scope.get("raw_path")
    path = raw.decode("latin-1") if raw else repr(scope["path"])
    return path[:200]


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, *, log: bool = True) -> None:
        self.app = app
        self.log = log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        request_id = request_id_from(scope)
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        rid_header = (b"x-request-id", request_id.encode())
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), rid_header]
            await send(message)

        lifecycle = scope["app"].state.lifecycle
        counted = scope["path"] not in PROBE_PATHS
        if counted and lifecycle.draining:
            await send_error(
                send_with_id,
                Unavailable(
                    "The gateway is shutting down; retry, another replica will answer.",
                    headers={"retry-after": "1", "connection": "close"},
                ),
            )
            state["error_reason"] = "shutting_down"
            counted = False
        elif counted:
            lifecycle.enter()
        try:
            if status == 0:
                await self.app(scope, receive, send_with_id)
        finally:
            if counted:
                lifecycle.leave()
            if self.log:
                tenant = state.get("tenant")
                access.write(
                    f"{request_id} {scope['method']} {_path(scope)} {status} "
                    f"{(time.perf_counter() - start) * 1000:.1f}ms "
                    f"tenant={tenant.name if tenant else '-'} model={state.get('model', '-')} "
                    f"queue_ms={state.get('queue_ms', '-')} attempts={state.get('attempts', '-')} "
                    f"reason={state.get('error_reason') or '-'}"
                )

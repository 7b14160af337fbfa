"""Request identity, draining and the access log, as pure ASGI (no buffering, streaming
untouched): the outermost layer of the one middleware chain (see `app.py`).

Every response carries `x-request-id`: the client's when it sent a sane one, else a new one. The
same id goes upstream and into the one access-log line written per request, from the request's
`RequestRecord`.
"""

from __future__ import annotations

import os
import re
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import Unavailable
from gateway.lifecycle import PROBE_PATHS
from gateway.logs import AccessLog
from gateway.record import RequestRecord
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


def _draining() -> Unavailable:
    return Unavailable(
        "The gateway is shutting down; retry, another replica will answer.",
        headers={"retry-after": "1", "connection": "close"},
    )


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, *, access: AccessLog | None) -> None:
        self.app = app
        self.access = access  # None: no access log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        record = RequestRecord(request_id_from(scope))
        scope.setdefault("state", {})["record"] = record
        rid_header = (b"x-request-id", record.request_id.encode())

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                record.status = message["status"]
                message["headers"] = [*message.get("headers", ()), rid_header]
            await send(message)

        lifecycle = scope["app"].state.lifecycle
        counted = scope["path"] not in PROBE_PATHS
        if counted and lifecycle.draining:
            record.reason = "shutting_down"
            await send_error(send_with_id, _draining())
            counted = False
        elif counted:
            lifecycle.enter()
        try:
            if record.status == 0:
                await self.app(scope, receive, send_with_id)
        finally:
            if counted:
                lifecycle.leave()
            if self.access is not None:
                elapsed_ms = (time.perf_counter() - start) * 1000
                self.access.write(record.line(scope["method"], _path(scope), elapsed_ms))

"""What the client of a chat completion sees, written straight to ASGI without a framework.

`Responder` is the client's side of one exchange: it reads the body, writes the response (every
chat response carries `x-gateway-queue-ms`; from admission on, `x-ratelimit-limit-requests` and
`x-ratelimit-remaining-requests` too: the tenant's concurrency, and its free slots as the
response starts), knows whether the response has started (after that no error status can
follow, only an SSE error event) and whether the last byte was handed over, and notices the
client going away. `send_error` is the same for the middlewares, which answer
before any handler runs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from starlette.types import Receive, Send

from gateway.admission import Ticket
from gateway.errors import GatewayError, PayloadTooLarge, RawHeaders, render, sse_event

T = TypeVar("T")


class ClientGone(Exception):
    """The client disconnected, or stopped reading a stream, before the response was complete."""


async def send_error(send: Send, error: GatewayError) -> None:
    status, headers, body = render(error)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


class Responder:
    __slots__ = ("_free_slots", "_limit", "_receive", "_send", "complete", "queue_s", "status")

    def __init__(self, send: Send, receive: Receive) -> None:
        self._send = send
        self._receive = receive
        self.status = 0  # sent with the response's start; 0 while nothing was sent
        self.queue_s = 0.0  # for x-gateway-queue-ms
        # The last byte was handed to the server. After that, `receive()` says `http.disconnect`
        # as a matter of course: it must not count as the client leaving.
        self.complete = False
        self._limit = b""
        self._free_slots: Callable[[], int] | None = None

    @property
    def started(self) -> bool:
        return self.status != 0

    async def read_body(self, declared: int | None, limit: int, ticket: Ticket) -> bytes:
        """The whole request body; PayloadTooLarge past `limit`, ClientGone if it leaves.

        A body without a declared length is reserved on `ticket` as it arrives (a declared one
        was reserved whole at admission, and the server delivers no byte past it)."""
        parts: list[bytes] = []
        size = 0
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                raise ClientGone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            if declared is None:
                ticket.grow(len(chunk))
            parts.append(chunk)
            if not message.get("more_body", False):
                return b"".join(parts)

    def rate_limit(self, limit: int, free_slots: Callable[[], int]) -> None:
        """The request was admitted: its response says the tenant's `limit`, and `free_slots()`
        as it starts (a failed request's own slot is back by then)."""
        self._limit = b"%d" % limit
        self._free_slots = free_slots

    async def start(self, status: int, headers: RawHeaders) -> None:
        self.status = status
        queue_ms = (b"x-gateway-queue-ms", b"%d" % round(self.queue_s * 1000))
        if self._free_slots is None:
            headers = [*headers, queue_ms]
        else:
            headers = [
                *headers,
                queue_ms,
                (b"x-ratelimit-limit-requests", self._limit),
                (b"x-ratelimit-remaining-requests", b"%d" % self._free_slots()),
            ]
        await self._send({"type": "http.response.start", "status": status, "headers": headers})

    async def chunk(self, body: bytes) -> None:
        await self._send({"type": "http.response.body", "body": body, "more_body": True})

    async def end(self, body: bytes = b"") -> None:
        self.complete = True  # before the send: what follows it is not the client leaving
        await self._send({"type": "http.response.body", "body": body, "more_body": False})

    async def whole(self, status: int, headers: RawHeaders, body: bytes) -> None:
        await self.start(status, headers)
        await self.end(body)

    async def error(self, error: GatewayError) -> None:
        """The error as a response, or as the stream's last event if the 200 is out."""
        if not self.started:
            await self.whole(*render(error))
        elif not self.complete:
            await self.end(sse_event(error))

    async def until_disconnect(self, work: Awaitable[T]) -> T:
        """Run `work` in this task; if the client disconnects first, cancel it and raise
        ClientGone.

        One watcher task per request, no second task for the work: the watcher cancels this
        task, and only while the work is still running (a flag set with no await in between).
        """
        task = asyncio.current_task()
        assert task is not None
        running = True
        gone = False

        async def watch() -> None:
            nonlocal gone
            while (await self._receive())["type"] != "http.disconnect":
                pass
            if running and not self.complete:
                gone = True
                task.cancel()

        watcher = asyncio.ensure_future(watch())
        try:
            return await work
        except asyncio.CancelledError:
            if gone:
                task.uncancel()
                raise ClientGone from None
            raise
        finally:
            running = False
            watcher.cancel()


def content_length(headers: RawHeaders, limit: int) -> int | None:
    """The declared body length, None when absent (chunked); PayloadTooLarge past `limit`."""
    for name, value in headers:
        if name == b"content-length" and value.isdigit():
            if int(value) > limit:
                raise _too_large(limit)
            return int(value)
    return None


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"Request body is larger than the gateway accepts ({limit} bytes, server.max_body_bytes)."
    )

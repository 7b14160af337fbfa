"""The HTTP/1.1 server's own bounds: what one connection may cost before any key is checked.

uvicorn's httptools protocol bounds nothing: neither the size nor the count of a request's
headers, nor how long they or the body take, nor how many connections are open. `serve` runs
this subclass of it instead (see `GuardedConfig`), which adds, from `server.*`:

    bound                  past it
    max_header_bytes       431 `request_header_too_large`; the head is never buffered past it
    max_headers            431 `request_header_too_large`
    header_timeout_s       408 `request_timeout` (from the connection's opening, or from a
                           keep-alive request's first byte, to the end of its headers); a
                           connection that never sent a byte is closed without an answer
    body_timeout_s         408 `request_timeout` (the end of the headers to the end of the body),
                           or a plain close if a response has started; the app sees
                           `http.disconnect`
    keepalive_timeout_s    an idle keep-alive connection is closed (uvicorn's own timer)
    max_connections        503 `overloaded` with `Retry-After: 1`, closed before it is read

Every answer is the error envelope (`errors.render`) with `Connection: close`. After a 431 or a
408 the connection is shut for writing and what the client still sends is read and dropped for
up to `LINGER_S` (a close with unread bytes is a reset, which may destroy the answer before the
client reads it); a 503 at `max_connections` is closed at once, so refusals hold no descriptor.
Each refusal counts in `gateway_connections_refused_total{reason}`.

Cheap by design: no timer is armed for a request whose head (and body) arrive in one read,
which is nearly all of them; the byte count is one addition per read, the header count one
comparison per header.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, cast

import httptools
import uvicorn
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from gateway.errors import (
    BadRequest,
    GatewayError,
    HeaderTooLarge,
    Overloaded,
    RequestTimeout,
    render,
)

if TYPE_CHECKING:
    from gateway.config import ServerSettings
    from gateway.metrics import Metrics

logger = logging.getLogger(__name__)

LINGER_S = 1.0  # after a 431/408: how long the client's bytes still in flight are dropped


@dataclass(frozen=True, slots=True)
class Bounds:
    """The `server.*` bounds the protocol enforces (plain data: pickled into every worker)."""

    max_header_bytes: int
    max_headers: int
    header_timeout_s: float
    body_timeout_s: float
    keepalive_timeout_s: float
    max_connections: int

    @classmethod
    def of(cls, server: ServerSettings) -> Bounds:
        return cls(**{f.name: getattr(server, f.name) for f in fields(cls)})


class GuardedConfig(uvicorn.Config):
    """uvicorn's Config serving `GuardedHttpToolsProtocol` with these bounds. Under
    `--workers N` uvicorn pickles its Config into each spawned worker, so the bounds travel
    with it. WebSockets are off: the gateway has no such route, and an upgraded connection
    would leave these bounds behind."""

    def __init__(self, app: Any, bounds: Bounds, **kwargs: Any) -> None:
        super().__init__(app, http=GuardedHttpToolsProtocol, ws="none", **kwargs)
        self.bounds = bounds
        # uvicorn hints an int, and hands it to loop.call_later, which takes any number.
        self.timeout_keep_alive = bounds.keepalive_timeout_s  # type: ignore[assignment]


class _Refusal(Exception):
    """Raised in a parser callback to stop the parse; httptools re-raises it as the
    `__context__` of its `HttpParserCallbackError`."""

    def __init__(self, error: GatewayError, reason: str) -> None:
        super().__init__(error.message)
        self.error = error
        self.reason = reason


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    def __init__(
        self,
        config: uvicorn.Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        if not isinstance(config, GuardedConfig):
            raise TypeError("GuardedHttpToolsProtocol runs under a GuardedConfig (its bounds)")
        self.bounds = config.bounds
        self._max_head = config.bounds.max_header_bytes
        self._max_headers = config.bounds.max_headers
        self._header_timeout = config.bounds.header_timeout_s
        self._body_timeout = config.bounds.body_timeout_s
        self._head_open = True  # the next bytes belong to a request's head
        self._head_bytes = 0  # bytes of that head so far (counted per read)
        self._messages = 0  # requests whose body is complete, on this connection
        # In a body: bytes read that were not body (chunk sizes, trailers) against body bytes.
        self._framing = 0
        self._body_seen = 0
        self._timer: asyncio.TimerHandle | None = None  # the header or the body deadline
        self._refused = False

    # Connection

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self.bounds.max_connections:
            self.transport = transport
            self._refused = True
            error = Overloaded("Too many open connections to this gateway process; retry shortly.")
            transport.write(self._answer(error))
            transport.close()
            self._count("max_connections")
            return
        super().connection_made(transport)
        self._timer = self.loop.call_later(self._header_timeout, self._head_expired)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:  # lingering after an answer: dropped unread
            return
        self._unset_keepalive_if_required()
        self._receive(data)

    def _receive(self, data: bytes | memoryview) -> None:
        if self._head_open and len(data) > self._max_head - self._head_bytes:
            self._receive_at_bound(data)
            return
        done = self._messages
        in_body = not self._head_open
        if in_body:
            self._framing += len(data)
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            self._parser_stopped(exc)
            return
        if in_body and self._framing > self._max_head + self._body_seen // 16:
            # httptools would build a trailer's value in memory, by repeated concatenation,
            # past every bound on the head: what is not body is bounded like a head.
            error = BadRequest("The body's chunk framing or trailers are too large.")
            self._refuse(error, "invalid_http", answer=True)
        elif self._head_open:
            if self._messages == done:  # the whole read went to one head, still unfinished
                self._head_bytes += len(data)
                if self._timer is None:  # a keep-alive request's first bytes: its clock starts
                    self._timer = self.loop.call_later(self._header_timeout, self._head_expired)
        elif self._timer is None:  # the headers are in, the body is on its way
            self._timer = self.loop.call_later(self._body_timeout, self._body_expired)

    def _receive_at_bound(self, data: bytes | memoryview) -> None:
        """A read that would take the head past its bound: feed up to the bound, no further;
        refuse if the head has not ended by then, else go on with the rest (a body, or the
        next request)."""
        room = self._max_head - self._head_bytes
        view = memoryview(data)
        done = self._messages
        try:
            self.parser.feed_data(view[:room])
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            self._parser_stopped(exc)
            return
        if self._head_open and self._messages == done:
            error = HeaderTooLarge(f"The request line and headers are over {self._max_head} bytes.")
            self._refuse(error, "header_too_large", answer=True)
        else:
            self._receive(view[room:])

    def _parser_stopped(self, exc: Exception) -> None:
        """uvicorn's handling of what httptools raises, but for its answers."""
        if isinstance(exc, httptools.HttpParserUpgrade):
            if self._should_upgrade():
                self.handle_websocket_upgrade()  # pragma: no cover (WebSockets are off)
            else:
                self._unsupported_upgrade_warning()
            return
        refusal = exc.__context__
        if isinstance(exc, httptools.HttpParserCallbackError) and isinstance(refusal, _Refusal):
            self._refuse(refusal.error, refusal.reason, answer=True)
            return
        logger.debug("invalid HTTP request from %s", self.client)
        self._refuse(BadRequest("Invalid HTTP request."), "invalid_http", answer=True)

    # Parser callbacks: where a request's head and body end

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._head_open:  # a trailer: it would join the headers after auth read them
            raise _Refusal(BadRequest("Trailers are not accepted."), "invalid_http")
        headers = self.headers
        if len(headers) >= self._max_headers:
            error = HeaderTooLarge(f"The request has more than {self._max_headers} headers.")
            raise _Refusal(error, "too_many_headers")
        # uvicorn's own, inline: this runs for every header of every request.
        name = name.lower()
        if name == b"expect" and value.lower() == b"100-continue":
            self.expect_100_continue = True
        headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._head_open = False
        self._disarm()
        HttpToolsProtocol.on_headers_complete(self)

    def on_body(self, body: bytes) -> None:
        self._framing -= len(body)
        self._body_seen += len(body)
        HttpToolsProtocol.on_body(self, body)

    def on_message_complete(self) -> None:
        self._messages += 1
        self._head_open = True
        self._head_bytes = self._framing = self._body_seen = 0
        self._disarm()
        HttpToolsProtocol.on_message_complete(self)

    # Deadlines

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _ours(self) -> bool:
        """Whether the wait is the gateway's: reading paused, 100-continue not yet sent, or a
        previous request still being answered (a pipelined head waits for it)."""
        cycle = self.cycle
        return self.flow.read_paused or (
            cycle is not None and (cycle.waiting_for_100_continue or not cycle.response_complete)
        )

    def _head_expired(self) -> None:
        self._timer = None
        if self._ours():
            self._timer = self.loop.call_later(self._header_timeout, self._head_expired)
            return
        if not self._head_bytes:  # never asked anything: nothing to answer
            self._refused = True
            self.transport.close()
            self._count("header_timeout")
            return
        timeout = self.bounds.header_timeout_s
        error = RequestTimeout(f"The request's headers did not arrive within {timeout:g} s.")
        self._refuse(error, "header_timeout", answer=True)

    def _body_expired(self) -> None:
        self._timer = None
        cycle = self.cycle
        if self.flow.read_paused or cycle.waiting_for_100_continue:
            self._timer = self.loop.call_later(self._body_timeout, self._body_expired)
            return
        timeout = self.bounds.body_timeout_s
        error = RequestTimeout(f"The request body did not arrive within {timeout:g} s.")
        self._refuse(error, "body_timeout", answer=not cycle.response_started)

    # Refusing

    def _refuse(self, error: GatewayError, reason: str, *, answer: bool) -> None:
        """Answer with the error (unless a response is under way), shut the connection for
        writing, drop what still comes in for up to LINGER_S, then close."""
        self._refused = True
        self._disarm()
        if self.pipeline:  # `cycle` is a queued request, the running one is not known here:
            answer = False  # an answer now could land inside the running one's response
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            answer = answer and not cycle.response_started  # never inside another response
            cycle.disconnected = True  # the app's receive() gets http.disconnect, sends drop
            cycle.waiting_for_100_continue = False
            cycle.message_event.set()
        transport = self.transport
        if answer:
            transport.write(self._answer(error))
        self.flow.resume_reading()
        if answer and transport.can_write_eof():
            transport.write_eof()
            self._timer = self.loop.call_later(LINGER_S, transport.close)
        else:
            transport.close()
        self._count(reason)

    def _answer(self, error: GatewayError) -> bytes:
        status, headers, body = render(error)
        content = [STATUS_LINE[status]]
        for name, value in [*self.server_state.default_headers, *headers]:
            content += [name, b": ", value, b"\r\n"]
        content += [b"connection: close\r\n\r\n", body]
        return b"".join(content)

    def _count(self, reason: str) -> None:
        logger.debug("connection from %s refused: %s", self.client, reason)
        metrics = _metrics(self.app)
        if metrics is not None:
            metrics.child(metrics.connections_refused, reason).inc()


def _metrics(app: object) -> Metrics | None:
    """The running app's metrics, found through uvicorn's wrappers (proxy headers, message
    logger): the server holds no other handle on them. Only refusals look them up."""
    for _ in range(4):
        runtime = getattr(getattr(app, "state", None), "runtime", None)
        if runtime is not None:
            return cast("Metrics", runtime.metrics)
        app = getattr(app, "app", None)
    return None

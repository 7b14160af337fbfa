"""Forwarding one chat completion: slot, attempts with backoff, relay, and what happened.

The body goes upstream as the client sent it (only `model` may have been rewritten by the
caller of this module). Retries happen only while no byte has reached the client: a streamed
response is committed when its first upstream chunk arrives, not before. After that, a failure
ends the stream with an SSE error event rather than silence.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from starlette.types import Send
from yarl import URL

from gateway.config import Account, Tenant
from gateway.errors import (
    UpstreamConnectError,
    UpstreamError,
    UpstreamTimeout,
    error_body,
)
from gateway.limits import Limiter
from gateway.metrics import Metrics
from gateway.sse import StreamMeter, error_event
from gateway.upstream import Retryable, UpstreamClient, classify, response_headers
from gateway.usage import Usage

logger = logging.getLogger(__name__)

SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


# A client that stops reading a stream without disconnecting (a suspended process, a stream
# left unclosed) would hold its slot for ever: past upstream's own silence limit plus this, it
# is treated as gone.
CLIENT_STALL_MARGIN_S = 5.0


class ClientStalled(Exception):
    """The client stopped reading the stream: the same as gone."""


class _StreamWatch:
    """The two safety nets of a relayed stream, on one timer per stream.

    - upstream silent: no chunk for `read_timeout_s` while no send to the client waits: the
      relay ends with an error event;
    - client stalled: one send has waited `read_timeout_s + CLIENT_STALL_MARGIN_S`: the client
      is treated as gone.

    A check every `min(read_timeout_s, CLIENT_STALL_MARGIN_S) / 2` (2.5 s by default) compares
    counters the relay bumps, instead of timer handles re-armed around every chunk (ours, and
    aiohttp's `sock_read`: 7% of a stream's CPU, measured). Each fires at most two checks late.
    """

    UPSTREAM = "upstream"
    CLIENT = "client"
    SHUTDOWN = "shutdown"

    __slots__ = (
        "_handle",
        "_last",
        "_loop",
        "_patience",
        "_period",
        "_quiet",
        "_silence",
        "_stuck",
        "_task",
        "begun",
        "ended",
        "fired",
        "received",
    )

    def __init__(self, read_timeout_s: float) -> None:
        self.received = 0  # upstream chunks taken
        self.begun = self.ended = 0  # sends to the client started and finished
        self.fired: str | None = None
        self._period = min(read_timeout_s, CLIENT_STALL_MARGIN_S) / 2
        self._silence = math.ceil(read_timeout_s / self._period)  # quiet checks that are too many
        self._patience = math.ceil((read_timeout_s + CLIENT_STALL_MARGIN_S) / self._period)
        self._last = (-1, -1)  # (received, begun) at the last check
        self._quiet = 0  # checks in a row that saw nothing received and no send waiting
        self._stuck = 0  # checks in a row that saw the same send waiting
        self._loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        self._task = task
        self._handle = self._loop.call_later(self._period, self._check)

    def cut(self) -> None:
        """End the stream now, with an error event: the gateway is going away."""
        if self.fired is None:
            self.fired = self.SHUTDOWN
            self._handle.cancel()
            self._task.cancel()

    def _check(self) -> None:
        received, begun = self.received, self.begun
        if begun != self.ended:
            self._quiet = 0
            self._stuck = self._stuck + 1 if begun == self._last[1] else 0
            if self._stuck >= self._patience:
                self.fired = self.CLIENT
        else:
            self._stuck = 0
            self._quiet = self._quiet + 1 if received == self._last[0] else 0
            if self._quiet >= self._silence:
                self.fired = self.UPSTREAM
        if self.fired:
            self._task.cancel()
            return
        self._last = (received, begun)
        self._handle = self._loop.call_later(self._period, self._check)

    def close(self) -> None:
        self._handle.cancel()


@dataclass
class Call:
    """One chat completion request, authenticated and parsed."""

    request_id: str
    tenant: Tenant
    account: Account
    model: str  # the resolved upstream id
    label: str  # the model as a bounded metric label
    stream: bool
    body: bytes
    headers: dict[str, str]  # for upstream, credentials already swapped
    deadline: float  # monotonic time after which neither queueing nor retrying goes on
    start: float = 0.0  # monotonic time the request arrived
    strip_usage: bool = False  # the gateway asked upstream for stream usage, the client did not
    messages: Any = None  # the request's messages, to estimate the prompt of a cut stream


@dataclass
class Outcome:
    """What happened, for the access log and metrics."""

    status: int = 0
    reason: str | None = None  # a bounded error cause (see metrics), None when all went well
    attempts: int = 0
    queue_s: float = 0.0
    committed: bool = False  # response headers sent: no more retries, no error status
    # The last byte was handed to the server. After that, `receive()` says `http.disconnect`
    # as a matter of course: it must not count as the client leaving.
    complete: bool = False
    retries: list[str] = field(default_factory=list)
    usage: Usage | None = None  # upstream's usage block, when one came
    meter: StreamMeter | None = None  # what a stream relayed, for a stream cut short
    first_byte_s: float | None = None  # seconds from arrival to the first streamed byte


class Proxy:
    def __init__(self, client: UpstreamClient, limiter: Limiter, metrics: Metrics) -> None:
        self._client = client
        self._limiter = limiter
        self._metrics = metrics
        self._url = URL(client.url("/chat/completions"))  # parsed once, not per request
        self._streams: set[_StreamWatch] = set()  # being relayed, for cut_streams()
        s = client.settings
        # Streams read without aiohttp's `sock_read` timer, re-armed on every chunk: the wait
        # for the answer and its first chunk is timed here, the rest by `_StreamWatch`.
        self._stream_timeout = aiohttp.ClientTimeout(
            total=None, connect=s.connect_timeout_s, sock_connect=s.connect_timeout_s
        )

    def cut_streams(self) -> int:
        """At the end of the shutdown grace: end every stream still relayed with an error event
        (never silence), so clients know to retry. Returns how many."""
        streams = list(self._streams)
        for watch in streams:
            watch.cut()
        return len(streams)

    async def chat(self, call: Call, send: Send, out: Outcome) -> None:
        """Hold a slot for the whole exchange; raise GatewayError if nothing was sent yet."""
        timeout = max(call.deadline - time.monotonic(), 0.001)
        lease = await self._limiter.acquire(call.account, call.tenant, timeout)
        out.queue_s = lease.queue_s
        try:
            await self._attempts(call, send, out)
        finally:
            await lease.release()

    async def _attempts(self, call: Call, send: Send, out: Outcome) -> None:
        settings = self._client.settings
        while True:
            out.attempts += 1
            try:
                await self._attempt(call, send, out)
                return
            except Retryable as retry:
                if retry.label == "upstream_concurrency":
                    # Someone outside the gateway uses this key: stop pushing into a limit we
                    # cannot see (the account's effective limit backs off, then recovers).
                    self._limiter.upstream_saturated(call.account.name)
                if out.attempts > settings.retries:
                    raise retry.final from None
                delay = _backoff(out.attempts, settings.backoff_base_s, settings.backoff_max_s)
                if time.monotonic() + delay > call.deadline:
                    raise retry.final from None
                out.retries.append(retry.label)
                self._metrics.retries.labels(call.label, retry.label).inc()
                logger.info(
                    "request %s: upstream attempt %d failed (%s), retrying in %.2fs",
                    call.request_id,
                    out.attempts,
                    retry.label,
                    delay,
                )
                await asyncio.sleep(delay)

    async def _attempt(self, call: Call, send: Send, out: Outcome) -> None:
        upstream_status = "error"
        post = self._client.session.post
        url, body, headers = self._url, call.body, call.headers
        try:
            if call.stream:
                async with asyncio.timeout(self._client.settings.read_timeout_s):
                    resp = await post(url, data=body, headers=headers, timeout=self._stream_timeout)
            else:
                resp = await post(url, data=body, headers=headers)
        except aiohttp.ConnectionTimeoutError as exc:
            raise _connect_error(exc) from None
        except TimeoutError:
            raise UpstreamTimeout(
                f"W&B sent no response within upstream.read_timeout_s "
                f"({self._client.settings.read_timeout_s:g}s)"
            ) from None
        except aiohttp.ClientError as exc:
            raise _connect_error(exc) from None
        else:
            upstream_status = str(resp.status)
        finally:
            m = self._metrics
            m.child(m.upstream_requests, call.account.name, call.label, upstream_status).inc()

        clean = False
        try:
            if resp.status == 200:
                if call.stream:
                    await self._relay_stream(resp, call, send, out)
                else:
                    await self._relay_body(resp, call, send, out)
                clean = True
                return
            if call.stream:  # no sock_read timer on a stream's session call: bound it here
                body = await _read_within(resp, self._client.settings.read_timeout_s)
            else:
                body = await _read(resp)
            clean = True
        finally:
            if clean:
                resp.release()
            else:
                resp.close()  # upstream must see the request go away at once
        error = classify(resp.status, body, call.account, call.tenant.project)
        if error is not None:
            raise error
        await self._pass_error(resp, body, call, send, out)

    async def _relay_body(
        self, resp: aiohttp.ClientResponse, call: Call, send: Send, out: Outcome
    ) -> None:
        body = await _read(resp)
        out.usage = _usage(body)
        headers = response_headers(resp.headers)
        headers.append((b"content-length", str(len(body)).encode()))
        await self._start(send, call, out, 200, headers)
        out.complete = True  # before the send: what follows it is not the client leaving
        await send({"type": "http.response.body", "body": body, "more_body": False})

    async def _relay_stream(
        self, resp: aiohttp.ClientResponse, call: Call, send: Send, out: Outcome
    ) -> None:
        chunks = resp.content.iter_any()
        try:
            async with asyncio.timeout(self._client.settings.read_timeout_s):
                first = await anext(chunks)
        except StopAsyncIteration:
            cut = UpstreamError("W&B ended the stream before any data")
            raise Retryable(cut, "upstream_connect") from None
        except TimeoutError:
            raise UpstreamTimeout(
                "W&B sent no stream data within upstream.read_timeout_s"
            ) from None
        except aiohttp.ClientError as exc:
            raise _connect_error(exc) from None

        meter = out.meter = StreamMeter(call.strip_usage)
        await self._start(send, call, out, 200, SSE_HEADERS)
        await send({"type": "http.response.body", "body": meter.feed(first), "more_body": True})
        out.first_byte_s = time.monotonic() - call.start
        ending = b""
        watch = _StreamWatch(self._client.settings.read_timeout_s)
        self._streams.add(watch)
        try:
            async for chunk in chunks:
                watch.received += 1
                relayed = meter.feed(chunk)
                if relayed:
                    watch.begun += 1
                    await send({"type": "http.response.body", "body": relayed, "more_body": True})
                    watch.ended += 1
            ending = meter.flush()
        except asyncio.CancelledError:
            task = asyncio.current_task()
            assert task is not None
            if watch.fired is None or task.uncancel() > 0:  # not (only) ours: go on unwinding
                raise
            if watch.fired == watch.CLIENT:
                raise ClientStalled from None
            if watch.fired == watch.SHUTDOWN:
                out.reason = "shutting_down"
                ending = error_event(
                    "The gateway is shutting down and cut this stream; retry the request.",
                    code="shutting_down",
                )
            else:
                out.reason = "upstream_timeout"
                ending = error_event("W&B stopped sending mid-stream (upstream.read_timeout_s).")
        except aiohttp.ClientError:
            out.reason = "stream_cut"
            ending = error_event("W&B cut the stream before it was complete.")
        else:
            if not meter.done:
                out.reason = "stream_cut"
                ending += error_event("W&B ended the stream before it was complete.")
        finally:
            watch.close()
            self._streams.discard(watch)
        if meter.usage is not None:
            out.usage = Usage(meter.usage["prompt_tokens"], meter.usage["completion_tokens"])
        if out.reason:
            logger.warning("request %s: stream ended early (%s)", call.request_id, out.reason)
        out.complete = True
        await send({"type": "http.response.body", "body": ending, "more_body": False})

    async def _pass_error(
        self, resp: aiohttp.ClientResponse, body: bytes, call: Call, send: Send, out: Outcome
    ) -> None:
        """An upstream 4xx about the caller's own request: theirs to see, in OpenAI's shape."""
        try:
            data = orjson.loads(body)
            shaped = isinstance(data, dict) and isinstance(data.get("error"), dict)
        except orjson.JSONDecodeError:
            shaped = False
        if not shaped:
            text = body[:500].decode("utf-8", "replace") or f"upstream status {resp.status}"
            body = error_body(text, "invalid_request_error", None, None)
        out.reason = "bad_request"
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        await self._start(send, call, out, resp.status, headers)
        out.complete = True  # before the send: what follows it is not the client leaving
        await send({"type": "http.response.body", "body": body, "more_body": False})

    @staticmethod
    async def _start(
        send: Send, call: Call, out: Outcome, status: int, headers: list[tuple[bytes, bytes]]
    ) -> None:
        out.status = status
        out.committed = True
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    *headers,
                    (b"x-gateway-queue-ms", str(round(out.queue_s * 1000)).encode()),
                ],
            }
        )


async def _read(resp: aiohttp.ClientResponse) -> bytes:
    """The whole body, or a retryable error when upstream cut it (nothing reached the client)."""
    try:
        return await resp.read()
    except TimeoutError:
        raise UpstreamTimeout(
            "W&B did not finish its answer within upstream.read_timeout_s"
        ) from None
    except aiohttp.ClientError as exc:
        raise _connect_error(exc) from None


async def _read_within(resp: aiohttp.ClientResponse, seconds: float) -> bytes:
    try:
        async with asyncio.timeout(seconds):
            return await _read(resp)
    except TimeoutError:
        raise UpstreamTimeout(
            "W&B did not finish its answer within upstream.read_timeout_s"
        ) from None


def _connect_error(exc: Exception) -> Retryable:
    return Retryable(
        UpstreamConnectError(f"Cannot reach W&B ({type(exc).__name__}) after retries."),
        "upstream_connect",
    )


def _backoff(attempt: int, base: float, cap: float) -> float:
    """Exponential backoff with equal jitter: half fixed, half random."""
    delay: float = min(cap, base * 2.0 ** (attempt - 1))
    return delay / 2 + random.uniform(0, delay / 2)


def _usage(body: bytes) -> Usage | None:
    try:
        usage = orjson.loads(body).get("usage")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    if not isinstance(usage, dict):
        return None
    return Usage(int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0))

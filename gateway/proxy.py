"""Forwarding one chat completion: slot, attempts with backoff, relay, and what happened.

`Proxy.chat(call, client)` runs the whole exchange and returns its `Result`; it writes to the
client only through the `Responder`. The body goes upstream as the `Call` has it. Retries happen
only while no byte has reached the client: a streamed response is committed when its first
upstream chunk arrives, or when W&B has answered 200 and then stays silent for
`upstream.sse_keepalive_s` (a reasoning model thinking), whichever comes first. From then on a
`: keep-alive` comment goes to the client after every `sse_keepalive_s` of upstream silence, and
a failure ends the stream with an SSE error event rather than silence. What each upstream answer
or wire failure means is decided in `gateway.upstream` (`classify`, `wire_failure`): this module
only acts on the verdict.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
from collections.abc import AsyncIterator

import aiohttp
import orjson
from yarl import URL

from gateway.accounting import Accounting
from gateway.budget import Budgets
from gateway.cost import cost_usd, decimal, usage_from
from gateway.errors import (
    GatewayError,
    QueueTimeout,
    StreamInterrupted,
    StreamShutDown,
    StreamStalled,
    UpstreamError,
    sse_event,
)
from gateway.exchange import CLIENT_CLOSED, Call, Result, Run
from gateway.headers import response_headers
from gateway.limits import Limiter
from gateway.metrics import Metrics
from gateway.responses import ClientGone, Responder
from gateway.sse import StreamMeter
from gateway.stream_watch import StreamWatch
from gateway.upstream import (
    WIRE_ERRORS,
    UpstreamClient,
    Verdict,
    classify,
    never_sent,
    refused,
    wire_failure,
)

logger = logging.getLogger(__name__)

SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
DRAIN_S = 1.0  # how long the end of a stream's body is waited for after its `[DONE]`
KEEPALIVE = b": keep-alive\n\n"  # an SSE comment: clients skip it, idle timers on the way reset


class Proxy:
    def __init__(
        self,
        client: UpstreamClient,
        limiter: Limiter,
        metrics: Metrics,
        budgets: Budgets,
        accounting: Accounting,
    ) -> None:
        self._client = client
        self._limiter = limiter
        self._metrics = metrics
        self._budgets = budgets
        self._accounting = accounting
        self._url = URL(client.url("/chat/completions"))  # parsed once, not per request
        self._streams: set[StreamWatch] = set()  # being relayed, for cut_streams()
        s = self._settings = client.settings
        # Streams read without aiohttp's `sock_read` timer, re-armed on every chunk: the wait
        # for the answer and its first chunk is timed here, the rest by `StreamWatch`.
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

    async def chat(self, call: Call, client: Responder) -> Result:
        """The whole exchange: a slot for all of it, attempts, the relay, and the error the
        client gets if it fails before its response started."""
        run = Run()
        gone = False
        try:
            await client.until_disconnect(self._exchange(call, client, run))
        except GatewayError as exc:
            run.reason = exc.reason
            if isinstance(exc, QueueTimeout):
                run.queue_s = client.queue_s = exc.waited_s
            await client.error(exc)
        except ClientGone:
            run.reason = "client_disconnect"
            gone = True
        return run.result(call, CLIENT_CLOSED if gone else client.status)

    async def _exchange(self, call: Call, client: Responder, run: Run) -> None:
        timeout = max(call.deadline - time.monotonic(), 0.001)
        lease = await self._limiter.acquire(call.account, call.tenant, timeout)
        run.queue_s = client.queue_s = lease.queue_s
        free = functools.partial(self._limiter.free_slots, call.account, call.tenant)
        client.rate_limit(call.tenant.max_concurrency, free)
        try:
            await self._budgets.admit(call.tenant)
            await self._attempts(call, client, run)
        finally:
            await lease.release()

    async def _attempts(self, call: Call, client: Responder, run: Run) -> None:
        """Attempt until one is relayed; raise the last verdict's error when none is left."""
        settings = self._settings
        while True:
            run.attempts += 1
            verdict = await self._attempt(call, client, run)
            if verdict is None:
                return
            error = verdict.error
            assert error is not None  # a passed-through answer was relayed: verdict None
            if verdict.retry is None:
                raise error
            if verdict.retry == "upstream_concurrency":
                # Someone outside the gateway uses this key: stop pushing into a limit we
                # cannot see (the account's effective limit backs off, then recovers).
                self._limiter.upstream_saturated(call.account.name)
            if run.attempts > settings.retries:
                raise error
            delay = _backoff(run.attempts, settings.backoff_base_s, settings.backoff_max_s)
            if time.monotonic() + delay > call.deadline:
                raise error
            self._metrics.child(self._metrics.retries, call.label, verdict.retry).inc()
            logger.info(
                "request %s: upstream attempt %d failed (%s), retrying in %.2fs",
                call.request_id,
                run.attempts,
                verdict.retry,
                delay,
            )
            await asyncio.sleep(delay)

    async def _attempt(self, call: Call, client: Responder, run: Run) -> Verdict | None:
        """One attempt: None once the client has its answer, else what went wrong."""
        m = self._metrics
        read_timeout = self._settings.read_timeout_s
        post = self._client.session.post
        run.unbilled += 1  # until W&B says otherwise
        try:
            if call.stream:
                async with asyncio.timeout(read_timeout):
                    resp = await post(
                        self._url,
                        data=call.body,
                        headers=call.headers,
                        timeout=self._stream_timeout,
                        allow_redirects=False,
                    )
            else:
                resp = await post(
                    self._url, data=call.body, headers=call.headers, allow_redirects=False
                )
        except WIRE_ERRORS as exc:
            m.child(m.upstream_requests, call.account.name, call.label, "error").inc()
            if never_sent(exc):
                run.unbilled -= 1
            return wire_failure(exc, "response", read_timeout)
        m.child(m.upstream_requests, call.account.name, call.label, str(resp.status)).inc()
        if resp.status != 200:  # W&B refused it: nothing to bill
            run.unbilled -= 1
        clean = False
        try:
            if resp.status == 200:
                if call.stream:
                    relayed = await self._relay_stream(resp, call, client, run)
                else:
                    relayed = await self._relay_body(resp, call, client, run)
                clean = relayed is None
                return relayed
            try:  # a stream's session call has no sock_read timer: bound the read here
                async with asyncio.timeout(read_timeout):
                    body = await resp.read()
            except WIRE_ERRORS as exc:
                return wire_failure(exc, "complete answer", read_timeout)
            clean = True
        finally:
            if clean:
                resp.release()
            else:
                resp.close()  # upstream must see the request go away at once
        verdict = classify(resp.status, body, call.account, call.project, call.model)
        if verdict.error is None:  # the caller's own business: theirs to see, in OpenAI's shape
            run.reason = "bad_request"
            await client.error(refused(resp.status, body, call.account, call.project, call.model))
            return None
        return verdict

    async def _relay_body(
        self, resp: aiohttp.ClientResponse, call: Call, client: Responder, run: Run
    ) -> Verdict | None:
        try:
            body = await resp.read()
        except WIRE_ERRORS as exc:
            return wire_failure(exc, "complete answer", self._settings.read_timeout_s)
        payload = _json(body)
        run.usage = usage_from(payload.get("usage")) if isinstance(payload, dict) else None
        if call.trace is not None and call.trace.recording:
            call.trace.answer(payload)
        await self._charge(call, run)
        headers = response_headers(resp.headers)
        headers.append((b"content-length", b"%d" % len(body)))
        if run.cost_usd is not None:
            headers.append((b"x-gateway-cost-usd", decimal(run.cost_usd).encode()))
        await client.whole(200, headers, body)
        return None

    async def _charge(self, call: Call, run: Run) -> None:
        """Charge the request before its answer ends: its next request, on any replica, is
        admitted on a month's spend that includes this one."""
        usage = run.final_usage(call)
        if usage is not None:
            run.charged, run.cost_usd = usage, cost_usd(call.price, usage)
            await self._accounting.charge(call, usage, run.cost_usd)

    async def _relay_stream(
        self, resp: aiohttp.ClientResponse, call: Call, client: Responder, run: Run
    ) -> Verdict | None:
        settings = self._settings
        read_timeout, keepalive = settings.read_timeout_s, settings.sse_keepalive_s
        chunks = resp.content.iter_any()
        first: bytes | None = None
        try:
            async with asyncio.timeout(min(read_timeout, keepalive)) as waited:
                first = await anext(chunks)
        except StopAsyncIteration:
            return Verdict(
                UpstreamError("W&B ended the stream before any data"), "upstream_connect"
            )
        except WIRE_ERRORS as exc:
            if not (waited.expired() and keepalive < read_timeout):
                return wire_failure(exc, "stream data", read_timeout)
            # W&B is thinking: commit the 200 and keep the connection warm while it does.

        meter = run.meter = StreamMeter(call.strip_usage)
        await client.start(200, [*SSE_HEADERS, *response_headers(resp.headers, stream=True)])
        if first is None:
            await client.chunk(KEEPALIVE)
        else:
            relayed = meter.feed(first)
            await client.chunk(relayed)
            run.first_byte_s = time.monotonic() - call.start
            if call.trace is not None and call.trace.recording:
                call.trace.chunk(relayed)
        ending = await self._relay_rest(chunks, meter, client, run, call)
        if meter.done and run.reason is None:  # the watch is closed: nothing cuts the drain
            await _drain(chunks)
        await self._charge(call, run)
        if run.reason:
            logger.warning("request %s: stream ended early (%s)", call.request_id, run.reason)
        await client.end(ending)
        return None

    async def _relay_rest(
        self,
        chunks: AsyncIterator[bytes],
        meter: StreamMeter,
        client: Responder,
        run: Run,
        call: Call,
    ) -> bytes:
        """Relay the stream after its start, its first chunk relayed (`run.first_byte_s` set)
        or not yet come; return its last bytes (the tail, or the error event that ends it
        early). A keep-alive the watch asks for goes out between two reads of upstream."""
        settings = self._settings
        silent_s = 0.0 if run.first_byte_s is not None else settings.sse_keepalive_s
        watch = StreamWatch(settings.read_timeout_s, settings.sse_keepalive_s, silent_s)
        self._streams.add(watch)
        task = asyncio.current_task()
        assert task is not None
        cut: StreamInterrupted | None = None
        try:
            while True:
                try:
                    await self._relay_chunks(chunks, meter, client, run, call, watch)
                    break
                except asyncio.CancelledError:
                    if watch.fired != watch.KEEPALIVE:
                        raise
                    watch.fired = None
                    if task.uncancel() > 0:  # not only ours: go on unwinding
                        raise
                watch.begun += 1
                await client.chunk(KEEPALIVE)
                watch.ended += 1
            ending = meter.flush()
            if not meter.done:
                cut = StreamInterrupted("W&B ended the stream before it was complete.")
        except asyncio.CancelledError:
            if watch.fired is None or task.uncancel() > 0:  # not (only) ours: go on unwinding
                raise
            if watch.fired == watch.CLIENT:
                raise ClientGone from None
            ending = b""
            if watch.fired == watch.SHUTDOWN:
                cut = StreamShutDown(
                    "The gateway is shutting down and cut this stream; retry the request."
                )
            elif watch.received:
                cut = StreamStalled("W&B stopped sending mid-stream (upstream.read_timeout_s).")
            else:
                cut = StreamStalled("W&B sent no stream data within upstream.read_timeout_s.")
        except aiohttp.ClientError:
            ending = b""
            cut = StreamInterrupted("W&B cut the stream before it was complete.")
        finally:
            watch.close()
            self._streams.discard(watch)
        if cut is None:
            return ending
        run.reason = cut.reason
        return ending + sse_event(cut)

    @staticmethod
    async def _relay_chunks(
        chunks: AsyncIterator[bytes],
        meter: StreamMeter,
        client: Responder,
        run: Run,
        call: Call,
        watch: StreamWatch,
    ) -> None:
        """Relay upstream's chunks as they come, to the end of its body or `[DONE]`."""
        if meter.done:
            return
        notes = call.trace if call.trace is not None and call.trace.recording else None
        async for chunk in chunks:
            watch.received += 1
            relayed = meter.feed(chunk)
            if relayed:
                watch.begun += 1
                await client.chunk(relayed)
                watch.ended += 1
                if notes is not None:
                    notes.chunk(relayed)
                if run.first_byte_s is None:
                    run.first_byte_s = time.monotonic() - call.start
            if meter.done:  # the answer is whole: nothing after `[DONE]` is relayed
                return


async def _drain(chunks: AsyncIterator[bytes]) -> None:
    """After `[DONE]`: read to the end of W&B's body (here already, or a moment away), so that
    its connection goes back to the pool; one that lingers past DRAIN_S is closed instead."""
    try:
        async with asyncio.timeout(DRAIN_S):
            async for _ in chunks:
                pass
    except WIRE_ERRORS:  # a timeout too: the connection is closed, not pooled
        pass


def _backoff(attempt: int, base: float, cap: float) -> float:
    """Exponential backoff with equal jitter: half fixed, half random."""
    delay: float = min(cap, base * 2.0 ** (attempt - 1))
    return delay / 2 + random.uniform(0, delay / 2)


def _json(body: bytes) -> object:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None

"""`Tracing`: one span per chat request, OpenTelemetry's GenAI conventions plus the gateway's own.

    start(headers, ...) -> Trace --(the proxy notes the answer)--> finish(trace, ..., call, result)

The span is a CLIENT span named `chat {model}`: the conventions model an inference call from
the caller of the model's API, which the gateway is for W&B. It starts at the request's arrival,
the child of the client's `traceparent` when one came, and the `traceparent` sent upstream is its
own. `sample_ratio` decides by trace id, whatever the client's sampled flag says: the operator
chose to trace these calls. It is written once, at the end, straight to its OTLP bytes: the
attributes a request shares with many others (tenant, key, model, outcome) and the span's name
are kept as bytes, so a span costs its ids, times, tokens and cost (10 us a request in-process,
half what a `ReadableSpan` and the generic encoder took).

What a span never holds: a key of any kind, a header, and with content capture off (the
default; `tenants.NAME.capture_content` overrides `tracing.capture_content`) any text of the
prompt or the answer. With it on, the input messages and the answer (a stream's assembled from
its chunks) go in `gen_ai.input.messages`/`gen_ai.output.messages` and OpenInference's
`input.value`/`output.value`, each cut at `tracing.content_max_chars` characters.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from opentelemetry import trace as otel
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanContext, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from gateway.chat_body import SAMPLING, BodyReader, BodyReaderGone
from gateway.config import Account, Settings, Tenant
from gateway.exchange import Call, Result
from gateway.tracing import wire
from gateway.tracing.batches import Dropped
from gateway.tracing.content import input_attributes, output_messages
from gateway.tracing.export import Export
from gateway.tracing.notes import Trace

logger = logging.getLogger(__name__)

PROVIDER = "wandb.inference"
_SAMPLED = otel.TraceFlags(otel.TraceFlags.SAMPLED)
_SAMPLED_RANDOM = otel.TraceFlags(otel.TraceFlags.SAMPLED | otel.TraceFlags.RANDOM_TRACE_ID)
_UNSET = Status(StatusCode.UNSET)
_PROPAGATOR = TraceContextTextMapPropagator()
_PARAMS = {name: f"gen_ai.request.{name}" for name in SAMPLING}
_PARAMS["max_completion_tokens"] = "gen_ai.request.max_tokens"
_WHOLE = frozenset({"max_tokens", "max_completion_tokens", "seed"})
MAX_KEPT = 4096  # sets of shared attributes kept as bytes; past it they are made again
MAX_OFFLOADED = 4  # big prompts waiting for the child process, at most


class Tracing:
    def __init__(self, settings: Settings, dropped: Dropped, reader: BodyReader) -> None:
        self._settings = settings.tracing
        self._reader = reader
        self._offloaded = 0  # prompts being read in the child process
        self._kept_bytes: dict[tuple[Any, ...], tuple[bytes, bytes]] = {}
        self._export = Export(settings.tracing, dropped)
        self._ids = self._export.ids
        where = urlsplit(self._settings.url)
        logger.info(
            "tracing: spans go to %s://%s%s, %s",
            where.scheme,
            where.hostname,  # no user or password a URL may carry
            "" if where.port is None else f":{where.port}",
            "Weave, with each account's W&B key" if self._settings.weave else "a collector",
        )

    def start(
        self, headers: list[tuple[bytes, bytes]], account: Account, tenant: Tenant, project: str
    ) -> Trace | None:
        """A request's trace, as it comes: the child of the client's `traceparent` when it sent
        a valid one; None past the routes' bound. `project`: the W&B project the request names
        (its tenant's own if it names none, or one it may not use)."""
        route = self._export.route(account, project)
        if route is None:
            return None
        parent = _parent(headers)
        trace_id = parent.trace_id if parent is not None else self._ids.generate_trace_id()
        span_id = self._ids.generate_span_id()
        ids = (trace_id, span_id, self._export.sampled(trace_id))
        capture = self._settings.capture_content
        if tenant.capture_content is not None:
            capture = tenant.capture_content
        cap = self._settings.content_max_chars
        return Trace(route, parent, ids, project, capture, cap, (tenant.name, tenant.project))

    async def finish(
        self, trace: Trace, ended_ns: int, key_id: str, call: Call | None, result: Result
    ) -> None:
        """Record the span, ended at `ended_ns`, whole, for export (when it is sampled and the
        export queue has room for it). With content capture on, a big body's prompt is read in
        the body reader's child process, as its request was, not on the loop; past
        `MAX_OFFLOADED` of them waiting there, a span goes without its prompt. Never raises:
        a span that cannot be made is logged, and its request is no worse for it."""
        if not trace.recording or not self._export.admit():
            return
        try:
            kept = self._kept(trace, key_id, call, result)
            attributes = _variable(trace, call, result)
            if trace.capture and call is not None:
                cap = self._settings.content_max_chars
                attributes |= _output(trace, cap)
                attributes |= await self._input(call.body, cap)
            self._export.put(trace.route, _bytes(trace, result, kept, attributes, ended_ns))
        except Exception:  # a bug of the gateway's; the request was answered and counted
            logger.exception("tracing: request %s got no span", result.status)

    async def _input(self, body: bytes, cap: int) -> dict[str, Any]:
        if len(body) < self._reader.offload_bytes:
            return input_attributes(body, cap)
        if self._offloaded >= MAX_OFFLOADED:
            return {"gateway.content_skipped": "busy"}
        self._offloaded += 1
        try:
            return await self._reader.offload(len(body), input_attributes, body, cap)
        except BodyReaderGone:
            return {"gateway.content_skipped": "reader_gone"}
        finally:
            self._offloaded -= 1

    def _kept(
        self, trace: Trace, key_id: str, call: Call | None, result: Result
    ) -> tuple[bytes, bytes]:
        """The span's name and the attributes its request shares with many others (who, which
        model, how it ended), as bytes: made once for each such set, then a dict hit."""
        key = _shared(trace, key_id, call, result)
        found = self._kept_bytes.get(key)
        if found is None:
            if len(self._kept_bytes) >= MAX_KEPT:
                self._kept_bytes.clear()
            name = f"chat {call.model}" if call is not None else "chat"
            attributes = wire.attributes(9, kept_attributes(*key))
            found = self._kept_bytes[key] = (wire.name(name), attributes)
        return found

    async def close(self) -> None:
        import asyncio

        await asyncio.to_thread(self._export.close)


def _parent(headers: list[tuple[bytes, bytes]]) -> SpanContext | None:
    """The client's span context, when it sent a valid `traceparent` (with its `tracestate`)."""
    carrier: dict[str, str] = {}
    for name, value in headers:
        if name in (b"traceparent", b"tracestate"):
            carrier[name.decode()] = value.decode("latin-1")
    if "traceparent" not in carrier:
        return None
    found = otel.get_current_span(_PROPAGATOR.extract(carrier)).get_span_context()
    return found if found.is_valid else None


def kept_attributes(
    tenant: str,
    key_id: str,
    model: str | None,
    stream: bool | None,
    project: str | None,
    status: int,
    error: str | None,
    retries: int,
    response_model: str | None,
    finish_reasons: tuple[str, ...],
) -> dict[str, Any]:
    """The attributes a span shares with the other requests of the same tenant, key, model and
    outcome (`Tracing._kept`'s key, in its order)."""
    found: dict[str, Any] = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": PROVIDER,
        "openinference.span.kind": "LLM",
        "gateway.tenant": tenant,
        "gateway.key_id": key_id,
        "http.response.status_code": status,
        "gateway.retries": retries,
    }
    if model is not None:
        found["gen_ai.request.model"] = found["llm.model_name"] = model
        found["gen_ai.request.stream"] = stream
    if project is not None:  # another it may use, named by OpenAI-Project
        found["gateway.project"] = project
    if response_model is not None:
        found["gen_ai.response.model"] = response_model
    if finish_reasons:
        found["gen_ai.response.finish_reasons"] = finish_reasons
    if error is not None:
        found["error.type"] = error
    return found


def _shared(trace: Trace, key_id: str, call: Call | None, result: Result) -> tuple[Any, ...]:
    """What a span shares with other requests' (`kept_attributes`' arguments, in order)."""
    tenant, own_project = trace.tenant
    return (
        tenant,
        key_id,
        None if call is None else call.model,
        None if call is None else call.stream,
        trace.project if trace.project != own_project else None,
        result.status,
        _error(result),
        max(result.attempts - 1, 0),
        trace.response_model,
        tuple(trace.finish_reasons),
    )


def _error(result: Result) -> str | None:
    if result.reason is not None:
        return result.reason
    return str(result.status) if result.status >= 400 else None


def _variable(trace: Trace, call: Call | None, result: Result) -> dict[str, Any]:
    """The attributes of this request alone: ids, times, tokens, cost, parameters."""
    found: dict[str, Any] = {"gateway.queue_wait_ms": round(result.queue_s * 1000, 3)}
    if call is not None:
        found["gateway.request_id"] = call.request_id
        _params(call.read_fields, found)
    _answer(trace, result, found)
    return found


def _bytes(
    trace: Trace,
    result: Result,
    kept: tuple[bytes, bytes],
    attributes: dict[str, Any],
    ended_ns: int,
) -> bytes:
    parent = trace.parent
    return wire.client_span(
        trace.trace_id,
        trace.span_id,
        trace.tracestate,
        None if parent is None else (parent.span_id, parent.is_remote),
        kept[0],
        trace.start_ns,
        ended_ns,
        kept[1] + wire.attributes(9, attributes),
        _error(result),
    )


def readable(
    trace: Trace, key_id: str, call: Call | None, result: Result, ended_ns: int
) -> ReadableSpan:
    """The same span as the SDK's `ReadableSpan` (for tests: `wire.span` of it is the bytes
    `finish` sends, content aside)."""
    attributes = kept_attributes(*_shared(trace, key_id, call, result))
    attributes |= _variable(trace, call, result)
    parent: SpanContext | None = trace.parent
    error = _error(result)
    return ReadableSpan(
        name=f"chat {call.model}" if call is not None else "chat",
        context=SpanContext(
            trace.trace_id,
            trace.span_id,
            is_remote=False,
            trace_flags=_SAMPLED if parent is not None else _SAMPLED_RANDOM,
            trace_state=parent.trace_state if parent is not None else None,
        ),
        parent=parent,
        resource=trace.route.resource,
        attributes=attributes,
        kind=otel.SpanKind.CLIENT,
        status=Status(StatusCode.ERROR, error) if error is not None else _UNSET,
        start_time=trace.start_ns,
        end_time=ended_ns,
        instrumentation_scope=trace.route.scope,
    )


def _params(fields: Mapping[str, Any], found: dict[str, Any]) -> None:
    """The request's sampling parameters the conventions name, typed as they say: a double for
    temperature, top_p and the penalties, an int for max_tokens and seed (skipped when not a
    whole number; an OTLP int is 64 bits)."""
    for name, value in fields.items():
        attribute = _PARAMS.get(name)
        kind = type(value)
        if attribute is None or (kind is not int and kind is not float) or abs(value) >= 2**63:
            continue  # not one of them, or not a number (a bool is neither int nor float here)
        if name not in _WHOLE:
            found[attribute] = float(value)
        elif kind is int or value.is_integer():
            found[attribute] = int(value)


def _answer(trace: Trace, result: Result, found: dict[str, Any]) -> None:
    if trace.response_id is not None:
        found["gen_ai.response.id"] = trace.response_id
    if result.first_byte_s is not None:
        found["gateway.time_to_first_chunk_ms"] = round(result.first_byte_s * 1000, 3)
    if result.cost_usd is not None:
        found["gateway.cost_usd"] = result.cost_usd
    usage = result.usage
    if usage is not None:
        found["gen_ai.usage.input_tokens"] = found["llm.token_count.prompt"] = usage.prompt_tokens
        found["gen_ai.usage.output_tokens"] = found["llm.token_count.completion"] = (
            usage.completion_tokens
        )
        if usage.cached_tokens:
            found["gen_ai.usage.cache_read.input_tokens"] = usage.cached_tokens
        if usage.reasoning_tokens:
            found["gen_ai.usage.reasoning.output_tokens"] = usage.reasoning_tokens
        if usage.estimated:
            found["gateway.usage.estimated_tokens"] = usage.estimated


def _output(trace: Trace, cap: int) -> dict[str, Any]:
    """The answer (text and tool calls), each attribute within `cap` characters of text."""
    output = trace.output()
    if output is None:
        return {}
    text, calls = output
    return {
        "output.value": text[:cap],
        "gen_ai.output.messages": output_messages(text, calls, trace.finish_reasons, cap),
    }

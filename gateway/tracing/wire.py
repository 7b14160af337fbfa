"""Spans to OTLP protobuf bytes (`ExportTraceServiceRequest`), written directly.

The SDK's encoder builds a protobuf object for every attribute of every span and then
serializes them: 140 us a span of 28 attributes here, measured, more than the whole rest of
tracing a request. The same message written field by field costs a fraction of that, and an
attribute seen before (most are: the tenant, the key, the model, the status) costs a dict hit:
its bytes are kept. What is written is exactly what `opentelemetry-proto` decodes to the same
message as the SDK's encoder gives (tests/unit/test_tracing_wire.py compares them); sending it
stays the SDK's OTLP/HTTP exporter's work (`OtlpExporter`).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanKind, StatusCode

_CACHED = 4096  # attribute encodings kept; past it the cache starts again
_HAS_IS_REMOTE, _IS_REMOTE = 0x100, 0x200  # OTLP's SpanFlags
_KINDS = {kind: b"\x30" + bytes((kind.value + 1,)) for kind in SpanKind}  # OTLP's are 1 up
# By field number: (key, the value's type, the value) -> the KeyValue's bytes.
_caches: list[dict[tuple[str, type, Any], bytes]] = [{} for _ in range(16)]
_names: dict[str, bytes] = {}  # an attribute's name as a KeyValue's first field
# The attributes whose values repeat from span to span (a resource's, a tenant's, a model's, a
# status): their bytes are kept. Ids, counts and times are written each time.
KEPT = frozenset(
    {
        "service.name",
        "service.version",
        "telemetry.sdk.language",
        "telemetry.sdk.name",
        "telemetry.sdk.version",
        "wandb.entity",
        "wandb.project",
        "gen_ai.operation.name",
        "gen_ai.provider.name",
        "gen_ai.request.model",
        "gen_ai.response.model",
        "gen_ai.request.stream",
        "gen_ai.response.finish_reasons",
        "llm.model_name",
        "openinference.span.kind",
        "http.response.status_code",
        "error.type",
        "gateway.tenant",
        "gateway.key_id",
        "gateway.project",
        "gateway.retries",
    }
)


_SMALL = [bytes((n,)) for n in range(0x80)]  # a varint under 128 is its one byte


def _varint(n: int) -> bytes:
    if 0 <= n < 0x80:
        return _SMALL[n]
    if n < 0:
        n += 1 << 64  # int64 as protobuf writes it: two's complement, ten bytes
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_TAG = [_varint(n << 3 | 2) for n in range(16)]  # a length-delimited field's tag, by number
_PACK_D, _PACK_Q = struct.Struct("<d").pack, struct.Struct("<Q").pack


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field: a string, bytes, or an embedded message."""
    n = len(payload)
    return _TAG[number] + (_SMALL[n] if n < 0x80 else _varint(n)) + payload


def _value(value: Any) -> bytes:
    """An `AnyValue`'s fields (the oneof is written even when it holds its default)."""
    kind = type(value)
    if kind is str:  # a lone surrogate cannot be UTF-8: it is written as "?"
        return _field(1, value.encode("utf-8", "replace"))
    if kind is int:
        return b"\x18" + _varint(value)
    if kind is float:
        return b"\x21" + _PACK_D(value)
    if kind is bool:
        return b"\x10\x01" if value else b"\x10\x00"
    if isinstance(value, str):
        return _field(1, value.encode("utf-8", "replace"))
    if isinstance(value, int):
        return b"\x18" + _varint(int(value))
    if isinstance(value, float):
        return b"\x21" + _PACK_D(value)
    if isinstance(value, bytes):
        return _field(7, value)
    if isinstance(value, Sequence):
        return _field(5, b"".join([_field(1, _value(v)) for v in value]))
    return b""  # None (the SDK keeps no other kind)


def attributes(number: int, pairs: Mapping[str, Any] | None) -> bytes:
    """The `KeyValue`s of a mapping, each as field `number`: one loop, the common kinds of
    value written inline (a span's twenty-odd attributes are most of its encoding's time)."""
    if not pairs:
        return b""
    tag, cache, names, small = _TAG[number], _caches[number & 0xF], _names, _SMALL
    out: list[bytes] = []
    append = out.append
    for key, value in pairs.items():
        kind = type(value)
        if key in KEPT:
            kept = (key, kind, value)
            found = cache.get(kept)
            if found is None:
                if len(cache) >= _CACHED:
                    cache.clear()
                found = cache[kept] = _field(
                    number, _field(1, key.encode()) + _field(2, _value(value))
                )
            append(found)
            continue
        name = names.get(key)
        if name is None:
            name = _field(1, key.encode())
            if len(names) < _CACHED:
                names[key] = name
        if kind is str:
            text = value.encode("utf-8", "replace")  # a lone surrogate is written as "?"
            n = len(text)
            any_value = b"\x0a" + (small[n] if n < 0x80 else _varint(n)) + text
        elif kind is int:
            any_value = b"\x18" + _varint(value)
        elif kind is float:
            any_value = b"\x21" + _PACK_D(value)
        else:
            any_value = _value(value)
        n = len(any_value)
        pair = name + b"\x12" + (small[n] if n < 0x80 else _varint(n)) + any_value
        n = len(pair)
        append(tag + (small[n] if n < 0x80 else _varint(n)) + pair)
    return b"".join(out)


_CLIENT = _KINDS[SpanKind.CLIENT]
_EMPTY_STATUS = b"\x7a\x00"  # an empty Status, as the SDK writes it


def name(text: str) -> bytes:
    """A span's name, as its field."""
    return _field(5, text.encode("utf-8", "replace"))


def client_span(
    trace_id: int,
    span_id: int,
    state: str | None,
    parent: tuple[int, bool] | None,
    name_field: bytes,
    start_ns: int,
    end_ns: int,
    attribute_fields: bytes,
    error: str | None,
) -> bytes:
    """A CLIENT `Span` message's bytes, from its parts (`state`: the trace state it carries on,
    as its header; `parent`: the parent's span id and whether it is remote; `attribute_fields`:
    its KeyValues, written): what `span()` writes for the same span as a `ReadableSpan`,
    without making one."""
    status = _EMPTY_STATUS  # StatusCode.ERROR is 2
    if error is not None:
        status = _field(15, _field(2, error.encode("utf-8", "replace")) + b"\x18\x02")
    head = (trace_id, span_id, state, parent, name_field, _CLIENT, start_ns, end_ns)
    return _span(*head, attribute_fields, 0, status)


def _span(
    trace_id: int,
    span_id: int,
    state: str | None,
    parent: tuple[int, bool] | None,
    name_field: bytes,
    kind_field: bytes,
    start_ns: int,
    end_ns: int,
    attribute_fields: bytes,
    dropped: int,
    status_field: bytes,
) -> bytes:
    parts = [b"\x0a\x10" + trace_id.to_bytes(16, "big"), b"\x12\x08" + span_id.to_bytes(8, "big")]
    if state:
        parts.append(_field(3, state.encode()))
    flags = _HAS_IS_REMOTE
    if parent is not None:
        parts.append(b"\x22\x08" + parent[0].to_bytes(8, "big"))
        flags |= _IS_REMOTE if parent[1] else 0
    parts += [name_field, kind_field, b"\x39" + _PACK_Q(start_ns), b"\x41" + _PACK_Q(end_ns)]
    parts.append(attribute_fields)
    if dropped:
        parts.append(b"\x50" + _varint(dropped))
    parts += [status_field, b"\x85\x01" + struct.pack("<I", flags)]
    return b"".join(parts)


def _span_attributes(span: ReadableSpan) -> Mapping[str, Any] | None:
    """A span's attributes as the plain dict under them, where there is one: the public view of
    a live span's reads each item through two mapping layers and a lock, a third of the
    encoding's time."""
    kept = getattr(span, "_attributes", None)
    kept = getattr(kept, "_dict", kept)
    return kept if isinstance(kept, dict) else span.attributes


def span(span: ReadableSpan) -> bytes:
    """A `ReadableSpan`'s `Span` message bytes (any kind and status: the tests' bridge between
    the SDK's spans and `client_span`, which the gateway sends)."""
    context = span.get_span_context()
    assert context is not None and span.start_time is not None and span.end_time is not None
    parent = span.parent
    status = span.status
    code = status.status_code
    if status.description or code is not StatusCode.UNSET:
        message = _field(2, status.description.encode()) if status.description else b""
        status_field = _field(15, message + (b"\x18" + _varint(code.value) if code.value else b""))
    else:
        status_field = _EMPTY_STATUS
    return _span(
        context.trace_id,
        context.span_id,
        context.trace_state.to_header() if context.trace_state else None,
        None if parent is None else (parent.span_id, parent.is_remote),
        name(span.name),
        _KINDS[span.kind],
        span.start_time,
        span.end_time,
        attributes(9, _span_attributes(span)),
        span.dropped_attributes,
        status_field,
    )


Head = tuple[bytes, bytes, bytes]  # a resource's, its scope's, and the resource's schema URL


def head(resource: Resource, scope: InstrumentationScope | None) -> Head:
    """What every request of a resource's and scope's spans starts with (and ends with)."""
    scope_part = b""
    if scope is not None:
        version = _field(2, scope.version.encode()) if scope.version else b""
        scope_part = _field(1, _field(1, scope.name.encode()) + version)
    schema = _field(3, resource.schema_url.encode()) if resource.schema_url else b""
    return _field(1, attributes(1, resource.attributes)), scope_part, schema


def request(start: Head, spans: Sequence[bytes]) -> bytes:
    """An `ExportTraceServiceRequest` of spans (each `client_span()`'s bytes) of one resource
    and scope."""
    resource, scope, schema = start
    return _field(1, resource + _scope_spans(scope, spans, "") + schema)


def _scope_spans(scope: bytes, spans: Sequence[bytes], schema_url: str) -> bytes:
    tail = _field(3, schema_url.encode()) if schema_url else b""
    return _field(2, scope + b"".join([_field(2, s) for s in spans]) + tail)


class OtlpExporter(OTLPSpanExporter):
    """The SDK's OTLP/HTTP exporter (its transport, retries, compression and headers) sending
    what `request` wrote."""

    def __init__(self, *, endpoint: str, headers: dict[str, str], timeout: float) -> None:
        super().__init__(endpoint=endpoint, headers=headers, timeout=timeout)
        # Only these headers and the SDK's own (user-agent, content-encoding): the SDK also
        # merges OTEL_EXPORTER_OTLP_(TRACES_)HEADERS from the environment into every exporter,
        # which would send a collector's credentials to Weave. (`_client._headers`: pinned SDK.)
        wanted = {name.lower() for name in headers} | {"user-agent", "content-encoding"}
        sent: dict[str, str] = self._client._headers
        for name in [n for n in sent if n.lower() not in wanted]:
            del sent[name]

    def close(self) -> None:
        self.shutdown()  # type: ignore[no-untyped-call]

    def send(self, data: bytes) -> bool:
        """One export request, already encoded; whether the collector took it."""
        return not self._shutdown and bool(self._client.export(data).success)

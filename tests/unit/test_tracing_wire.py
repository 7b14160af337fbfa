"""The gateway's OTLP encoder writes what the SDK's own encoder gives, as opentelemetry-proto
decodes both: every attribute type, parents remote and local, trace state, status, several
resources and scopes in one batch."""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any, ClassVar

from opentelemetry import trace as otel
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from gateway.tracing import wire

ATTRIBUTES = {
    "s": "text",
    "gateway.tenant": "kept",  # one of wire.KEPT
    "empty": "",
    "unicode": "héllo ✓ \U0001f600",
    "yes": True,
    "no": False,
    "zero": 0,
    "int": 123456789,
    "negative": -42,
    "big": 2**62,
    "float": 0.5,
    "fzero": 0.0,
    "strings": ("stop", "length"),
    "ints": (1, 2, 3),
    "bools": (True, False),
    "floats": (1.5,),
}


class Keep(SpanExporter):
    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []

    def export(self, spans: object) -> SpanExportResult:
        self.spans.extend(spans)  # type: ignore[arg-type]
        return SpanExportResult.SUCCESS


def provider(keep: Keep, **resource: str) -> TracerProvider:
    made = TracerProvider(resource=Resource.create(resource), shutdown_on_exit=False)
    made.add_span_processor(SimpleSpanProcessor(keep))
    return made


def encode(spans: list[ReadableSpan]) -> bytes:
    """An export request of any spans, grouped by resource, then by scope, as the SDK's
    encoder groups them, made of the gateway's parts (`wire.head`, `wire.span`)."""
    groups: dict[int, dict[int, list[ReadableSpan]]] = defaultdict(lambda: defaultdict(list))
    for found in spans:
        groups[id(found.resource)][id(found.instrumentation_scope)].append(found)
    out = []
    for scopes in groups.values():
        parts = []
        for members in scopes.values():
            scope = members[0].instrumentation_scope
            resource, scope_part, schema = wire.head(members[0].resource, scope)
            url = scope.schema_url if scope is not None and scope.schema_url else ""
            parts.append(wire._scope_spans(scope_part, [wire.span(m) for m in members], url))
        out.append(wire._field(1, resource + b"".join(parts) + schema))
    return b"".join(out)


def decoded(data: bytes) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    request.ParseFromString(data)
    return request


def spans() -> list[ReadableSpan]:
    keep = Keep()
    a = provider(keep, **{"service.name": "a", "wandb.project": "p"})
    b = provider(keep, **{"service.name": "b"})
    remote = TraceContextTextMapPropagator().extract(
        {
            "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "tracestate": "x=1,y=2",
        }
    )
    one = a.get_tracer("gw", "1.0").start_span("chat m", remote, otel.SpanKind.CLIENT)
    one.set_attributes(ATTRIBUTES)
    one.set_status(otel.StatusCode.ERROR, "upstream_5xx")
    local = otel.set_span_in_context(one, Context())
    two = a.get_tracer("other").start_span("inner", local, otel.SpanKind.INTERNAL)
    two.set_attribute("only", 1)
    two.end()
    one.end()
    three = b.get_tracer("gw").start_span(
        "chat", None, otel.SpanKind.SERVER, start_time=time.time_ns()
    )
    three.set_status(otel.StatusCode.OK)
    three.end()
    four = b.get_tracer("gw").start_span("bare")
    four.end()
    return keep.spans


def test_the_same_message_as_the_sdks_encoder() -> None:
    batch = spans()
    ours = decoded(encode(batch))
    theirs = decoded(encode_spans(batch).SerializeToString())
    assert ours == theirs
    assert len(ours.resource_spans) == 2
    assert sum(len(s.spans) for r in ours.resource_spans for s in r.scope_spans) == 4


def test_cached_attributes_encode_the_same_twice() -> None:
    batch = spans()
    first, second = encode(batch), encode(batch)
    assert first == second
    assert decoded(second) == decoded(encode_spans(batch).SerializeToString())


def test_true_and_one_are_not_confused_by_the_cache() -> None:
    key = "gen_ai.request.stream"
    assert key in wire.KEPT
    assert wire.attributes(9, {key: True}) != wire.attributes(9, {key: 1})
    assert wire.attributes(9, {key: 1.0}) != wire.attributes(9, {key: 1})


def test_a_routes_request_is_the_sdks_message_for_its_spans() -> None:
    """What `Batches` sends: one resource's and scope's spans, each encoded as it ended."""
    keep = Keep()
    route = provider(keep, **{"service.name": "g", "wandb.entity": "acme"})
    tracer = route.get_tracer("inference-gateway")
    for n in range(3):
        one = tracer.start_span(f"chat {n}", None, otel.SpanKind.CLIENT, {"n": n, "x": "y"})
        one.end()
    first = keep.spans[0]
    start = wire.head(first.resource, first.instrumentation_scope)
    ours = decoded(wire.request(start, [wire.span(s) for s in keep.spans]))
    assert ours == decoded(encode_spans(keep.spans).SerializeToString())


def test_a_requests_span_as_sent_is_the_sdks_message_of_its_readable_span() -> None:
    """`Tracing.finish` writes its span's bytes from parts (`wire.client_span`, the shared
    attributes kept as bytes): the SDK's encoder, given the same span as a `ReadableSpan`
    (`spans.readable`), decodes to the same message, for every shape a request's span takes."""
    import asyncio

    from gateway.chat_body import BodyReader
    from gateway.config import parse_settings
    from gateway.cost import Usage
    from gateway.exchange import Result
    from gateway.tracing import spans as spans_module
    from tests.procs import base_config

    config = base_config("http://127.0.0.1:1", tracing={"endpoint": "http://127.0.0.1:9/t"})
    settings = parse_settings(config, env={})
    sent: list[bytes] = []
    tracing = spans_module.Tracing(settings, lambda r, n: None, BodyReader())
    tracing._export.put = lambda route, data: sent.append(data)  # type: ignore[method-assign]
    tenant = settings.tenants["search"]
    account = settings.accounts[tenant.account]

    class Call:
        model, stream, request_id, body = "m/x", True, "req_1", b"{}"
        read_fields: ClassVar[dict[str, Any]] = {"model": "m/x", "temperature": 0.5, "seed": 7}

    client = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    cases: list[tuple[list[tuple[bytes, bytes]], str, Any, Result]] = [
        ([], tenant.project, Call(), Result(200, None, 0.5, 0.01, 1, Usage(3, 4), 0.2)),
        (
            [(b"traceparent", client.encode()), (b"tracestate", b"a=1,b=2")],
            "acme/other",
            Call(),
            Result(502, "upstream_error", 1.0, 0.0, 3, Usage(3, 0, estimated=1), None, 1e-6, True),
        ),
        ([], tenant.project, None, Result(401, None, 0.001)),
    ]
    try:
        for headers, project, call, result in cases:
            trace = tracing.start(headers, account, tenant, project)
            assert trace is not None
            trace.answer({"id": "c1", "model": "m/x", "choices": [{"finish_reason": "stop"}]})
            for _ in range(2):  # the second time, the shared attributes come from the cache
                asyncio.run(tracing.finish(trace, 123, "key_1", call, result))
                span = spans_module.readable(trace, "key_1", call, result, 123)
                ours = wire.request(trace.route.head, [sent.pop()])
                theirs = decoded(encode_spans([span]).SerializeToString())
                assert str(decoded(ours)) == str(theirs)
    finally:
        tracing._export.close(1)

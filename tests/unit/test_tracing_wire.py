"""The gateway's OTLP encoder writes what the SDK's own encoder gives, as opentelemetry-proto
decodes both: every attribute type, parents remote and local, trace state, status, several
resources and scopes in one batch."""

from __future__ import annotations

import time

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
    ours = decoded(wire.encode(batch))
    theirs = decoded(encode_spans(batch).SerializeToString())
    assert ours == theirs
    assert len(ours.resource_spans) == 2
    assert sum(len(s.spans) for r in ours.resource_spans for s in r.scope_spans) == 4


def test_cached_attributes_encode_the_same_twice() -> None:
    batch = spans()
    first, second = wire.encode(batch), wire.encode(batch)
    assert first == second
    assert decoded(second) == decoded(encode_spans(batch).SerializeToString())


def test_true_and_one_are_not_confused_by_the_cache() -> None:
    key = "gen_ai.request.stream"
    assert key in wire.KEPT
    assert wire._key_value(9, key, True) != wire._key_value(9, key, 1)
    assert wire._key_value(9, key, 1.0) != wire._key_value(9, key, 1)


def test_an_empty_batch() -> None:
    assert wire.encode([]) == b""


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

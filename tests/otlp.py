"""A real OTLP/HTTP receiver in the test process: it takes protobuf trace exports on a free port,
keeps every request as it came (path, headers, bytes), and decodes them with opentelemetry-proto."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from tests.poll import until_sync
from tests.procs import free_port


@dataclass
class Export:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Received:
    """One span as the receiver decoded it, with its resource's attributes."""

    span: Span
    attributes: dict[str, Any]
    resource: dict[str, Any]
    headers: dict[str, str]

    @property
    def trace_id(self) -> str:
        return self.span.trace_id.hex()

    @property
    def span_id(self) -> str:
        return self.span.span_id.hex()


def value(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return tuple(value(x) for x in v.array_value.values)
    return getattr(v, kind) if kind else None


class Receiver:
    def __init__(self) -> None:
        self.exports: list[Export] = []
        self.status = 200  # what the next exports get
        self.port = free_port()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                headers = {k.lower(): v for k, v in self.headers.items()}
                receiver.exports.append(Export(self.path, headers, body))
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(receiver.status)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def url(self, path: str = "/v1/traces") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def spans(self) -> list[Received]:
        found: list[Received] = []
        for export in list(self.exports):
            request = ExportTraceServiceRequest()
            request.ParseFromString(export.body)
            for rs in request.resource_spans:
                resource = {a.key: value(a.value) for a in rs.resource.attributes}
                for scope in rs.scope_spans:
                    for span in scope.spans:
                        attributes = {a.key: value(a.value) for a in span.attributes}
                        found.append(Received(span, attributes, resource, export.headers))
        return found

    def wait(self, count: int, where: Any = None, timeout_s: float = 10.0) -> list[Received]:
        """At least `count` spans (those `where(span)` is true of), exported by then."""

        def arrived() -> list[Received] | None:
            spans = [s for s in self.spans() if where is None or where(s)]
            return spans if len(spans) >= count else None

        spans = until_sync(arrived, timeout_s, f"{count} spans")
        assert spans is not None
        return spans

    def of(self, request_id: str, timeout_s: float = 10.0) -> Received:
        """The span of one request, by its x-request-id."""
        spans = self.wait(1, lambda s: s.attributes.get("gateway.request_id") == request_id)
        return spans[0]

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def receiver() -> Iterator[Receiver]:
    r = Receiver()
    try:
        yield r
    finally:
        r.stop()

"""`Batches`: the span processor. A span is encoded when it ends, on the event loop, into a
bounded queue; one thread sends the queue in batches, each route's spans in one OTLP/HTTP
request by that route's exporter (the SDK's, see `wire.OtlpExporter`).

Why not the SDK's BatchSpanProcessor: it queues span objects and encodes a whole batch on its
thread, which holds the GIL for milliseconds at a time against the event loop (measured: p50
+11 ms at 64 connections, and 20% more CPU a request). Encoded as it ends, a span costs the
loop its encoding's 15 us and nothing else; the thread only waits on sockets.

Spans wait in a queue of `tracing.max_queue`; past it they are dropped, and so are the spans of
an export that failed (after the SDK's own retries, within `export_timeout_s`). Both count in
`gateway_trace_spans_dropped_total{reason}`. A full queue is logged once, until it drains; a
failing export once, when it stops working, and once more when it works again: never once a
span or a batch. What the SDK logs itself is kept for that line, with every secret the gateway
holds masked, and nothing else of it is written.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass

from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from gateway.tracing import wire

logger = logging.getLogger(__name__)

SDK_LOGGER = "opentelemetry"
BATCH = 512  # spans a request at most
DELAY_S = 1.0  # the longest a span waits for its batch
Dropped = Callable[[str, int], None]  # (reason, spans)


@dataclass(frozen=True)
class Route:
    """Where a resource's spans go: the head of their request, and the exporter sending it."""

    resource: Resource
    scope: InstrumentationScope
    head: wire.Head  # the resource and scope, as `wire.request` takes them
    exporter: wire.OtlpExporter


class _FirstWords(logging.Handler):
    """Keeps the SDK's first warning since the last export that worked, instead of writing it
    (it names the cause; the last one only says the retries are over)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.message = ""

    def emit(self, record: logging.LogRecord) -> None:
        if not self.message:
            try:
                self.message = record.getMessage()[:300]
            except Exception:  # a record that cannot be formatted says nothing
                self.message = "?"


class Batches(SpanProcessor):
    def __init__(self, max_queue: int, dropped: Dropped, secrets: Callable[[], set[str]]) -> None:
        self.routes: dict[int, Route] = {}  # id(resource) -> its route
        self._max_queue = max_queue
        self._dropped = dropped
        self._secrets = secrets
        self._queue: deque[tuple[int, bytes]] = deque()  # (id(resource), the span's bytes)
        self._wake = threading.Event()
        self._stopping = False
        self._full = self._failing = False
        self.words = _FirstWords()
        sdk = logging.getLogger(SDK_LOGGER)
        sdk.addHandler(self.words)
        sdk.propagate = False
        self._thread = threading.Thread(target=self._run, name="trace-export", daemon=True)
        self._thread.start()

    def room(self) -> bool:
        """Whether one more span fits in the queue; if not, it is counted as dropped."""
        if len(self._queue) < self._max_queue:
            return True
        self._dropped("queue_full", 1)
        if not self._full:
            self._full = True
            logger.warning(
                "trace export: %d spans are waiting, so new spans are dropped (counted in "
                "gateway_trace_spans_dropped_total) until the queue drains",
                self._max_queue,
            )
        return False

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        pass

    def on_end(self, span: ReadableSpan) -> None:
        if self._stopping or not self.room():
            return
        self._queue.append((id(span.resource), wire.span(span)))
        if len(self._queue) >= BATCH:
            self._wake.set()

    def _run(self) -> None:
        while not self._stopping:
            woken = self._wake.wait(DELAY_S)
            self._wake.clear()
            self._send(whole_only=woken)
        self._send(whole_only=False)

    def _send(self, whole_only: bool) -> None:
        """What is queued, a batch at a time: only whole batches when woken by a full one (a
        request costs the same for 10 spans as for 500), everything once DELAY_S is up."""
        queue = self._queue
        while len(queue) >= (BATCH if whole_only else 1):
            groups: dict[int, list[bytes]] = defaultdict(list)
            for _ in range(min(BATCH, len(queue))):
                key, data = queue.popleft()
                groups[key].append(data)
            if len(queue) < self._max_queue // 2:
                self._full = False
            failed = 0
            for key, spans in groups.items():
                route = self.routes.get(key)
                if route is None or not route.exporter.send(wire.request(route.head, spans)):
                    failed += len(spans)
            self._health(failed)

    def _health(self, failed: int) -> None:
        if not failed:
            self.words.message = ""
            if self._failing:
                self._failing = False
                logger.warning("trace export works again")
            return
        self._dropped("export_failed", failed)
        if not self._failing:
            self._failing = True
            message = self.words.message or "no reason given"
            for secret in self._secrets():
                message = message.replace(secret, "***")
            logger.warning(
                "trace export failed (%s): spans are dropped and counted in "
                "gateway_trace_spans_dropped_total until it works again",
                message,
            )

    def shutdown(self, timeout_s: float = 5.0) -> None:
        """Send what is queued, waiting up to `timeout_s` (blocking: run it in a thread); a
        collector slower than that is left to the daemon thread, which does not hold up exit."""
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout_s)
        for route in self.routes.values():
            route.exporter.close()
        logging.getLogger(SDK_LOGGER).removeHandler(self.words)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        self._wake.set()
        return True

"""`Batches`: the export queue. A span, written to its bytes when its request ends (on the event
loop, `spans.Tracing.finish`), waits in a bounded queue; one thread sends the queue in batches,
each route's spans in one OTLP/HTTP request by that route's exporter (the SDK's, see
`wire.OtlpExporter`).

Why not the SDK's BatchSpanProcessor: it queues span objects and encodes a whole batch on its
thread, which holds the GIL for milliseconds at a time against the event loop (measured: p50
+11 ms at 64 connections, and 20% more CPU a request). Written as it ends, a span costs the
loop its writing and nothing else; the thread only joins bytes and waits on sockets.

Spans wait in a queue of `tracing.max_queue` and `MAX_QUEUE_BYTES`; past it they are dropped,
and so are the spans of an export that failed (after the SDK's own retries, within
`export_timeout_s`). Both count in `gateway_trace_spans_dropped_total{reason}`. A full queue is
logged once, until it drains; a route's failing export once, when it stops working, and once
more when it works again (another route's state says nothing of it): never once a span or a
batch. What the SDK logs itself is kept for that line, with every secret the gateway
holds masked, and nothing else of it is written.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from gateway.tracing import wire

logger = logging.getLogger(__name__)

SDK_LOGGER = "opentelemetry"
BATCH = 512  # spans a request at most
BATCH_BYTES = 4 << 20  # and encoded bytes (a collector's default bound is 4 to 20 MiB)
MAX_QUEUE_BYTES = 64 << 20  # encoded bytes waiting, all routes together
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
                self.message = record.getMessage()[:4096]  # masked, then cut, when logged
            except Exception:  # a record that cannot be formatted says nothing
                self.message = "?"


def _where(route: Route | None) -> str:
    """` to ENTITY/PROJECT` for a Weave route, for the log; nothing for a collector."""
    attributes = route.resource.attributes if route is not None and route.resource else {}
    project = attributes.get("wandb.project")
    return f" to {attributes.get('wandb.entity')}/{project}" if project else ""


def masked(text: str, secrets: set[str]) -> str:
    """`text` with every secret, as it is and as Python or JSON would escape it, replaced."""
    for secret in secrets:
        for form in {secret, repr(secret)[1:-1], secret.encode("unicode_escape").decode()}:
            if form:
                text = text.replace(form, "***")
    return text


class Batches:
    def __init__(self, max_queue: int, dropped: Dropped, secrets: Callable[[], set[str]]) -> None:
        self.routes: dict[int, Route] = {}  # id(resource) -> its route
        self._max_queue = max_queue
        self._dropped = dropped
        self._secrets = secrets
        self._queue: deque[tuple[int, bytes]] = deque()  # (id(resource), the span's bytes)
        # Encoded bytes queued, ever and sent: each written by one thread only (the loop, the
        # export thread), so neither loses an update; the difference is what waits.
        self._added = self._taken = 0
        self._wake = threading.Event()
        self._stopping = False
        self._full = False
        self._failing: set[int] = set()  # the routes whose last export failed
        self.words = _FirstWords()
        sdk = logging.getLogger(SDK_LOGGER)
        sdk.addHandler(self.words)
        sdk.propagate = False
        self._thread = threading.Thread(target=self._run, name="trace-export", daemon=True)
        self._thread.start()

    def room(self) -> bool:
        """Whether one more span fits in the queue; if not, it is counted as dropped."""
        if len(self._queue) < self._max_queue and self.waiting() < MAX_QUEUE_BYTES:
            return True
        self._dropped("queue_full", 1)
        if not self._full:
            self._full = True
            logger.warning(
                "trace export: %d spans (%d bytes) are waiting, so new spans are dropped "
                "(counted in gateway_trace_spans_dropped_total) until the queue drains",
                len(self._queue),
                self.waiting(),
            )
        return False

    def waiting(self) -> int:
        """Encoded bytes in the queue."""
        return self._added - self._taken

    def offer(self, key: int, data: bytes) -> None:
        """A span of the route `key`, queued if there is room (else counted as dropped)."""
        if not self._stopping and self.room():
            self.put(key, data)

    def put(self, key: int, data: bytes) -> None:
        """One encoded span of the route `key`, queued (on the loop)."""
        self._queue.append((key, data))
        self._added += len(data)
        if len(self._queue) >= BATCH or self.waiting() >= BATCH_BYTES:
            self._wake.set()

    def _run(self) -> None:
        while not self._stopping:
            woken = self._wake.wait(DELAY_S)
            self._wake.clear()
            self._guarded(whole_only=woken)
        self._guarded(whole_only=False)

    def _guarded(self, whole_only: bool) -> None:
        try:
            self._send(whole_only)
        except Exception:  # a bug: logged, and the thread goes on sending
            logger.exception("trace export: a batch was lost")

    def _send(self, whole_only: bool) -> None:
        """What is queued, a batch at a time (`BATCH` spans or `BATCH_BYTES`, whichever comes
        first): only whole batches when woken by a full one (a request costs the same for 10
        spans as for 500), everything once DELAY_S is up."""
        queue = self._queue
        while queue and not (whole_only and len(queue) < BATCH and self.waiting() < BATCH_BYTES):
            groups: dict[int, list[bytes]] = defaultdict(list)
            count = size = 0
            while queue and count < BATCH and size < BATCH_BYTES:
                key, data = queue[0]
                if size and size + len(data) > BATCH_BYTES:
                    break
                queue.popleft()
                count += 1
                size += len(data)
                groups[key].append(data)
            self._taken += size
            if len(queue) < self._max_queue // 2 and self.waiting() < MAX_QUEUE_BYTES // 2:
                self._full = False
            for key, spans in groups.items():
                route = self.routes.get(key)
                self.words.message = ""  # what the SDK says now is about this route
                if route is None or not route.exporter.send(wire.request(route.head, spans)):
                    self._dropped("export_failed", len(spans))
                    self._failed(key, route)
                elif key in self._failing:
                    self._failing.discard(key)
                    logger.warning("trace export works again%s", _where(route))

    def _failed(self, key: int, route: Route | None) -> None:
        """Logged once a route, when its export stops working (another's working or failing
        says nothing about it)."""
        if key in self._failing:
            return
        self._failing.add(key)
        message = masked(self.words.message or "no reason given", self._secrets())[:300]
        logger.warning(
            "trace export failed%s (%s): its spans are dropped and counted in "
            "gateway_trace_spans_dropped_total until it works again",
            _where(route),
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

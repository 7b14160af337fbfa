"""Where spans go: one bounded queue, one export thread, one OTLP/HTTP exporter per route.

A route is where a span is sent and as whom. Without Weave there is one: `tracing.endpoint`
with `tracing.headers`. With `weave: true` there is one per account and W&B project: the
account's W&B key in `wandb-api-key`, and a resource naming `wandb.entity` and `wandb.project`
(Weave files a span under its resource's project). Each route is a `TracerProvider` of its own,
since a resource belongs to a provider; all of them end spans into the same
`BatchSpanProcessor`, whose exporter hands each batch's spans to their route's exporter.

Spans wait in a queue of `tracing.max_queue`; past it they are dropped, and so are the spans of
an export that failed (after the SDK's own retries, within `export_timeout_s`). Both count in
`gateway_trace_spans_dropped_total{reason}`. A failure is logged once, when export stops
working, and once more when it works again: never once a span or a batch. What the SDK logs
itself is kept for that line, with every secret the gateway holds masked, and nothing else of
it is written.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Callable, Sequence

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, TraceIdRatioBased
from opentelemetry.trace import Tracer

from gateway.config import Account
from gateway.tracing.settings import TracingSettings
from gateway.tracing.wire import OtlpExporter

logger = logging.getLogger(__name__)

MAX_ROUTES = 1000  # account and project pairs; a config reloaded again and again stays bounded
_SDK_LOGGER = "opentelemetry"
Dropped = Callable[[str, int], None]  # (reason, spans)


class _FirstWords(logging.Handler):
    """Keeps the SDK's first warning since the last export that worked, instead of writing it
    (it names the cause; the last one only says the retries are over): the gateway logs once
    an outage."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.message = ""

    def emit(self, record: logging.LogRecord) -> None:
        if not self.message:
            try:
                self.message = record.getMessage()[:300]
            except Exception:  # a record that cannot be formatted says nothing
                self.message = "?"


class _Routes(SpanExporter):
    """The processor's exporter: each span to its route's exporter, by its resource."""

    def __init__(self, max_queue: int, dropped: Dropped, secrets: Callable[[], set[str]]) -> None:
        self.exporters: dict[int, tuple[Resource, SpanExporter]] = {}  # id(resource) -> ...
        self._max_queue = max_queue
        self._dropped = dropped
        self._secrets = secrets
        self._lock = threading.Lock()
        self._queued = 0
        self._failing = False
        self._full = False
        self.words = _FirstWords()

    def admit(self) -> bool:
        """Whether one more span fits in the queue (it is then counted in it)."""
        with self._lock:
            if self._queued >= self._max_queue:
                full, self._full = self._full, True
            else:
                self._queued += 1
                return True
        self._dropped("queue_full", 1)
        if not full:
            logger.warning(
                "trace export: %d spans are waiting, so new spans are dropped (counted in "
                "gateway_trace_spans_dropped_total) until the queue drains",
                self._max_queue,
            )
        return False

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with self._lock:
            self._queued -= len(spans)
        groups: dict[int, list[ReadableSpan]] = defaultdict(list)
        for span in spans:
            groups[id(span.resource)].append(span)
        failed = 0
        for key, group in groups.items():
            route = self.exporters.get(key)
            if route is None or route[1].export(group) is not SpanExportResult.SUCCESS:
                failed += len(group)
        self._health(failed)
        return SpanExportResult.FAILURE if failed else SpanExportResult.SUCCESS

    def _health(self, failed: int) -> None:
        if failed:
            self._dropped("export_failed", failed)
            if not self._failing:
                self._failing = True
                logger.warning(
                    "trace export failed (%s): spans are dropped and counted in "
                    "gateway_trace_spans_dropped_total until it works again",
                    self._masked(self.words.message) or "no reason given",
                )
        else:
            self.words.message = ""
            if self._failing:
                logger.warning("trace export works again")
            self._failing = self._full = False

    def _masked(self, text: str) -> str:
        for secret in self._secrets():
            text = text.replace(secret, "***")
        return text

    def shutdown(self) -> None:
        for _, exporter in self.exporters.values():
            exporter.shutdown()


class Export:
    """The tracers, one a route, made on first use; `close()` sends what is queued."""

    def __init__(self, settings: TracingSettings, dropped: Dropped) -> None:
        self._settings = settings
        ratio = settings.sample_ratio
        self._sampler = ALWAYS_ON if ratio == 1 else TraceIdRatioBased(ratio)
        self._tracers: dict[tuple[str, str, str], Tracer] = {}
        self._keys: set[str] = set()
        self._routes = _Routes(settings.max_queue, dropped, self._secrets)
        self._processor = BatchSpanProcessor(
            self._routes,
            max_queue_size=settings.max_queue + 1,  # `admit` bounds it first, and counts
            schedule_delay_millis=1000,
            max_export_batch_size=min(512, settings.max_queue),
        )
        sdk = logging.getLogger(_SDK_LOGGER)
        sdk.addHandler(self._routes.words)
        sdk.propagate = False

    def admit(self) -> bool:
        return self._routes.admit()

    def tracer(self, account: Account, project: str) -> Tracer | None:
        """The route's tracer; None past MAX_ROUTES (the span is dropped)."""
        weave = self._settings.weave
        key = (account.name, account.api_key, project) if weave else ("", "", "")
        tracer = self._tracers.get(key)
        if tracer is None and len(self._tracers) < MAX_ROUTES:
            tracer = self._tracers[key] = self._route(account, project)
        return tracer

    def _route(self, account: Account, project: str) -> Tracer:
        settings = self._settings
        attributes = {"service.name": "inference-gateway", "service.version": "0.1.0"}
        headers = dict(settings.headers)
        if settings.weave:
            entity, _, name = project.partition("/")
            attributes |= {"wandb.entity": entity, "wandb.project": name}
            headers["wandb-api-key"] = account.api_key
            self._keys.add(account.api_key)
        resource = Resource.create(attributes)
        provider = TracerProvider(sampler=self._sampler, resource=resource, shutdown_on_exit=False)
        provider.add_span_processor(self._processor)
        exporter = OtlpExporter(
            endpoint=settings.url, headers=headers, timeout=settings.export_timeout_s
        )
        self._routes.exporters[id(resource)] = (resource, exporter)
        return provider.get_tracer("inference-gateway")

    def _secrets(self) -> set[str]:
        return {*self._keys, *self._settings.headers.values()}

    def close(self, timeout_s: float = 5.0) -> None:
        """Export what is queued, waiting up to `timeout_s` (blocking: run it in a thread); a
        collector slower than that is left to a daemon thread, which does not hold up exit."""
        done = threading.Thread(target=self._processor.shutdown, daemon=True)
        done.start()
        done.join(timeout_s)
        logging.getLogger(_SDK_LOGGER).removeHandler(self._routes.words)

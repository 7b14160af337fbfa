"""Where spans go: the routes, and the one span processor they share.

A route is where a span is sent and as whom. Without Weave there is one: `tracing.endpoint`
with `tracing.headers`. With `weave: true` there is one per account and W&B project: the
account's W&B key in `wandb-api-key`, and a resource naming `wandb.entity` and `wandb.project`
(Weave files a span under its resource's project). Every route's spans go to the same `Batches`,
which sends each route's with that route's exporter.

A request's span is written whole, when the request ends, straight to its OTLP bytes
(`spans.Tracing.finish`, `wire.client_span`): the gateway never makes it current nor gives it
children, so the SDK's live `Span` (made at the start through a tracer, its attributes checked
one by one, copied into a `ReadableSpan` at its end) would only add its cost (20 us a request,
measured), and so would a `ReadableSpan` made to be encoded (the tests make one of each span,
`spans.readable`, and check that the SDK's encoder gives the same message).
"""

from __future__ import annotations

import logging

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import TraceIdRatioBased
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from gateway.config import Account
from gateway.tracing import wire
from gateway.tracing.batches import Batches, Dropped, Route
from gateway.tracing.settings import TracingSettings

logger = logging.getLogger(__name__)

MAX_ROUTES = 1000  # account and project pairs; a config reloaded again and again stays bounded
SCOPE = InstrumentationScope("inference-gateway", "0.1.0")


class Export:
    """The routes, made on first use; `close()` sends what is queued."""

    def __init__(self, settings: TracingSettings, dropped: Dropped) -> None:
        self._settings = settings
        self._bound = TraceIdRatioBased.get_bound_for_rate(settings.sample_ratio)
        self.ids = RandomIdGenerator()
        self._routes: dict[tuple[str, str, str], Route] = {}
        self._keys: set[str] = set()
        self._dropped = dropped
        self._said_full = False
        self._processor = Batches(settings.max_queue, dropped, self._secrets)

    def admit(self) -> bool:
        """Whether a span fits in the export queue (if not, it counts as dropped)."""
        return self._processor.room()

    def sampled(self, trace_id: int) -> bool:
        """The SDK's TraceIdRatioBased decision: by the trace id's low 64 bits."""
        return trace_id & TraceIdRatioBased.TRACE_ID_LIMIT < self._bound

    def put(self, route: Route, data: bytes) -> None:
        """One span, encoded, for its route (dropped and counted if the queue is full now)."""
        self._processor.offer(id(route.resource), data)

    def route(self, account: Account, project: str) -> Route | None:
        """Where a request's span goes; None past MAX_ROUTES (the span is dropped, counted
        as `too_many_routes`, and that said once)."""
        weave = self._settings.weave
        key = (account.name, account.api_key, project) if weave else ("", "", "")
        route = self._routes.get(key)
        if route is None:
            if len(self._routes) >= MAX_ROUTES:
                self._dropped("too_many_routes", 1)
                if not self._said_full:
                    self._said_full = True
                    logger.warning(
                        "tracing: %d routes (account, key and project) are in use, so spans "
                        "to others are dropped (counted in gateway_trace_spans_dropped_total) "
                        "until a restart",
                        MAX_ROUTES,
                    )
                return None
            route = self._routes[key] = self._route(account, project)
            self._processor.routes[id(route.resource)] = route
        return route

    def _route(self, account: Account, project: str) -> Route:
        settings = self._settings
        attributes = {"service.name": "inference-gateway", "service.version": "0.1.0"}
        headers = dict(settings.headers)
        if settings.weave:
            entity, _, name = project.partition("/")
            attributes |= {"wandb.entity": entity, "wandb.project": name}
            headers["wandb-api-key"] = account.api_key
            self._keys.add(account.api_key)
        resource = Resource.create(attributes)
        exporter = wire.OtlpExporter(
            endpoint=settings.url, headers=headers, timeout=settings.export_timeout_s
        )
        return Route(resource, SCOPE, wire.head(resource, SCOPE), exporter)

    def _secrets(self) -> set[str]:
        return {*self._keys, *self._settings.headers.values()}

    def close(self, timeout_s: float = 5.0) -> None:
        """Send what is queued, for up to `timeout_s` (blocking: run it in a thread)."""
        self._processor.shutdown(timeout_s)

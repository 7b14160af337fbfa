"""Every Prometheus metric the gateway exports, in its own registry, with bounded labels.

With several workers, prometheus-client's multiprocess mode sums counters and histograms over
workers; the pool gauges are read live from the limiter of the worker that answers the scrape
(with the Redis limiter, that is the shared state).

Labels never carry keys, raw paths or free-form model strings: `model` is a resolved upstream id
that is configured or listed by upstream, else `other` (see `Catalog.label`); `tenant` is a
configured tenant name, or `-` when the caller could not be identified.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, multiprocess
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.limits.base import PoolState

_M = TypeVar("_M", Counter, Histogram)
UNKNOWN_TENANT = "-"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# Chat latencies span milliseconds (errors, cached) to minutes (reasoning models).
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


@dataclass(frozen=True)
class LiveState:
    """Where the gauges read their values at scrape time."""

    pools: Callable[[], list[PoolState]]
    degraded: Callable[[], bool]
    budgets: Callable[[], dict[str, float]]  # tenant -> monthly budget (USD)
    month_spend: Callable[[], dict[str, float]]  # tenant -> spend this month, as last seen


class _LiveCollector(Collector):
    """Gauges read at scrape time: limiter pools, limiter health, budgets."""

    def __init__(self, live: LiveState) -> None:
        self._live = live

    def collect(self) -> Iterable[Metric]:
        degraded = GaugeMetricFamily(
            "gateway_limiter_degraded",
            "1 while the Redis limiter is unreachable and per-process limits apply",
            value=1 if self._live.degraded() else 0,
        )
        budget = GaugeMetricFamily(
            "gateway_tenant_budget_usd", "Monthly budget per tenant", labels=["tenant"]
        )
        for tenant, usd in self._live.budgets().items():
            budget.add_metric([tenant], usd)
        spend = GaugeMetricFamily(
            "gateway_tenant_month_spend_usd",
            "Spend this calendar month (UTC) per tenant, as last read from the usage store",
            labels=["tenant"],
        )
        for tenant, usd in self._live.month_spend().items():
            spend.add_metric([tenant], usd)
        return [*self._pools(), degraded, budget, spend]

    def _pools(self) -> list[Metric]:
        inflight = GaugeMetricFamily(
            "gateway_inflight_requests", "Requests holding a slot, per pool", labels=["pool"]
        )
        depth = GaugeMetricFamily(
            "gateway_queue_depth", "Requests waiting for a slot, per pool", labels=["pool"]
        )
        limit = GaugeMetricFamily(
            "gateway_pool_limit", "Configured concurrency limit, per pool", labels=["pool"]
        )
        for pool in self._live.pools():
            inflight.add_metric([pool.name], pool.inflight)
            depth.add_metric([pool.name], pool.queued)
            limit.add_metric([pool.name], pool.limit)
        return [inflight, depth, limit]


class Metrics:
    def __init__(self, live: LiveState) -> None:
        self.registry = CollectorRegistry()
        self._children: dict[tuple[Any, tuple[str, ...]], Any] = {}
        self._counters()
        self.trace_spans_dropped = Counter(
            "gateway_trace_spans_dropped",
            "Trace spans never exported, by reason: queue_full (more waiting than "
            "tracing.max_queue or 64 MiB), export_failed (the collector refused them or was "
            "unreachable) or too_many_routes (past 1000 account, key and project routes)",
            ["reason"],
            registry=self.registry,
        )
        self._histograms()
        self._live = _LiveCollector(live)
        self.registry.register(self._live)

    def _counters(self) -> None:
        def counter(name: str, what: str, *labels: str) -> Counter:
            return Counter(name, what, labels, registry=self.registry)

        self.requests = counter(
            "gateway_requests",
            "Chat completions answered, and requests refused for their key, by the HTTP status "
            "the client got",
            "tenant",
            "model",
            "status",
        )
        self.upstream_requests = counter(
            "gateway_upstream_requests",
            "Attempts sent upstream, retries included (status `error` when none came back)",
            "account",
            "model",
            "status",
        )
        self.errors = counter(
            "gateway_errors", "Failed requests by cause", "tenant", "model", "reason"
        )
        self.retries = counter(
            "gateway_retries", "Upstream attempts retried, by cause", "model", "reason"
        )
        self.tokens = counter(
            "gateway_tokens",
            "Tokens used, from upstream's usage blocks (or estimated, see below); kind "
            "prompt or completion, and cached_prompt (a part of prompt) and reasoning (a part "
            "of completion)",
            "tenant",
            "model",
            "kind",
        )
        self.spend = counter(
            "gateway_spend_usd", "USD spent, from the config's price table", "tenant", "model"
        )
        self.unpriced_tokens = counter(
            "gateway_unpriced_tokens",
            "Tokens of models without a price in the config (not in gateway_spend_usd_total)",
            "model",
        )
        self.estimated_tokens = counter(
            "gateway_estimated_tokens",
            "Tokens estimated by the gateway because upstream's usage never came (client gone, "
            "upstream cut or silent); they are in gateway_tokens_total too",
            "model",
        )
        self.connections_refused = counter(
            "gateway_connections_refused",
            "Connections the HTTP server answered itself and closed, by bound (see http_guard)",
            "reason",
        )
        self.admin_actions = counter(
            "gateway_admin_actions",
            "Changes made over the admin API, by action (create, revoke, rotate)",
            "action",
        )

    def _histograms(self) -> None:
        def histogram(name: str, what: str, label: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(name, what, [label], buckets=buckets, registry=self.registry)

        self.ttft = histogram(
            "gateway_time_to_first_token_seconds",
            "Time from request to the first streamed byte",
            "model",
            DURATION_BUCKETS,
        )
        self.duration = histogram(
            "gateway_request_duration_seconds",
            "Time from request to last byte",
            "model",
            DURATION_BUCKETS,
        )
        self.queue_wait = histogram(
            "gateway_queue_wait_seconds", "Time spent waiting for a slot", "pool", WAIT_BUCKETS
        )

    def child(self, metric: _M, *labels: str) -> _M:
        """`metric.labels(*labels)`, remembered: labels are bounded, and the hot path asks for
        the same few children on every request."""
        key = (metric, labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def render(self) -> bytes:
        """The exposition. Under `serve --workers N` every worker writes its samples to
        $PROMETHEUS_MULTIPROC_DIR and any worker answers with the sums over all of them."""
        if os.environ.get(MULTIPROC_ENV):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            registry.register(self._live)
            return generate_latest(registry)
        return generate_latest(self.registry)

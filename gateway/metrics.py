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

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, multiprocess
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.limits.base import PoolState

UNKNOWN_TENANT = "-"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# Chat latencies span milliseconds (errors, cached) to minutes (reasoning models).
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class _PoolCollector(Collector):
    """In-flight and queued requests per limiter pool, read at scrape time."""

    def __init__(self, pools: Callable[[], list[PoolState]]) -> None:
        self._pools = pools

    def collect(self) -> Iterable[Metric]:
        inflight = GaugeMetricFamily(
            "gateway_inflight_requests", "Requests holding a slot, per pool", labels=["pool"]
        )
        depth = GaugeMetricFamily(
            "gateway_queue_depth", "Requests waiting for a slot, per pool", labels=["pool"]
        )
        limit = GaugeMetricFamily(
            "gateway_pool_limit", "Configured concurrency limit, per pool", labels=["pool"]
        )
        for pool in self._pools():
            inflight.add_metric([pool.name], pool.inflight)
            depth.add_metric([pool.name], pool.queued)
            limit.add_metric([pool.name], pool.limit)
        return [inflight, depth, limit]


class Metrics:
    def __init__(self, pools: Callable[[], list[PoolState]]) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "gateway_requests",
            "Requests answered, by the HTTP status the client got",
            ["tenant", "model", "status"],
            registry=r,
        )
        self.upstream_requests = Counter(
            "gateway_upstream_requests",
            "Attempts sent upstream, retries included (status `error` when none came back)",
            ["account", "model", "status"],
            registry=r,
        )
        self.errors = Counter(
            "gateway_errors",
            "Failed requests by cause",
            ["tenant", "model", "reason"],
            registry=r,
        )
        self.retries = Counter(
            "gateway_retries",
            "Upstream attempts retried, by cause",
            ["model", "reason"],
            registry=r,
        )
        self.tokens = Counter(
            "gateway_tokens",
            "Tokens used, from upstream's usage blocks (or estimated, see below)",
            ["tenant", "model", "kind"],
            registry=r,
        )
        self.spend = Counter(
            "gateway_spend_usd",
            "USD spent, from the config's price table",
            ["tenant", "model"],
            registry=r,
        )
        self.unpriced_tokens = Counter(
            "gateway_unpriced_tokens",
            "Tokens of models without a price in the config (not in gateway_spend_usd_total)",
            ["model"],
            registry=r,
        )
        self.estimated_tokens = Counter(
            "gateway_estimated_tokens",
            "Tokens estimated by the gateway because a stream ended before upstream's usage",
            ["model"],
            registry=r,
        )
        self.ttft = Histogram(
            "gateway_time_to_first_token_seconds",
            "Time from request to the first streamed byte",
            ["model"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.duration = Histogram(
            "gateway_request_duration_seconds",
            "Time from request to last byte",
            ["model"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "gateway_queue_wait_seconds",
            "Time spent waiting for a slot",
            ["pool"],
            buckets=WAIT_BUCKETS,
            registry=r,
        )
        self._pools = _PoolCollector(pools)
        r.register(self._pools)

    def render(self) -> bytes:
        """The exposition. Under `serve --workers N` every worker writes its samples to
        $PROMETHEUS_MULTIPROC_DIR and any worker answers with the sums over all of them."""
        if os.environ.get(MULTIPROC_ENV):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            registry.register(self._pools)
            return generate_latest(registry)
        return generate_latest(self.registry)

"""What is measured: the bench upstream, a private redis-server, and gateways wired to them.

A gateway runs as a user would run it (`python -m gateway serve --config FILE`, one worker) with
every feature on: key auth, the limiter (an account and a tenant pool, both 1024 wide so nothing
queues), metrics, spend accounting with a tenant budget (checked on every request) and the access
log (written to a file). `traced` is the memory gateway with tracing on as well (every request
sampled, content capture off), exporting to a collector that keeps nothing.
"""

from __future__ import annotations

import json
import secrets
import sys
from dataclasses import dataclass
from typing import Any

from load import MODEL, post
from processes import BENCH, Child, Children, Pinning, free_port, wait_http, wait_port

from gateway.keys import hash_key

UPSTREAM_KEY = "bench-upstream-key"  # the bench upstream accepts any key
CONCURRENCY = 1024


@dataclass
class Target:
    """Something wrk can be pointed at: the upstream itself, or a gateway in front of it."""

    name: str  # direct | bare | memory | redis | traced
    port: int
    child: Child
    key: str  # what goes in Authorization


def start_upstream(
    children: Children,
    pinning: Pinning,
    delay_ms: float,
    chunks: int,
    chunk_delay_ms: float,
    jitter_ms: float = 0.0,
) -> Target:
    port = free_port()
    args = [
        *pinning.prefix(pinning.load),
        sys.executable,
        str(BENCH / "upstream.py"),
        "--port",
        str(port),
        "--delay-ms",
        str(delay_ms),
        "--chunks",
        str(chunks),
        "--chunk-delay-ms",
        str(chunk_delay_ms),
        "--jitter-ms",
        str(jitter_ms),
    ]
    child = children.spawn("upstream", args)
    wait_port(child, port)
    return Target("direct", port, child, UPSTREAM_KEY)


def start_redis(children: Children, pinning: Pinning, redis_server: str) -> str:
    port = free_port()
    data = children.workdir / "redis"
    data.mkdir(exist_ok=True)
    args = [
        *pinning.prefix(pinning.load),
        redis_server,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(data),
    ]
    wait_port(children.spawn("redis-server", args), port)
    return f"redis://127.0.0.1:{port}/0"


def start_otlp_sink(children: Children, pinning: Pinning) -> str:
    """A collector that keeps nothing (bench/otlp_sink.py), on the load's cores; its URL."""
    port = free_port()
    args = [*pinning.prefix(pinning.load), sys.executable, str(BENCH / "otlp_sink.py")]
    wait_port(children.spawn("otlp-sink", [*args, "--port", str(port)]), port)
    return f"http://127.0.0.1:{port}/v1/traces"


def gateway_config(
    upstream_port: int, key: str, redis_url: str | None, tracing_url: str | None = None
) -> dict[str, Any]:
    backend = "redis" if redis_url else "memory"
    limiter: dict[str, object] = {"backend": backend, "queue_timeout_s": 60}
    if redis_url:
        limiter["redis_url"] = redis_url
        limiter["key_prefix"] = "igw-bench-" + secrets.token_hex(4)
    return {
        "upstream": {
            "base_url": f"http://127.0.0.1:{upstream_port}/v1",
            "retries": 3,
            "read_timeout_s": 60,
        },
        "limiter": limiter,
        "server": {"host": "127.0.0.1", "access_log": True},
        "tracing": {"endpoint": tracing_url or "", "sample_ratio": 1.0},
        "accounts": {"bench": {"api_key": UPSTREAM_KEY, "max_concurrency": CONCURRENCY}},
        "tenants": {
            "bench": {
                "keys": [hash_key(key)],
                "account": "bench",
                "project": "bench/gateway",
                "max_concurrency": CONCURRENCY,
                "monthly_budget_usd": 1_000_000,
            }
        },
        "models": {
            MODEL: {
                "input_usd_per_mtok": 0.22,
                "output_usd_per_mtok": 0.22,
                "aliases": ["gpt-4o-mini"],
            }
        },
    }


def start_gateway(
    children: Children,
    pinning: Pinning,
    upstream: Target,
    name: str,
    redis_url: str | None = None,
    tracing_url: str | None = None,
) -> Target:
    """`name`: memory, redis (with `redis_url`) or traced (memory, spans to `tracing_url`)."""
    key = "sk-gw-bench-" + secrets.token_urlsafe(16)
    config = children.workdir / f"gateway-{name}.yaml"
    settings = gateway_config(upstream.port, key, redis_url, tracing_url)
    config.write_text(json.dumps(settings, indent=2))  # JSON is YAML: no YAML writer needed
    port = free_port()
    args = [
        *pinning.prefix(pinning.gateway),
        sys.executable,
        "-m",
        "gateway",
        "serve",
        "--config",
        str(config),
        "--port",
        str(port),
    ]
    child = children.spawn(f"gateway-{name}", args)
    wait_http(child, f"http://127.0.0.1:{port}/readyz")
    target = Target(name, port, child, key)
    check(target)
    return target


def start_bare(children: Children, pinning: Pinning, upstream: Target) -> Target:
    """The floor (bench/bare.py) on the gateway's core: what a pass-through costs here."""
    port = free_port()
    args = [
        *pinning.prefix(pinning.gateway),
        sys.executable,
        str(BENCH / "bare.py"),
        "--port",
        str(port),
        "--upstream",
        f"http://127.0.0.1:{upstream.port}/v1",
        "--key",
        UPSTREAM_KEY,
    ]
    child = children.spawn("gateway-bare", args)  # "gateway-": it shares the gateway's core
    wait_port(child, port)
    target = Target("bare", port, child, UPSTREAM_KEY)
    check(target)
    return target


def check(target: Target) -> None:
    """One plain and one streamed request must work before anything is measured."""
    status, body = post(target.port, target.key, stream=False)
    if status != 200 or b'"usage"' not in body:
        raise RuntimeError(f"{target.name}: plain request answered {status}: {body[:300]!r}")
    status, body = post(target.port, target.key, stream=True)
    if status != 200 or not body.rstrip().endswith(b"data: [DONE]"):
        raise RuntimeError(f"{target.name}: streamed request answered {status}: {body[-300:]!r}")

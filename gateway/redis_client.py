"""Connecting to Redis the way every part of the gateway does: a URL or Sentinel, short timeouts.

A dead Redis must be noticed in about two seconds, not after a pile of retries, so that the
limiter can fall back to per-process limits and requests keep flowing.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis
from redis.asyncio.connection import parse_url
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from gateway.config import LimiterSettings

SOCKET_TIMEOUT_S = 2.0


def _retry() -> Retry:
    """Reconnect once at once (a pooled socket may predate a Redis restart); never retry a
    timeout: a hung Redis is declared down after one socket timeout, not several."""
    return Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,))


def connect(settings: LimiterSettings) -> tuple[Redis, Sentinel | None]:
    common: dict[str, Any] = {
        "socket_timeout": SOCKET_TIMEOUT_S,
        "socket_connect_timeout": SOCKET_TIMEOUT_S,
        "retry": _retry(),
        "decode_responses": True,
    }
    sentinel_settings = settings.sentinel
    if sentinel_settings is None:
        return Redis.from_url(settings.redis_url, **common), None
    # With Sentinel, redis_url names no host: only the database and its credentials.
    url = parse_url(settings.redis_url)
    target: dict[str, Any] = {k: v for k, v in url.items() if k in ("db", "username", "password")}
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        list(sentinel_settings.nodes),
        sentinel_kwargs={
            "password": sentinel_settings.password,
            "socket_timeout": SOCKET_TIMEOUT_S,
            "socket_connect_timeout": SOCKET_TIMEOUT_S,
            "retry": _retry(),
        },
        **common,
    )
    ssl = settings.redis_url.startswith("rediss://")
    client = sentinel.master_for(sentinel_settings.master, ssl=ssl, **target)
    return client, sentinel

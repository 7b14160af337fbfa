"""`classify` and `wire_failure`: what an upstream answer or a failure on the wire means. Both
return a Verdict and never raise."""

from __future__ import annotations

import aiohttp
import pytest

from gateway import errors as e
from gateway.config import Account
from gateway.upstream import PASS, classify, wire_failure

ACCOUNT = Account(name="main", api_key="wandb-secret-key", max_concurrency=1)
CONCURRENCY = b'{"error": {"message": "Concurrency limit reached for requests"}}'
QUOTA = b'{"error": {"message": "You exceeded your current quota"}}'


@pytest.mark.parametrize(
    ("status", "body", "error", "retry"),
    [
        (429, CONCURRENCY, e.UpstreamConcurrency, "upstream_concurrency"),
        (429, QUOTA, e.InsufficientQuota, None),
        (402, b"{}", e.InsufficientQuota, None),
        (401, b"{}", e.UpstreamAuthError, None),
        (403, b"{}", e.UpstreamAuthError, None),
        (503, b"busy", e.UpstreamOverloaded, "upstream_5xx"),
        (500, b"{}", e.UpstreamError, "upstream_5xx"),
        (502, b"<html>", e.UpstreamError, "upstream_5xx"),
        (504, b"", e.UpstreamError, "upstream_5xx"),
        (302, b"", e.UpstreamError, None),
    ],
)
def test_classify(status: int, body: bytes, error: type, retry: str | None) -> None:
    verdict = classify(status, body, ACCOUNT, "acme/p")
    assert type(verdict.error) is error and verdict.retry == retry
    assert "wandb-secret-key" not in verdict.error.message


@pytest.mark.parametrize("status", [400, 404, 408, 413, 422])
def test_the_callers_own_4xx_pass_through(status: int) -> None:
    assert classify(status, b'{"error": {"message": "bad"}}', ACCOUNT, "acme/p") is PASS


def test_quota_messages_are_never_retried_and_say_so() -> None:
    verdict = classify(429, QUOTA, ACCOUNT, "acme/p")
    assert verdict.error is not None and verdict.error.headers == {"x-should-retry": "false"}


@pytest.mark.parametrize(
    ("exc", "error", "retry"),
    [
        # A connect timeout is a timeout *and* a ClientError: W&B never got the request.
        (aiohttp.ConnectionTimeoutError(), e.UpstreamConnectError, "upstream_connect"),
        # A read timeout is a ClientError too: W&B has it, may still work on it (and bill).
        (aiohttp.SocketTimeoutError(), e.UpstreamTimeout, None),
        (aiohttp.ServerTimeoutError(), e.UpstreamTimeout, None),
        (TimeoutError(), e.UpstreamTimeout, None),
        (aiohttp.ServerDisconnectedError(), e.UpstreamConnectError, "upstream_connect"),
        (aiohttp.ClientPayloadError("cut"), e.UpstreamConnectError, "upstream_connect"),
        (aiohttp.ClientConnectionError(), e.UpstreamConnectError, "upstream_connect"),
    ],
)
def test_wire_failure_order(exc: Exception, error: type, retry: str | None) -> None:
    verdict = wire_failure(exc, "response", 30.0)  # type: ignore[arg-type]
    assert type(verdict.error) is error and verdict.retry == retry
    if error is e.UpstreamTimeout:
        assert verdict.error.message == "W&B sent no response within upstream.read_timeout_s (30s)"

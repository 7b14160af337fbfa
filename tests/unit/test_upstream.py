"""`classify` and `wire_failure`: what an upstream answer or a failure on the wire means (both
return a Verdict and never raise); the headers let through each way; what a client may read of
W&B's error messages."""

from __future__ import annotations

import aiohttp
import orjson
import pytest
from aiohttp import web
from multidict import CIMultiDict

from gateway import errors as e
from gateway.catalog import Catalog
from gateway.config import Account, ConfigError, parse_settings
from gateway.errors import render
from gateway.headers import response_headers, upstream_headers
from gateway.testing.fake_upstream import ACCOUNT_HEADERS
from gateway.upstream import (
    MESSAGE_CHARS,
    PASS,
    UpstreamClient,
    classify,
    client_message,
    refused,
    wire_failure,
)

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


# --- headers going up: an allow-list ---------------------------------------------------------

# What the finding saw reach W&B, and the rest that never may.
NEVER_UP = {
    "x-forwarded-for": "10.1.2.3",
    "x-forwarded-host": "evil.example",
    "x-forwarded-proto": "http",
    "forwarded": "for=10.1.2.3;proto=http",
    "x-real-ip": "10.1.2.3",
    "via": "1.1 internal-proxy",
    "x-http-method-override": "DELETE",
    "x-original-url": "/v1/admin",
    "true-client-ip": "10.1.2.3",
    "authorization": "Bearer sk-gw-caller",
    "cookie": "session=abc",
    "openai-organization": "org-caller",
    "openai-project": "acme/other",
    "x-request-id": "caller-id",
    "host": "gateway.internal",
    "content-length": "12",
    "transfer-encoding": "chunked",
    "keep-alive": "timeout=5",
    "te": "trailers",
    "upgrade": "h2c",
    "expect": "100-continue",
    "accept-encoding": "br",
    "x-custom": "not on the list",
}
SDK_UP = {
    "accept": "application/json",
    "user-agent": "OpenAI/Python 1.99.0",
    "openai-beta": "assistants=v2",
    "x-stainless-lang": "python",
    "x-stainless-retry-count": "0",
    "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    "tracestate": "vendor=1",
}
GATEWAY_UP = {
    "Authorization": "Bearer wandb-secret-key",
    "OpenAI-Project": "acme/p",
    "X-Request-Id": "req_1",
    "Content-Type": "application/json",
}


def raw(headers: dict[str, str]) -> list[tuple[bytes, bytes]]:
    return [(k.encode(), v.encode()) for k, v in headers.items()]


def test_only_what_sdks_send_goes_up_then_the_gateways_own() -> None:
    sent = upstream_headers(raw({**NEVER_UP, **SDK_UP}), ACCOUNT, "acme/p", "req_1")
    assert sent == {**SDK_UP, **GATEWAY_UP}


def test_a_tenants_forward_headers_go_up_but_never_a_forbidden_one() -> None:
    # Built in code, so past the config's validator: the names it refuses still stay behind.
    forward = frozenset({"x-team-trace", "x-forwarded-for", "cookie", "authorization"})
    headers = raw({"x-team-trace": "t-1", "x-other-team": "no", **NEVER_UP})
    sent = upstream_headers(headers, ACCOUNT, "acme/p", "req_1", forward)
    assert sent == {"x-team-trace": "t-1", **GATEWAY_UP}


def test_a_header_named_in_connection_is_dropped_even_when_allowed() -> None:
    headers = raw({**SDK_UP, "x-team-trace": "t-1", "connection": "keep-alive, X-Team-Trace"})
    headers.append((b"connection", b"traceparent"))  # a second Connection line counts too
    sent = upstream_headers(headers, ACCOUNT, "acme/p", "req_1", frozenset({"x-team-trace"}))
    assert "x-team-trace" not in sent and "traceparent" not in sent and "connection" not in sent
    assert sent["tracestate"] == "vendor=1" and sent["user-agent"] == SDK_UP["user-agent"]


@pytest.mark.parametrize(
    "name",
    ["X-Forwarded-For", "x-forwarded-anything", "forwarded", "x-real-ip", "via", "cookie",
     "authorization", "proxy-authorization", "openai-organization", "openai-project",
     "x-request-id", "host", "connection", "transfer-encoding", "content-length",
     "x-http-method-override", "x-original-url"],
)  # fmt: skip
def test_the_config_refuses_forward_headers_that_may_never_go_up(name: str) -> None:
    raw_config = {
        "upstream": {"base_url": "http://127.0.0.1:1/v1"},
        "accounts": {"main": {"api_key": "k", "max_concurrency": 2}},
        "tenants": {
            "t": {
                "keys": [],
                "account": "main",
                "project": "acme/p",
                "forward_headers": ["X-Team-Trace", name],
            }
        },
    }
    with pytest.raises(ConfigError) as info:
        parse_settings(raw_config)
    [problem] = info.value.problems
    assert problem.startswith(f"tenants.t.forward_headers: {name.lower()} may never be forwarded")
    raw_config["tenants"]["t"]["forward_headers"] = ["X-Team-Trace"]  # type: ignore[index]
    assert parse_settings(raw_config).tenants["t"].forward_headers == {"x-team-trace"}


# --- headers coming back: an allow-list --------------------------------------------------------


def test_of_upstreams_headers_only_content_type_and_processing_time_come_back() -> None:
    upstream = CIMultiDict({"Content-Type": "application/json", **ACCOUNT_HEADERS})
    upstream.add("Set-Cookie", "second=cookie")
    assert response_headers(upstream) == [
        (b"content-type", b"application/json"),
        (b"openai-processing-ms", ACCOUNT_HEADERS["openai-processing-ms"].encode()),
    ]
    # A stream's content type is the gateway's own; a processing time that is not one is dropped.
    assert response_headers(upstream, stream=True) == [(b"openai-processing-ms", b"7")]
    assert response_headers(CIMultiDict({"openai-processing-ms": "7\r\nx: y"})) == []


# --- W&B's error messages ----------------------------------------------------------------------

LLAMA = "meta-llama/Llama-3.1-8B-Instruct"


def scrub(message: str) -> str:
    return client_message(message, ACCOUNT, "acme/search", LLAMA)


@pytest.mark.parametrize(
    ("said", "seen"),
    [
        ("Invalid key wandb-secret-key for you", "Invalid key [redacted] for you"),
        ("key 0123456789abcdef0123456789abcdef01234567 bad", "key [redacted] bad"),
        ("sent Bearer abc.DEF-123 twice", "sent [redacted] twice"),
        ("Project acme-corp/billing not found", "Project [project] not found"),
        ("Project acme/search is fine", "Project acme/search is fine"),  # the tenant's own
        (f"The model `{LLAMA}` is busy", f"The model `{LLAMA}` is busy"),  # the request's
        ("entity 'acme-corp' has no credits", "entity '[redacted]' has no credits"),
        ('team "acme" may', 'team "acme" may'),  # the tenant's own entity
        ("user: alice, org=acme-corp.", "user: [redacted], org=[redacted]"),
        ("mail billing@acme-corp.com now", "mail [redacted] now"),
        ("see https://wandb.ai/acme-corp/billing?x=1 now", "see https://wandb.ai/... now"),
        ("as application/json and/or text/plain", "as application/json and/or text/plain"),
        ("the user's input", "the user's input"),
        ("line\none\x00\x1b[0m \u202eevil\u2028end\t", "line one [0m evil end"),
    ],
)  # fmt: skip
def test_what_a_client_may_read_of_a_wandb_message(said: str, seen: str) -> None:
    assert scrub(said) == seen


def test_a_long_message_is_cut_on_a_character_boundary_after_it_is_scrubbed() -> None:
    said = "é" * 290 + " wandb-secret-key " + "🙂" * 1000
    seen = scrub(said)
    assert len(seen) == MESSAGE_CHARS and "wandb-secret" not in seen
    # Cut after scrubbing, at a character: the key's placeholder is what the cut falls in.
    assert seen == ("é" * 290 + " [redacted] " + "🙂" * 1000)[: MESSAGE_CHARS - 3] + "..."
    # A key across the cut is gone whole, not cut in two; past what is scanned, it is cut off.
    seen = scrub("ab " * 96 + ACCOUNT.api_key + " tail")
    assert seen == ("ab " * 96 + "[redacted] tail")[: MESSAGE_CHARS - 3] + "..."
    assert scrub("ab " * 5000 + ACCOUNT.api_key) == ("ab " * 99).rstrip() + "..."


@pytest.mark.parametrize("status", [402, 429, 500, 503])
def test_upstream_messages_in_the_gateways_errors_are_scrubbed(status: int) -> None:
    message = "quota: key wandb-secret-key of entity 'acme-corp' on acme-corp/billing " * 20
    body = orjson.dumps({"error": {"message": message}})
    verdict = classify(status, body, ACCOUNT, "acme/search", LLAMA)
    assert verdict.error is not None
    text = verdict.error.message
    assert "wandb-secret-key" not in text and "acme-corp" not in text
    assert "[redacted]" in text and len(text) < MESSAGE_CHARS + 200


def test_a_passed_through_4xx_keeps_status_param_and_code_with_a_scrubbed_message() -> None:
    body = orjson.dumps(
        {
            "error": {
                "message": "Bad value for acme-corp/secret\n" + "xy " * 1000,
                "type": "invalid_request_error",
                "param": "messages",
                "code": "invalid_value",
                "internal": "wandb-secret-key",
            }
        }
    )
    error = refused(422, body, ACCOUNT, "acme/search", LLAMA)
    status, _, rendered = render(error)
    err = orjson.loads(rendered)["error"]
    assert status == 422 and (err["param"], err["code"]) == ("messages", "invalid_value")
    assert err["type"] == "invalid_request_error" and set(err) == {
        "message",
        "type",
        "param",
        "code",
    }
    assert err["message"].startswith("Bad value for [project] xy xy") and len(err["message"]) <= 300
    assert refused(404, b"<html>\x00oops", ACCOUNT, "acme/search", LLAMA).message == "<html> oops"


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_redirect_is_a_502_that_is_not_retried(status: int) -> None:
    verdict = classify(status, b"", ACCOUNT, "acme/search")
    assert type(verdict.error) is e.UpstreamError and verdict.retry is None
    assert verdict.error.status == 502 and "redirect" in verdict.error.message


async def test_the_model_list_does_not_follow_a_redirect_either() -> None:
    hits: list[str] = []

    async def models(request: web.Request) -> web.StreamResponse:
        hits.append(request.path)
        return web.Response(status=307, headers={"Location": str(request.url)})

    app = web.Application()
    app.router.add_get("/v1/models", models)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    settings = parse_settings(
        {
            "upstream": {"base_url": f"http://127.0.0.1:{port}/v1"},
            "accounts": {"main": {"api_key": "wandb-secret-key", "max_concurrency": 1}},
            "tenants": {"t": {"keys": [], "account": "main", "project": "acme/p"}},
        }
    )
    client = UpstreamClient.create(settings.upstream)
    try:
        with pytest.raises(e.UpstreamError) as info:
            await Catalog(settings, client).upstream_models(settings.accounts["main"], "acme/p")
        assert info.value.status == 502 and "redirect (307)" in info.value.message
        assert hits == ["/v1/models"]  # asked once, never again where the Location points
    finally:
        await client.close()
        await runner.cleanup()

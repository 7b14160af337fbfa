"""Headers by allow-list both ways, upstream redirects, the x-ratelimit-* headers and SSE
keep-alives, over real sockets: the official openai SDK where it can send what a test needs, raw
httpx where it cannot (`Connection`, `Host`)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from gateway.testing.fake_upstream import ACCOUNT_HEADERS, WORDS
from tests.e2e.helpers import USER, aclient, client, faults, prompt_tokens, seen, stats
from tests.poll import until
from tests.procs import (
    LLAMA,
    RETIRED,
    SEARCH_KEY,
    WANDB_KEY,
    Proc,
    base_config,
    start_gateway,
)

KEEPALIVE_S = 0.3
READ_TIMEOUT_S = 2.0
AUTH = {"Authorization": f"Bearer {SEARCH_KEY}"}
URL = "/v1/chat/completions"
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
# What finding 6 saw reach W&B: the client's network identity, and overrides of what is asked.
IDENTITY = {
    "X-Forwarded-For": "10.1.2.3",
    "X-Forwarded-Host": "evil.example",
    "X-Forwarded-Proto": "http",
    "Forwarded": "for=10.1.2.3;proto=http",
    "X-Real-IP": "10.1.2.3",
    "Via": "1.1 internal-proxy",
    "X-HTTP-Method-Override": "DELETE",
    "X-Original-URL": "/admin",
    "Cookie": "session=abc",
}
# aiohttp writes these itself, whatever the client sent.
FRAMING = {"host", "content-length", "accept-encoding"}
GATEWAYS = {"authorization", "openai-project", "x-request-id", "content-type"}
SEARCH_LIMIT = 4  # tests.procs.base_config's `search` tenant


def config(fake: Proc, **overrides: Any) -> dict[str, Any]:
    return base_config(
        fake.url,
        upstream__sse_keepalive_s=KEEPALIVE_S,
        upstream__read_timeout_s=READ_TIMEOUT_S,
        tenants__search__forward_headers=["X-Team-Trace"],
        **overrides,
    )


@pytest.fixture(scope="module")
def gw(fake: Proc) -> Iterator[Proc]:
    proc = start_gateway(config(fake))
    yield proc
    proc.stop()


# --- going up ----------------------------------------------------------------------------------


def test_only_what_sdks_send_and_the_tenants_own_headers_reach_wandb(gw: Proc, fake: Proc) -> None:
    c = client(gw, organization="org-caller")
    extra = {**IDENTITY, "X-Team-Trace": "t-1", "X-Custom": "dropped", "traceparent": TRACEPARENT}
    c.chat.completions.create(model=LLAMA, messages=USER, extra_headers=extra)
    headers = seen(fake)[-1]["headers"]
    assert not {name.lower() for name in IDENTITY} & set(headers)
    assert "x-custom" not in headers and "openai-organization" not in headers
    assert headers["x-team-trace"] == "t-1"  # tenants.search.forward_headers
    assert headers["traceparent"] == TRACEPARENT and headers["x-stainless-lang"] == "python"
    assert headers["user-agent"].startswith("OpenAI/Python")
    assert headers["authorization"] == f"Bearer {WANDB_KEY}"
    sdk = {"accept", "user-agent", "traceparent", "x-team-trace"}
    unexpected = set(headers) - sdk - FRAMING - GATEWAYS
    assert {name for name in unexpected if not name.startswith("x-stainless-")} == set()


def test_headers_named_in_connection_and_the_clients_host_stay_behind(gw: Proc, fake: Proc) -> None:
    headers = {
        **AUTH,
        "Host": "evil.example",
        "Connection": "keep-alive, X-Team-Trace, traceparent",
        "X-Team-Trace": "t-2",
        "traceparent": TRACEPARENT,
        "tracestate": "vendor=1",
    }
    r = httpx.post(gw.url + URL, json={"model": LLAMA, "messages": USER}, headers=headers)
    assert r.status_code == 200, r.text
    sent = seen(fake)[-1]["headers"]
    assert "x-team-trace" not in sent and "traceparent" not in sent and "connection" not in sent
    assert sent["tracestate"] == "vendor=1"
    assert sent["host"] == fake.url.removeprefix("http://")


# --- coming back -------------------------------------------------------------------------------


def assert_no_account_headers(r: httpx.Response, ok: bool = True) -> None:
    for name, value in ACCOUNT_HEADERS.items():
        if name == "openai-processing-ms":
            assert r.headers.get(name) == (value if ok else None)
        else:
            assert r.headers.get(name) != value, name
    for name in ("openai-organization", "openai-version", "set-cookie", "alt-svc"):
        assert name not in r.headers
    assert "strict-transport-security" not in r.headers
    assert "access-control-allow-origin" not in r.headers
    assert "x-ratelimit-limit-tokens" not in r.headers
    assert r.headers["x-request-id"].startswith("req_")  # the gateway's own
    assert r.headers["x-ratelimit-limit-requests"] == str(SEARCH_LIMIT)


def test_no_account_level_header_comes_back(gw: Proc, fake: Proc) -> None:
    body = {"model": LLAMA, "messages": USER}
    with httpx.Client(base_url=gw.url, headers=AUTH) as http:
        plain = http.post(URL, json=body)
        assert plain.status_code == 200
        assert plain.headers["content-type"].startswith("application/json")
        assert_no_account_headers(plain)
        with http.stream("POST", URL, json={**body, "stream": True}) as streamed:
            streamed.read()
        assert streamed.headers["content-type"].startswith("text/event-stream")
        assert_no_account_headers(streamed)
        retired = http.post(URL, json={**body, "model": RETIRED})  # W&B's 404, passed on
        assert retired.status_code == 404 and retired.json()["error"]["code"] == "model_not_found"
        assert_no_account_headers(retired, ok=False)


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_an_upstream_redirect_is_not_followed(gw: Proc, fake: Proc, stream: bool) -> None:
    """The fake's redirect points at the request's own URL: followed, it would answer 200."""
    faults(fake, {"kind": "redirect"})
    with pytest.raises(openai.APIStatusError) as info:
        client(gw).chat.completions.create(model=LLAMA, messages=USER, stream=stream)
    response = info.value.response
    assert response.status_code == 502 and "location" not in response.headers
    error = response.json()["error"]
    assert error["code"] == "upstream_error" and "redirect (307)" in error["message"]
    assert stats(fake)["requests"] == 1 and len(seen(fake)) == 1  # one attempt, not retried


# --- x-ratelimit-* ------------------------------------------------------------------------------


async def test_ratelimit_headers_say_the_tenants_limit_and_its_free_slots(
    gw: Proc, fake: Proc
) -> None:
    """The in-process limiter here; the Redis one's count is tests/unit/test_free_slots.py's."""
    limit, remaining = "x-ratelimit-limit-requests", "x-ratelimit-remaining-requests"
    async with aclient(gw) as c:
        slow = {"x_fake": {"delay_s": 1.5}}
        held = [
            asyncio.create_task(
                c.chat.completions.create(model=LLAMA, messages=USER, extra_body=slow)
            )
            for _ in range(2)
        ]
        await until(lambda: stats(fake)["inflight"].get(WANDB_KEY) == 2)
        # 2 held + this one: 1 free of 4, for a whole answer and for a stream.
        plain = await c.chat.completions.with_raw_response.create(model=LLAMA, messages=USER)
        assert (plain.headers[limit], plain.headers[remaining]) == (str(SEARCH_LIMIT), "1")
        streamed = await c.chat.completions.with_raw_response.create(
            model=LLAMA, messages=USER, stream=True
        )
        async for _ in streamed.parse():
            pass
        assert (streamed.headers[limit], streamed.headers[remaining]) == (str(SEARCH_LIMIT), "1")
        # An error after admission says so too: its own slot is back by the time it is written.
        faults(fake, {"kind": "500", "count": 3})
        with pytest.raises(openai.InternalServerError) as info:
            await c.chat.completions.create(model=LLAMA, messages=USER)
        failed = info.value.response.headers
        assert (failed[limit], failed[remaining]) == (str(SEARCH_LIMIT), "2")
        await asyncio.gather(*held)
        alone = await c.chat.completions.with_raw_response.create(model=LLAMA, messages=USER)
        assert alone.headers[remaining] == str(SEARCH_LIMIT - 1)
        # Refused before admission: no slot, no rate-limit headers.
        with pytest.raises(openai.BadRequestError) as refused:
            await c.chat.completions.create(model=LLAMA, messages="no")  # type: ignore[arg-type]
    assert limit not in refused.value.response.headers


# --- SSE keep-alives ---------------------------------------------------------------------------


class Recording(httpx.HTTPTransport):
    """What the SDK's HTTP client read, byte for byte, as it read it."""

    def __init__(self) -> None:
        super().__init__()
        self.read = bytearray()
        self.headers = httpx.Headers()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        self.headers = response.headers
        return httpx.Response(
            response.status_code,
            headers=response.headers,
            stream=_Tee(response.stream, self.read),  # type: ignore[arg-type]
            extensions=response.extensions,
        )


class _Tee(httpx.SyncByteStream):
    def __init__(self, stream: httpx.SyncByteStream, into: bytearray) -> None:
        self._stream = stream
        self._into = into

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._stream:
            self._into += chunk
            yield chunk

    def close(self) -> None:
        self._stream.close()


def test_keepalives_flow_while_wandb_thinks_and_the_sdk_ignores_them(gw: Proc, fake: Proc) -> None:
    """W&B answers 200 at once, then thinks 1 s before its first chunk, and 0.7 s between its
    two tokens: `: keep-alive` comments every 0.3 s fill both silences."""
    recording = Recording()
    c = client(gw, http_client=httpx.Client(transport=recording))
    stream = c.chat.completions.create(
        model=LLAMA,
        messages=USER,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"x_fake": {"think_s": 1.0, "chunk_delay_s": 0.7, "tokens": 2}},
    )
    chunks = list(stream)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text == f"{WORDS[0]} {WORDS[1]}"
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens == 2
    assert usage.prompt_tokens == prompt_tokens(USER)

    lines = bytes(recording.read).decode().split("\n")
    data = [i for i, line in enumerate(lines) if line.startswith("data: ")]
    comments = [i for i, line in enumerate(lines) if line.startswith(":")]
    assert {lines[i] for i in comments} == {": keep-alive"}
    contents = [i for i in data if '"content":"' + WORDS[1] in lines[i]]
    assert sum(i < data[0] for i in comments) >= 2  # 1 s of thinking
    assert sum(data[0] < i < contents[0] for i in comments) >= 1  # 0.7 s between tokens
    assert recording.headers["x-ratelimit-limit-requests"] == str(SEARCH_LIMIT)


def test_keepalives_do_not_hide_a_silent_wandb_from_the_read_timeout(gw: Proc, fake: Proc) -> None:
    body = {"model": LLAMA, "messages": USER, "stream": True, "x_fake": {"think_s": 30}}
    start = time.monotonic()
    with httpx.stream("POST", gw.url + URL, json=body, headers=AUTH, timeout=10) as r:
        lines = [line for line in r.iter_lines() if line]
    elapsed = time.monotonic() - start
    assert r.status_code == 200
    assert lines.count(": keep-alive") >= 3 and len(lines) == lines.count(": keep-alive") + 1
    assert lines[-1].startswith("data: ") and '"code":"stream_interrupted"' in lines[-1]
    assert "W&B sent no stream data within upstream.read_timeout_s" in lines[-1]
    assert READ_TIMEOUT_S - 0.2 < elapsed < READ_TIMEOUT_S + 3

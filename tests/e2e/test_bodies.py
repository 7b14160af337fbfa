"""Bodies and paths read one way, over real sockets (#11, findings 2, 3, 4, 5 and 7)."""

from __future__ import annotations

import gzip
import json
import re
import socket
from collections.abc import Iterator

import httpx
import pytest

from tests.e2e.helpers import seen, stats
from tests.procs import ADS_KEY, LLAMA, SEARCH_KEY, Proc, base_config, start_gateway

AUTH = {"authorization": f"Bearer {SEARCH_KEY}"}
HELLO = {"model": LLAMA, "messages": [{"role": "user", "content": "hi"}]}


def post(gateway: Proc, body: bytes, **headers: str) -> httpx.Response:
    return httpx.post(
        gateway.url + "/v1/chat/completions",
        content=body,
        headers={**AUTH, "content-type": "application/json", **headers},
        timeout=30,
    )


def envelope(r: httpx.Response, status: int) -> dict[str, object]:
    assert r.status_code == status, r.text
    error: dict[str, object] = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


def requests_counted(gateway: Proc, status: str) -> float:
    text = httpx.get(gateway.url + "/metrics").text
    pattern = rf'^gateway_requests_total{{[^}}]*status="{status}"[^}}]*}} (\S+)$'
    return sum(float(v) for v in re.findall(pattern, text, re.M))


def test_a_gzipped_body_is_415_and_never_reaches_upstream(gateway: Proc, fake: Proc) -> None:
    r = post(gateway, gzip.compress(json.dumps(HELLO).encode()), **{"content-encoding": "gzip"})
    assert envelope(r, 415)["code"] == "unsupported_content_encoding"
    assert stats(fake)["requests"] == 0  # not sent, so not retried, and W&B is not blamed
    assert post(gateway, json.dumps(HELLO).encode(), **{"content-encoding": "identity"}).is_success


@pytest.mark.parametrize(
    "path", ["/v1/chat/completions/", "/v1/models/", "/healthz/", "/v1/usage/", "/metrics/"]
)
def test_trailing_slashes_are_404s_never_redirects_to_the_host_header(
    gateway: Proc, path: str
) -> None:
    for method in ("GET", "POST"):
        r = httpx.request(
            method, gateway.url + path, headers={**AUTH, "host": "evil.example"}, json=HELLO
        )
        assert "location" not in r.headers
        assert r.status_code in (404, 405), (method, path, r.status_code)
        envelope(r, r.status_code)


def test_duplicate_keys_are_400_and_never_reach_upstream(gateway: Proc, fake: Proc) -> None:
    body = b'{"model": "gpt-4o-mini", "model": "microsoft/Phi-4-mini-instruct", "messages": []}'
    assert envelope(post(gateway, body), 400)["param"] == "model"
    utf16 = json.dumps(HELLO).encode("utf-16")
    assert "UTF-8" in str(envelope(post(gateway, utf16), 400)["message"])
    assert stats(fake)["requests"] == 0


def test_lone_surrogates_are_a_400_or_passed_on_untouched(gateway: Proc, fake: Proc) -> None:
    before = requests_counted(gateway, "0")
    for body in (
        b'{"model": "\\ud800", "messages": []}',  # echoed in a message: 400, never a 500
        b'{"model": "gpt-4o-mini", "stream": true, "messages": [], '
        b'"stream_options": {"x": "\\ud800"}}',
    ):
        envelope(post(gateway, body), 400)
    # In a message the gateway only passes it on: W&B gets exactly the bytes sent, alias
    # rewrite and usage request included.
    body = (
        b'{"model": "gpt-4o-mini", "stream": true, "seed": 36893488147419103232, '
        b'"messages": [{"role": "user", "content": "\\ud800 hi"}]}'
    )
    r = post(gateway, body)
    assert r.status_code == 200 and "data: [DONE]" in r.text
    sent = seen(fake)[-1]["body"]
    assert sent["messages"][0]["content"] == "\ud800 hi"
    assert sent["seed"] == 36893488147419103232 and sent["model"] == LLAMA
    assert requests_counted(gateway, "0") == before  # no request left uncounted as status 0
    assert requests_counted(gateway, "400") >= 2


def test_a_65_bit_integer_is_read_once(gateway: Proc, fake: Proc) -> None:
    body = json.dumps({**HELLO, "seed": 2**64 + 1, "logit_bias": {"1": 2**65}}).encode()
    assert post(gateway, body).is_success
    assert seen(fake)[-1]["body"]["seed"] == 2**64 + 1


@pytest.fixture(scope="module")
def queued(fake: Proc) -> Iterator[Proc]:
    proc = start_gateway(base_config(fake.url, tenants__search__max_queue=2))
    yield proc
    proc.stop()


def _head(gateway: Proc, length: int) -> socket.socket:
    """A chat request's headers only: its body of `length` bytes never sent."""
    host, port = gateway.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\n"
        + b"Authorization: Bearer %s\r\nContent-Type: application/json\r\n" % SEARCH_KEY.encode()
        + b"Content-Length: %d\r\n\r\n" % length
    )
    return sock


def test_past_max_queue_a_tenant_is_refused_before_its_body_is_read(
    queued: Proc, fake: Proc
) -> None:
    held = [_head(queued, 1024) for _ in range(2)]  # two in the handler, reading their bodies
    try:
        for _ in range(20):  # until both are admitted
            r = httpx.post(queued.url + "/v1/chat/completions", json=HELLO, headers=AUTH)
            if r.status_code == 429:
                break
        error = envelope(r, 429)
        assert error["code"] == "rate_limit_exceeded" and "max_queue" in str(error["message"])
        assert r.headers["retry-after"] == "1"
        # Refused on its headers alone: a 30 MiB body declared but never sent.
        third = _head(queued, 30 * 1024 * 1024)
        answer = third.recv(4096)
        assert answer.startswith(b"HTTP/1.1 429 ")
        third.close()
        ads = httpx.post(
            queued.url + "/v1/chat/completions",
            json=HELLO,
            headers={"authorization": f"Bearer {ADS_KEY}"},
        )
        assert ads.is_success  # another tenant is not affected
    finally:
        for sock in held:
            sock.close()
    ok = httpx.post(queued.url + "/v1/chat/completions", json=HELLO, headers=AUTH, timeout=10)
    assert ok.is_success  # the places are given back when the clients go

"""Every error the gateway can give: status, OpenAI envelope, retries, and no leaked key."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.e2e.helpers import USER, client, faults, seen, stats
from tests.poll import until_sync
from tests.procs import (
    LIMITED_KEY,
    LLAMA,
    PHI,
    RETIRED,
    SEARCH_KEY,
    WANDB_KEY,
    Proc,
    base_config,
    free_port,
    start_gateway,
)

AUTH = {"Authorization": f"Bearer {SEARCH_KEY}"}


def envelope(resp: httpx.Response) -> dict[str, Any]:
    body = resp.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert WANDB_KEY not in resp.text and SEARCH_KEY not in resp.text
    error: dict[str, Any] = body["error"]
    return error


def post(
    gateway: Proc, body: Any = None, *, content: bytes | None = None, **kw: Any
) -> httpx.Response:
    headers = {**AUTH, **kw.pop("headers", {})}
    if content is not None:
        return httpx.post(gateway.url + "/v1/chat/completions", content=content, headers=headers)
    return httpx.post(gateway.url + "/v1/chat/completions", json=body, headers=headers, **kw)


@pytest.fixture(scope="module")
def strict(fake: Proc) -> Iterator[Proc]:
    """A gateway with a small body limit, a short read timeout and one retry."""
    proc = start_gateway(
        base_config(
            fake.url,
            server__max_body_bytes=2048,
            upstream__read_timeout_s=0.5,
            upstream__retries=1,
        )
    )
    yield proc
    proc.stop()


# --- the caller's mistakes: refused before anything goes upstream ---------------------------


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer sk-gw-wrong"}, {"Authorization": "Basic abc"}],
    ids=["missing", "unknown", "not-bearer"],
)
def test_bad_key_is_401_and_nothing_goes_upstream(
    gateway: Proc, fake: Proc, headers: dict[str, str]
) -> None:
    resp = httpx.post(
        gateway.url + "/v1/chat/completions",
        json={"model": LLAMA, "messages": USER},
        headers=headers,
    )
    assert resp.status_code == 401
    assert envelope(resp)["type"] == "authentication_error"
    assert "sk-gw-wrong" not in resp.text
    assert stats(fake)["requests"] == 0


def test_sdk_sees_authentication_error(gateway: Proc) -> None:
    with pytest.raises(openai.AuthenticationError):
        client(gateway, key="sk-gw-nope").chat.completions.create(model=LLAMA, messages=USER)
    with pytest.raises(openai.AuthenticationError):
        client(gateway, key="sk-gw-nope").models.list()


@pytest.mark.parametrize(
    ("content", "param"),
    [
        (b"{not json", None),
        (b"[1, 2]", None),
        (b'{"messages": []}', "model"),
        (b'{"model": 5, "messages": []}', "model"),
        (b'{"model": "m"}', "messages"),
        (b'{"model": "m", "messages": "hi"}', "messages"),
        (b'{"model": "m", "messages": [], "stream": "yes"}', "stream"),
    ],
)
def test_bad_body_is_400_with_param(
    gateway: Proc, fake: Proc, content: bytes, param: str | None
) -> None:
    resp = post(gateway, content=content, headers={"Content-Type": "application/json"})
    assert resp.status_code == 400
    error = envelope(resp)
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert stats(fake)["requests"] == 0


def test_body_too_large_is_413(strict: Proc, fake: Proc) -> None:
    big = [{"role": "user", "content": "x" * 5000}]
    resp = post(strict, {"model": LLAMA, "messages": big})
    assert resp.status_code == 413
    assert envelope(resp)["type"] == "invalid_request_error"
    chunked = httpx.post(
        strict.url + "/v1/chat/completions",
        content=iter([b'{"model": "m", "messages": [', b" " * 4096, b"]}"]),
        headers=AUTH,
    )
    assert chunked.status_code == 413
    assert stats(fake)["requests"] == 0


def test_unknown_path_404_and_wrong_method_405(gateway: Proc) -> None:
    resp = httpx.get(gateway.url + "/v1/nothing-here", headers=AUTH)
    assert resp.status_code == 404
    assert envelope(resp)["type"] == "invalid_request_error"
    resp = httpx.get(gateway.url + "/v1/chat/completions", headers=AUTH)
    assert resp.status_code == 405
    assert envelope(resp)["type"] == "invalid_request_error"


def test_model_outside_allow_list_is_404(gateway: Proc, fake: Proc) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        client(gateway, key=LIMITED_KEY).chat.completions.create(model=PHI, messages=USER)
    assert err.value.code == "model_not_found"
    assert seen(fake) == []


def test_retired_model_404_passes_through(gateway: Proc) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        client(gateway).chat.completions.create(model=RETIRED, messages=USER)
    assert err.value.code == "model_not_found"


# --- upstream trouble ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["500", "503", "429", "reset"])
def test_transient_upstream_failure_is_retried(gateway: Proc, fake: Proc, kind: str) -> None:
    faults(fake, {"kind": kind, "count": 2})
    resp = client(gateway).chat.completions.create(model=LLAMA, messages=USER)
    assert resp.choices[0].message.content
    assert len(seen(fake)) == 3  # two failures, then the retry that worked


def test_transient_failure_in_a_stream_is_retried_before_first_byte(
    gateway: Proc, fake: Proc
) -> None:
    faults(fake, {"kind": "503"})
    stream = client(gateway).chat.completions.create(model=LLAMA, messages=USER, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert len(seen(fake)) == 2


@pytest.mark.parametrize(
    ("kind", "status", "exc", "code"),
    [
        ("500", 502, openai.InternalServerError, "upstream_error"),
        ("503", 503, openai.InternalServerError, "upstream_overloaded"),
        ("429", 429, openai.RateLimitError, "rate_limit_exceeded"),
        ("reset", 502, openai.InternalServerError, "upstream_unreachable"),
    ],
)
def test_retries_exhausted(
    gateway: Proc, fake: Proc, kind: str, status: int, exc: type[Exception], code: str
) -> None:
    faults(fake, {"kind": kind, "count": 3})
    with pytest.raises(exc) as err:
        client(gateway).chat.completions.create(model=LLAMA, messages=USER)
    assert isinstance(err.value, openai.APIStatusError)
    assert err.value.status_code == status
    assert err.value.code == code
    assert len(seen(fake)) == 3  # retries: 2


@pytest.mark.parametrize("kind", ["quota", "quota402"])
def test_quota_is_429_insufficient_quota_never_retried(
    gateway: Proc, fake: Proc, kind: str
) -> None:
    faults(fake, {"kind": kind, "count": 3})
    resp = post(gateway, {"model": LLAMA, "messages": USER})
    assert resp.status_code == 429
    error = envelope(resp)
    assert (error["type"], error["code"]) == ("insufficient_quota", "insufficient_quota")
    assert resp.headers["x-should-retry"] == "false"
    assert len(seen(fake)) == 1


@pytest.mark.parametrize(("kind", "words"), [("401", "credentials"), ("403", "region")])
def test_upstream_auth_is_the_gateways_problem(
    gateway: Proc, fake: Proc, kind: str, words: str
) -> None:
    faults(fake, {"kind": kind})
    resp = post(gateway, {"model": LLAMA, "messages": USER})
    assert resp.status_code == 502
    error = envelope(resp)
    assert error["code"] == "upstream_auth_error"
    assert words in error["message"]
    assert "operators" in error["message"]
    assert len(seen(fake)) == 1


def test_read_timeout_is_504(strict: Proc, fake: Proc) -> None:
    faults(fake, {"kind": "delay", "seconds": 2})
    resp = post(strict, {"model": LLAMA, "messages": USER})
    assert resp.status_code == 504
    assert envelope(resp)["code"] == "upstream_timeout"


def test_unreachable_upstream_is_502(fake: Proc) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    gw = start_gateway(base_config(dead, upstream__retries=1))
    try:
        resp = post(gw, {"model": LLAMA, "messages": USER})
        assert resp.status_code == 502
        assert envelope(resp)["code"] == "upstream_unreachable"
    finally:
        gw.stop()


def test_stream_cut_midway_ends_with_an_error_event(gateway: Proc, fake: Proc) -> None:
    faults(fake, {"kind": "cut", "after": 3})
    got = ""
    stream = client(gateway).chat.completions.create(model=LLAMA, messages=USER, stream=True)
    with pytest.raises(openai.APIError) as err:
        for chunk in stream:
            if chunk.choices:
                got += chunk.choices[0].delta.content or ""
    assert got == "Hello from the "
    assert "stream" in err.value.message
    assert len(seen(fake)) == 1  # bytes had reached the client: no retry


def test_stream_read_timeout_midway_ends_with_an_error_event(strict: Proc, fake: Proc) -> None:
    with httpx.stream(
        "POST",
        strict.url + "/v1/chat/completions",
        headers=AUTH,
        json={"model": LLAMA, "messages": USER, "stream": True, "x_fake": {"chunk_delay_s": 2}},
    ) as resp:
        body = resp.read().decode()
    assert resp.status_code == 200
    assert body.count("data: ") == 3  # the role chunk, one word, then the error event
    assert '"error"' in body.splitlines()[-2] or '"error"' in body.strip().splitlines()[-1]
    assert "[DONE]" not in body


def test_a_slow_but_steady_stream_is_not_cut(strict: Proc, fake: Proc) -> None:
    """Each gap (0.3 s) is under upstream.read_timeout_s (0.5 s); the whole (1.8 s) is not."""
    with httpx.stream(
        "POST",
        strict.url + "/v1/chat/completions",
        headers=AUTH,
        json={
            "model": LLAMA,
            "messages": USER,
            "stream": True,
            "x_fake": {"chunk_delay_s": 0.3, "tokens": 7},
        },
    ) as resp:
        body = resp.read().decode()
    assert resp.status_code == 200
    assert body.rstrip().endswith("data: [DONE]") and '"error"' not in body


def test_a_stream_that_never_starts_is_504(strict: Proc, fake: Proc) -> None:
    resp = post(
        strict, {"model": LLAMA, "messages": USER, "stream": True, "x_fake": {"delay_s": 2}}
    )
    assert resp.status_code == 504
    assert envelope(resp)["code"] == "upstream_timeout"


def test_logs_never_hold_keys(gateway: Proc, strict: Proc) -> None:
    procs = (gateway, strict)
    for proc in procs:
        post(proc, {"model": LLAMA, "messages": USER})
    until_sync(  # access lines are written in batches, 0.2 s apart
        lambda: all("gateway.access" in p.logs() for p in procs), what="an access line from each"
    )
    for proc in procs:
        logs = proc.logs()
        assert WANDB_KEY not in logs
        assert SEARCH_KEY not in logs
        assert LIMITED_KEY not in logs


def test_deeply_nested_body_with_an_alias_is_400(gateway: Proc, fake: Proc) -> None:
    nested = "[" * 1000 + "]" * 1000
    body = f'{{"model": "gpt-4o-mini", "messages": [], "x": {nested}}}'.encode()
    resp = post(gateway, content=body, headers={"Content-Type": "application/json"})
    assert resp.status_code == 400
    assert envelope(resp)["type"] == "invalid_request_error"


def test_the_access_log_cannot_be_forged(gateway: Proc) -> None:
    httpx.get(gateway.url + "/x%0A2026-01-01 INFO gateway.access: forged POST 200")
    # written just after the response
    until_sync(lambda: "/x%0A2026-01-01" in gateway.logs(), what="the access line")
    assert "\n2026-01-01 INFO gateway.access: forged" not in gateway.logs()


def test_a_client_that_stops_reading_a_stream_loses_its_slot(strict: Proc, fake: Proc) -> None:
    """It never disconnects, it just stops reading: once the socket buffers are full and
    upstream.read_timeout_s (0.5 s here) plus the stall margin (5 s) pass, the gateway treats it
    as gone, closes upstream and frees the slot."""
    import json
    import socket

    body = json.dumps(
        {"model": LLAMA, "messages": USER, "stream": True, "x_fake": {"tokens": 200_000}}
    ).encode()
    host, port = strict.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {SEARCH_KEY}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        until_sync(lambda: stats(fake)["inflight"].get(WANDB_KEY) == 1, what="the stream upstream")
        until_sync(
            lambda: stats(fake)["inflight"].get(WANDB_KEY) == 0,
            timeout_s=15,
            what="the stalled client's slot freed",
        )
    finally:
        sock.close()

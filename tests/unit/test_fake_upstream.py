"""The fake W&B upstream, over real sockets: auth, answers, limits, faults, control API."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
from openai import AsyncOpenAI

from gateway.testing.fake_upstream import (
    DEFAULT_KEY,
    FakeSettings,
    default_settings,
    start,
)
from tests.poll import until

PROJECT = "team/proj"
HEADERS = {"Authorization": f"Bearer {DEFAULT_KEY}", "OpenAI-Project": PROJECT}
MODEL = "meta-llama/Llama-3.1-8B-Instruct"
TEXT8 = "Hello from the fake W&B upstream for testing"
CHAT = "/v1/chat/completions"

Serve = Callable[..., Awaitable[str]]


def body(**extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": "Hi there"}], **extra}


def expected_prompt_tokens(messages: list[dict[str, Any]]) -> int:
    """The documented formula, written independently of the module."""
    total = 0
    for m in messages:
        total += 3
        content = m["content"]
        if isinstance(content, str):
            total += len(content.split())
        else:
            for part in content:
                total += len(part["text"].split()) if part["type"] == "text" else 85
    return total


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    runners = []

    async def _serve(settings: FakeSettings | None = None) -> str:
        runner = await start(settings or default_settings(), "127.0.0.1", 0)
        runners.append(runner)
        host, port = runner.addresses[0][:2]
        return f"http://{host}:{port}"

    yield _serve
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
async def client(serve: Serve) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=await serve(), headers=HEADERS, timeout=5) as c:
        yield c


async def stats(client: httpx.AsyncClient) -> dict[str, Any]:
    data: dict[str, Any] = (await client.get("/_fake/stats")).json()
    return data


async def inflight_is(client: httpx.AsyncClient, n: int) -> bool:
    return bool((await stats(client))["inflight"].get(DEFAULT_KEY) == n)


# How long the fake may take to reach a state: polled (it is a server, whose state has no event to
# wait on), though it needs milliseconds.
SOON_S = 2.0


async def read_sse(
    client: httpx.AsyncClient, payload: dict[str, Any], events: list[Any] | None = None
) -> list[Any]:
    """Events of one stream, "[DONE]" kept as a string; appends to `events` as they arrive."""
    events = [] if events is None else events
    async with client.stream("POST", CHAT, json=payload) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        async for line in resp.aiter_lines():
            if line:
                assert line.startswith("data: ")
                data = line.removeprefix("data: ")
                events.append(data if data == "[DONE]" else json.loads(data))
    return events


# --- auth ----------------------------------------------------------------------------------

INVALID_AUTH = {
    "error": {
        "message": "Invalid Authentication",
        "type": "invalid_authentication_error",
        "param": None,
        "code": "invalid_api_key",
    }
}


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": "Bearer wrong", "OpenAI-Project": PROJECT},
        {"OpenAI-Project": PROJECT},
        {"Authorization": f"Bearer {DEFAULT_KEY}"},
        {"Authorization": f"Bearer {DEFAULT_KEY}", "OpenAI-Project": "noslash"},
        {"Authorization": f"Bearer {DEFAULT_KEY}", "OpenAI-Project": "a/b/c"},
        {"Authorization": f"Bearer {DEFAULT_KEY}", "OpenAI-Project": "/proj"},
        {"Authorization": f"Bearer {DEFAULT_KEY}", "OpenAI-Project": "team/"},
        {"Authorization": f"Bearer {DEFAULT_KEY}", "OpenAI-Project": "other/proj"},
    ],
)
async def test_chat_auth_401(serve: Serve, headers: dict[str, str]) -> None:
    settings = FakeSettings(api_keys={DEFAULT_KEY: frozenset({PROJECT, "a/b"})})
    async with httpx.AsyncClient(base_url=await serve(settings)) as c:
        resp = await c.post(CHAT, json=body(), headers=headers)
        assert resp.status_code == 401
        assert resp.json() == INVALID_AUTH
        assert (await stats(c))["requests"] == 1
        assert (await c.get("/_fake/requests")).json() == {"data": []}


async def test_allowed_project_accepted(serve: Serve) -> None:
    settings = FakeSettings(api_keys={"k": frozenset({"team/a"})})
    async with httpx.AsyncClient(base_url=await serve(settings)) as c:
        headers = {"Authorization": "Bearer k", "OpenAI-Project": "team/a"}
        assert (await c.post(CHAT, json=body(), headers=headers)).status_code == 200


# --- models and plain answers --------------------------------------------------------------


async def test_models_list(client: httpx.AsyncClient) -> None:
    resp = await client.get("/v1/models", headers={"OpenAI-Project": ""})
    assert resp.status_code == 200
    data = resp.json()
    assert data["object"] == "list"
    assert [m["id"] for m in data["data"]] == list(default_settings().models)
    first = data["data"][0]
    assert first["object"] == "model"
    assert first["owned_by"] == "meta-llama"
    assert isinstance(first["created"], int)
    anonymous = await client.get("/v1/models", headers={"Authorization": "Bearer nope"})
    assert anonymous.status_code == 401
    assert anonymous.json() == INVALID_AUTH


async def test_non_stream_shape_and_usage(client: httpx.AsyncClient) -> None:
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "You are  a helpful\nassistant."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in this picture?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
            ],
        },
    ]
    resp = await client.post(CHAT, json={"model": MODEL, "messages": messages})
    assert resp.status_code == 200
    data = resp.json()
    assert data["id"].startswith("chatcmpl-fake-")
    assert data["object"] == "chat.completion"
    assert data["model"] == MODEL
    assert isinstance(data["created"], int)
    assert data["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": TEXT8},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ]
    prompt = expected_prompt_tokens(messages)
    assert prompt == (3 + 5) + (3 + 5 + 85)
    assert data["usage"] == {
        "prompt_tokens": prompt,
        "completion_tokens": 8,
        "total_tokens": prompt + 8,
    }
    second = (await client.post(CHAT, json=body())).json()
    assert second["id"] != data["id"]


@pytest.mark.parametrize(
    ("extra", "tokens", "finish"),
    [
        ({"max_tokens": 3}, 3, "length"),
        ({"max_completion_tokens": 2, "max_tokens": 5}, 2, "length"),
        ({"max_tokens": 20}, 8, "stop"),
        ({"max_tokens": 8}, 8, "stop"),
        ({"x_fake": {"tokens": 11}}, 11, "stop"),
        ({"x_fake": {"tokens": 1}}, 1, "stop"),
    ],
)
async def test_token_count_and_finish_reason(
    client: httpx.AsyncClient, extra: dict[str, Any], tokens: int, finish: str
) -> None:
    data = (await client.post(CHAT, json=body(**extra))).json()
    choice = data["choices"][0]
    assert choice["finish_reason"] == finish
    words = choice["message"]["content"].split(" ")
    assert len(words) == tokens
    assert words[:2] == ["Hello", "from"][:tokens]
    assert data["usage"]["completion_tokens"] == tokens


async def test_n_choices(client: httpx.AsyncClient) -> None:
    data = (await client.post(CHAT, json=body(n=2, max_tokens=4))).json()
    assert [c["index"] for c in data["choices"]] == [0, 1]
    assert {c["message"]["content"] for c in data["choices"]} == {"Hello from the fake"}
    assert data["usage"]["completion_tokens"] == 8


@pytest.mark.parametrize("model", ["deepseek-ai/DeepSeek-R1-0528", "no/such-model"])
async def test_retired_or_unknown_model_404(client: httpx.AsyncClient, model: str) -> None:
    resp = await client.post(CHAT, json=body(model=model))
    assert resp.status_code == 404
    assert resp.json() == {
        "error": {
            "message": f"The model `{model}` does not exist.",
            "type": "invalid_request_error",
            "param": "model",
            "code": "model_not_found",
        }
    }


@pytest.mark.parametrize(
    ("content", "param"),
    [
        (b"{not json", None),
        (b"[1, 2]", None),
        (json.dumps({"messages": []}).encode(), "model"),
        (json.dumps({"model": MODEL, "messages": "hi"}).encode(), "messages"),
        (json.dumps(body(n=0)).encode(), "n"),
        (json.dumps(body(x_fake={"tokens": "many"})).encode(), "x_fake"),
    ],
)
async def test_bad_body_400(client: httpx.AsyncClient, content: bytes, param: str | None) -> None:
    resp = await client.post(CHAT, content=content)
    assert resp.status_code == 400
    error = resp.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param


async def test_unknown_path_404(client: httpx.AsyncClient) -> None:
    resp = await client.get("/v1/nothing")
    assert resp.status_code == 404
    assert set(resp.json()["error"]) == {"message", "type", "param", "code"}
    assert (await client.get(CHAT)).status_code == 405


# --- streaming -----------------------------------------------------------------------------


async def test_stream_without_usage(client: httpx.AsyncClient) -> None:
    events = await read_sse(client, body(stream=True, max_tokens=3))
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all("usage" not in c for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == MODEL for c in chunks)
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert deltas[0] == {"role": "assistant", "content": ""}
    assert deltas[1:4] == [{"content": "Hello "}, {"content": "from "}, {"content": "the"}]
    assert deltas[4] == {}
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None] * 4 + ["length"]
    assert all(c["choices"][0]["logprobs"] is None for c in chunks)


async def test_stream_with_usage(client: httpx.AsyncClient) -> None:
    payload = body(stream=True, stream_options={"include_usage": True})
    events = await read_sse(client, payload)
    assert events[-1] == "[DONE]"
    *chunks, usage_chunk = events[:-1]
    assert all(c["usage"] is None for c in chunks)
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == TEXT8
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert usage_chunk["choices"] == []
    prompt = expected_prompt_tokens(payload["messages"])
    assert usage_chunk["usage"] == {
        "prompt_tokens": prompt,
        "completion_tokens": 8,
        "total_tokens": prompt + 8,
    }


async def test_stream_n2(client: httpx.AsyncClient) -> None:
    payload = body(stream=True, n=2, max_tokens=2, stream_options={"include_usage": True})
    events = await read_sse(client, payload)
    texts = {0: "", 1: ""}
    finishes = {}
    for chunk in events[:-2]:
        (choice,) = chunk["choices"]
        texts[choice["index"]] += choice["delta"].get("content", "")
        if choice["finish_reason"]:
            finishes[choice["index"]] = choice["finish_reason"]
    assert texts == {0: "Hello from", 1: "Hello from"}
    assert finishes == {0: "length", 1: "length"}
    assert events[-2]["usage"]["completion_tokens"] == 4


async def test_stream_chunks_leave_as_produced(client: httpx.AsyncClient) -> None:
    payload = body(stream=True, x_fake={"tokens": 3, "chunk_delay_s": 0.1})
    arrivals: list[float] = []
    began = time.monotonic()
    async with client.stream("POST", CHAT, json=payload) as resp:
        async for line in resp.aiter_lines():
            if '"content":"Hello ' in line:
                arrivals.append(time.monotonic() - began)
    assert arrivals and arrivals[0] < 0.1
    assert time.monotonic() - began >= 0.2


async def test_x_fake_cut_after(client: httpx.AsyncClient) -> None:
    events: list[Any] = []
    with pytest.raises(httpx.TransportError):
        await read_sse(client, body(stream=True, x_fake={"cut_after": 2}), events)
    assert [e["choices"][0]["delta"] for e in events] == [
        {"role": "assistant", "content": ""},
        {"content": "Hello "},
        {"content": "from "},
    ]


# --- concurrency ---------------------------------------------------------------------------

CONCURRENCY_429 = {
    "error": {
        "message": "Concurrency limit reached for requests",
        "type": "rate_limit_error",
        "param": None,
        "code": "concurrency_limit",
    }
}


async def test_key_concurrency_limit(serve: Serve) -> None:
    settings = FakeSettings(api_keys={DEFAULT_KEY: None}, concurrency=2)
    async with httpx.AsyncClient(base_url=await serve(settings), headers=HEADERS) as c:
        slow = [asyncio.create_task(c.post(CHAT, json=body(x_fake={"delay_s": 0.3})))]
        slow.append(
            asyncio.create_task(c.post(CHAT, json=body(stream=True, x_fake={"delay_s": 0.3})))
        )
        await until(lambda: inflight_is(c, 2), SOON_S, "2 in flight")
        rejected = await c.post(CHAT, json=body())
        assert rejected.status_code == 429
        assert rejected.json() == CONCURRENCY_429
        assert [r.status_code for r in await asyncio.gather(*slow)] == [200, 200]
        after = await stats(c)
        assert after["inflight"] == {DEFAULT_KEY: 0}
        assert after["max_inflight"] == {DEFAULT_KEY: 2}
        assert after["max_inflight_project"] == {PROJECT: 2}
        assert after["rejected_429"] == 1
        assert after["completed"] == 2
        assert after["requests"] == 3
        assert (await c.post(CHAT, json=body())).status_code == 200


async def test_project_concurrency_limit(serve: Serve) -> None:
    settings = FakeSettings(api_keys={DEFAULT_KEY: None}, project_concurrency=1)
    async with httpx.AsyncClient(base_url=await serve(settings), headers=HEADERS) as c:
        slow = asyncio.create_task(c.post(CHAT, json=body(x_fake={"delay_s": 0.3})))
        await until(lambda: inflight_is(c, 1), SOON_S, "1 in flight")
        assert (await c.post(CHAT, json=body())).status_code == 429
        other = {"OpenAI-Project": "team/other"}
        assert (await c.post(CHAT, json=body(), headers=other)).status_code == 200
        assert (await slow).status_code == 200
        after = await stats(c)
        assert after["max_inflight_project"] == {PROJECT: 1, "team/other": 1}
        assert after["max_inflight"] == {DEFAULT_KEY: 2}


# --- faults --------------------------------------------------------------------------------

QUOTA = "You exceeded your current quota, please check your plan and billing details"


@pytest.mark.parametrize(
    ("kind", "status", "message", "type_", "code"),
    [
        ("500", 500, "The server had an error while processing your request", "server_error", None),
        (
            "503",
            503,
            "The engine is currently overloaded, please try again later",
            "server_error",
            None,
        ),
        (
            "429",
            429,
            "Concurrency limit reached for requests",
            "rate_limit_error",
            "concurrency_limit",
        ),
        ("quota", 429, QUOTA, "insufficient_quota", "insufficient_quota"),
        ("quota402", 402, QUOTA, "insufficient_quota", "insufficient_quota"),
        ("401", 401, "Invalid Authentication", "invalid_authentication_error", "invalid_api_key"),
        ("403", 403, "Country, region, or territory not supported", "permission_error", None),
    ],
)
async def test_error_faults(
    client: httpx.AsyncClient, kind: str, status: int, message: str, type_: str, code: str | None
) -> None:
    queued = await client.post("/_fake/faults", json={"faults": [{"kind": kind}]})
    assert queued.json() == {"queued": 1}
    resp = await client.post(CHAT, json=body())
    assert resp.status_code == status
    error = resp.json()["error"]
    assert (error["message"], error["type"], error["param"]) == (message, type_, None)
    if code is not None:
        assert error["code"] == code
    assert (await client.post(CHAT, json=body())).status_code == 200
    records = (await client.get("/_fake/requests")).json()["data"]
    assert [r["status"] for r in records] == [status, 200]


async def test_fault_queue_is_fifo_with_counts(client: httpx.AsyncClient) -> None:
    faults = {"faults": [{"kind": "503", "count": 2}, {"kind": "500"}]}
    assert (await client.post("/_fake/faults", json=faults)).json() == {"queued": 3}
    assert (await stats(client))["faults_pending"] == 3
    codes = [(await client.post(CHAT, json=body())).status_code for _ in range(4)]
    assert codes == [503, 503, 500, 200]
    bad = await client.post("/_fake/faults", json={"faults": [{"kind": "explode"}]})
    assert bad.status_code == 400


async def test_reset_fault(client: httpx.AsyncClient) -> None:
    await client.post("/_fake/faults", json={"faults": [{"kind": "reset"}]})
    with pytest.raises(httpx.TransportError):
        await client.post(CHAT, json=body())
    assert (await client.post(CHAT, json=body())).status_code == 200
    records = (await client.get("/_fake/requests")).json()["data"]
    assert [r["status"] for r in records] == [0, 200]


async def test_cut_fault(client: httpx.AsyncClient) -> None:
    await client.post("/_fake/faults", json={"faults": [{"kind": "cut", "after": 1, "count": 2}]})
    events: list[Any] = []
    with pytest.raises(httpx.TransportError):
        await read_sse(client, body(stream=True), events)
    assert [e["choices"][0]["delta"] for e in events] == [
        {"role": "assistant", "content": ""},
        {"content": "Hello "},
    ]
    with pytest.raises(httpx.TransportError):  # non-stream: like "reset"
        await client.post(CHAT, json=body())
    assert (await stats(client))["inflight"] == {DEFAULT_KEY: 0}


async def test_delay_fault(client: httpx.AsyncClient) -> None:
    await client.post("/_fake/faults", json={"faults": [{"kind": "delay", "seconds": 0.2}]})
    began = time.monotonic()
    resp = await client.post(CHAT, json=body())
    assert resp.status_code == 200
    assert time.monotonic() - began >= 0.2


async def test_hang_released_by_client_disconnect(client: httpx.AsyncClient) -> None:
    await client.post("/_fake/faults", json={"faults": [{"kind": "hang"}]})
    with pytest.raises(httpx.ReadTimeout):
        await client.post(CHAT, json=body(), timeout=0.2)
    await until(lambda: inflight_is(client, 0), SOON_S, "none in flight")
    after = await stats(client)
    assert after["disconnects"] == 1
    assert after["max_inflight"] == {DEFAULT_KEY: 1}
    assert after["completed"] == 0


async def test_disconnect_during_delay(client: httpx.AsyncClient) -> None:
    with pytest.raises(httpx.ReadTimeout):
        await client.post(CHAT, json=body(x_fake={"delay_s": 5}), timeout=0.2)

    async def counted() -> bool:
        s = await stats(client)
        return bool(s["disconnects"] == 1 and s["inflight"] == {DEFAULT_KEY: 0})

    await until(counted, SOON_S, "the disconnect counted")


async def test_cleanup_does_not_wait_for_hang() -> None:
    settings = default_settings()
    runner = await start(settings, "127.0.0.1", 0)
    host, port = runner.addresses[0][:2]
    async with httpx.AsyncClient(base_url=f"http://{host}:{port}", headers=HEADERS) as c:
        await c.post("/_fake/faults", json={"faults": [{"kind": "hang"}]})
        pending = asyncio.create_task(c.post(CHAT, json=body()))
        await until(lambda: inflight_is(c, 1), SOON_S, "1 in flight")
        began = time.monotonic()
        await runner.cleanup()
        assert time.monotonic() - began < 2
        with pytest.raises(httpx.TransportError):
            await pending


# --- control API ---------------------------------------------------------------------------


async def test_records_stats_and_reset(client: httpx.AsyncClient) -> None:
    payload = body(temperature=0.5, extra_field={"kept": True})
    await client.post(CHAT, json=payload, headers={"X-Request-Id": "abc"})
    await client.post(CHAT, json=body(model="no/such"))
    (first, second) = (await client.get("/_fake/requests")).json()["data"]
    assert first["body"] == payload
    assert first["status"] == 200
    assert first["headers"]["authorization"] == f"Bearer {DEFAULT_KEY}"
    assert first["headers"]["openai-project"] == PROJECT
    assert first["headers"]["x-request-id"] == "abc"
    assert second["status"] == 404
    before = await stats(client)
    assert (before["requests"], before["completed"], before["max_inflight"]) == (
        2,
        1,
        {DEFAULT_KEY: 1},
    )
    await client.post("/_fake/faults", json={"faults": [{"kind": "500"}]})
    assert (await client.post("/_fake/reset")).status_code == 200
    assert (await client.get("/_fake/requests")).json() == {"data": []}
    after = await stats(client)
    assert after["max_inflight"] == {}
    assert after["max_inflight_project"] == {}
    for name in ("requests", "completed", "rejected_429", "disconnects", "faults_pending"):
        assert after[name] == 0
    assert (await client.post(CHAT, json=body())).status_code == 200


# --- the official SDK ----------------------------------------------------------------------


async def test_openai_sdk(serve: Serve) -> None:
    base = await serve()
    sdk = AsyncOpenAI(base_url=f"{base}/v1", api_key=DEFAULT_KEY, project=PROJECT, max_retries=0)
    async with sdk:
        models = await sdk.models.list()
        assert [m.id for m in models.data] == list(default_settings().models)
        completion = await sdk.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Hi there"}], max_tokens=2
        )
        assert completion.choices[0].message.content == "Hello from"
        assert completion.choices[0].finish_reason == "length"
        assert completion.usage is not None and completion.usage.prompt_tokens == 5
        stream = await sdk.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Hi there"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        text, usage = "", None
        async for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
            else:
                usage = chunk.usage
        assert text == TEXT8
        assert usage is not None and usage.total_tokens == 13
    async with httpx.AsyncClient(base_url=base) as c:
        records = (await c.get("/_fake/requests")).json()["data"]
    assert [r["headers"]["openai-project"] for r in records] == [PROJECT, PROJECT]

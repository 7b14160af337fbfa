"""The fake W&B upstream, over real sockets: auth, answers, limits, faults, control API."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from openai import AsyncOpenAI

from gateway.testing.fake_upstream import (
    CACHE_LIMIT,
    DEFAULT_KEY,
    FakeSettings,
    default_settings,
    start,
)
from gateway.testing.prefix_cache import PrefixCache
from tests.poll import until

PROJECT = "team/proj"
HEADERS = {"Authorization": f"Bearer {DEFAULT_KEY}", "OpenAI-Project": PROJECT}
MODEL = "meta-llama/Llama-3.1-8B-Instruct"
TEXT8 = "Hello from the fake W&B upstream for testing"
REASONER = "openai/gpt-oss-20b"
THOUGHT4 = "Let me think this"  # the default reasoning: 4 tokens
CHAT = "/v1/chat/completions"
ROOT = Path(__file__).resolve().parents[2]

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


RETIRED_THREE = (
    "deepseek-ai/DeepSeek-R1-0528",
    "deepseek-ai/DeepSeek-V3-0324",
    "meta-llama/Llama-4-Scout-17B-16E-Instruct",
)


def test_catalogue_is_the_shipped_price_table() -> None:
    """The fake serves what config/gateway.yaml prices; what W&B retired is an alias there."""
    table = yaml.safe_load((ROOT / "config/gateway.yaml").read_text())["models"]
    settings = default_settings()
    assert set(settings.models) == set(table)
    assert settings.models[0] == MODEL  # tests take the first model for a plain one
    aliases = {alias for entry in table.values() for alias in entry.get("aliases", ())}
    assert set(RETIRED_THREE) <= set(settings.retired) <= aliases
    assert not set(settings.retired) & set(settings.models)
    assert settings.reasoning <= set(settings.models)
    assert {REASONER, "openai/gpt-oss-120b", "Qwen/Qwen3-235B-A22B-Thinking-2507"} <= (
        settings.reasoning
    )
    assert not {MODEL, "deepseek-ai/DeepSeek-V3.1"} & settings.reasoning


@pytest.mark.parametrize("model", [*RETIRED_THREE, "no/such-model"])
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
        (json.dumps(body(x_fake={"reasoning_tokens": -1})).encode(), "x_fake"),
        (json.dumps(body(x_fake={"cached_tokens": 1.5})).encode(), "x_fake"),
        (json.dumps(body(cache_salt=5)).encode(), "cache_salt"),
        (json.dumps(body(cache_salt="")).encode(), "cache_salt"),
        (json.dumps(body(cache_salt=["a"])).encode(), "cache_salt"),
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


# --- reasoning -----------------------------------------------------------------------------


def reasoning_usage(prompt: int, reasoning: int, content: int) -> dict[str, Any]:
    completion = reasoning + content
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "completion_tokens_details": {"reasoning_tokens": reasoning},
    }


async def test_reasoning_model_answers_with_reasoning(client: httpx.AsyncClient) -> None:
    data = (await client.post(CHAT, json=body(model=REASONER))).json()
    (choice,) = data["choices"]
    assert choice["message"] == {"role": "assistant", "content": TEXT8, "reasoning": THOUGHT4}
    assert choice["finish_reason"] == "stop"
    assert data["usage"] == reasoning_usage(5, 4, 8)  # completion_tokens include the reasoning


@pytest.mark.parametrize(
    ("model", "knob", "reasoning"),
    [
        (MODEL, None, ""),  # a plain model: no reasoning, no details
        (MODEL, 2, "Let me"),  # any model may be told to reason
        (REASONER, 0, ""),
        (REASONER, 9, "Let me think this through step by step Let"),
    ],
)
async def test_reasoning_tokens_knob(
    client: httpx.AsyncClient, model: str, knob: int | None, reasoning: str
) -> None:
    knobs = {} if knob is None else {"reasoning_tokens": knob}
    data = (await client.post(CHAT, json=body(model=model, x_fake=knobs))).json()
    message = data["choices"][0]["message"]
    assert message.get("reasoning", "") == reasoning
    assert message["content"] == TEXT8
    tokens = len(reasoning.split())
    if tokens:
        assert data["usage"] == reasoning_usage(5, tokens, 8)
    else:
        assert data["usage"] == {"prompt_tokens": 5, "completion_tokens": 8, "total_tokens": 13}


@pytest.mark.parametrize(
    ("cap", "reasoning", "content", "finish"),
    [(20, 4, 8, "stop"), (12, 4, 8, "stop"), (6, 4, 2, "length"), (3, 3, 0, "length")],
)
async def test_the_cap_bounds_reasoning_and_content_together(
    client: httpx.AsyncClient, cap: int, reasoning: int, content: int, finish: str
) -> None:
    data = (await client.post(CHAT, json=body(model=REASONER, max_tokens=cap))).json()
    (choice,) = data["choices"]
    assert choice["finish_reason"] == finish
    assert len(choice["message"]["reasoning"].split()) == reasoning
    assert len(choice["message"]["content"].split()) == content
    assert data["usage"] == reasoning_usage(5, reasoning, content)


async def test_reasoning_with_n_choices(client: httpx.AsyncClient) -> None:
    data = (await client.post(CHAT, json=body(model=REASONER, n=2, max_tokens=6))).json()
    assert [c["message"]["reasoning"] for c in data["choices"]] == [THOUGHT4, THOUGHT4]
    assert data["usage"] == reasoning_usage(5, 8, 4)


async def test_stream_sends_reasoning_before_content(client: httpx.AsyncClient) -> None:
    payload = body(model=REASONER, stream=True, stream_options={"include_usage": True})
    events = await read_sse(client, payload)
    assert events[-1] == "[DONE]"
    *chunks, usage_chunk = events[:-1]
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert deltas[0] == {"role": "assistant", "content": ""}
    assert deltas[1:5] == [
        {"reasoning": "Let "},
        {"reasoning": "me "},
        {"reasoning": "think "},
        {"reasoning": "this"},
    ]
    assert "".join(d.get("content", "") for d in deltas[5:]) == TEXT8
    assert all(set(d) == {"content"} for d in deltas[5:-1])  # one word a chunk
    assert len(deltas) == 1 + 4 + 8 + 1 and deltas[-1] == {}
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"] == reasoning_usage(5, 4, 8)
    fresh = body(model=REASONER, cache_salt="not seen before")  # else its prompt is cached
    data = (await client.post(CHAT, json=fresh)).json()
    assert data["usage"] == usage_chunk["usage"]  # the same usage either way


async def test_cut_after_counts_reasoning_chunks(client: httpx.AsyncClient) -> None:
    events: list[Any] = []
    with pytest.raises(httpx.TransportError):
        await read_sse(client, body(model=REASONER, stream=True, x_fake={"cut_after": 5}), events)
    deltas = [e["choices"][0]["delta"] for e in events]
    assert deltas[1:] == [
        {"reasoning": "Let "},
        {"reasoning": "me "},
        {"reasoning": "think "},
        {"reasoning": "this"},
        {"content": "Hello "},
    ]


# --- prompt prefix caching -----------------------------------------------------------------

SYSTEM = {"role": "system", "content": "You answer in one short sentence."}
FIRST = [SYSTEM, {"role": "user", "content": "What is a prefix cache?"}]
FOLLOW_UP = [
    *FIRST,
    {"role": "assistant", "content": "A store of computed prompt prefixes."},
    {"role": "user", "content": "And a cache salt?"},
]


async def chat_usage(client: httpx.AsyncClient, messages: Any, **extra: Any) -> dict[str, Any]:
    resp = await client.post(CHAT, json={"model": MODEL, "messages": messages, **extra})
    assert resp.status_code == 200, resp.text
    usage: dict[str, Any] = resp.json()["usage"]
    return usage


def cached(usage: dict[str, Any]) -> int:
    if "prompt_tokens_details" not in usage:
        return 0
    assert usage["prompt_tokens_details"]["cached_tokens"] > 0  # the key only when some are
    return int(usage["prompt_tokens_details"]["cached_tokens"])


async def test_cached_tokens_are_the_longest_prefix_seen_before(client: httpx.AsyncClient) -> None:
    first = await chat_usage(client, FIRST)
    assert cached(first) == 0 and first["prompt_tokens"] == expected_prompt_tokens(FIRST)
    follow_up = await chat_usage(client, FOLLOW_UP)
    assert follow_up["prompt_tokens"] == expected_prompt_tokens(FOLLOW_UP)
    assert cached(follow_up) == expected_prompt_tokens(FIRST)
    again = await chat_usage(client, FOLLOW_UP)
    assert cached(again) == again["prompt_tokens"]  # a whole prompt seen before
    assert cached(await chat_usage(client, [SYSTEM])) == expected_prompt_tokens([SYSTEM])
    other_start = [{"role": "system", "content": "Something else."}, *FOLLOW_UP[1:]]
    assert cached(await chat_usage(client, other_start)) == 0  # prefixes, not any messages


async def test_cache_salt_isolates_reuse(client: httpx.AsyncClient) -> None:
    await chat_usage(client, FIRST)
    salted = await chat_usage(client, FOLLOW_UP, cache_salt="tenant-a")
    assert cached(salted) == 0  # seen only without a salt
    same_salt = await chat_usage(client, FIRST, cache_salt="tenant-a")
    assert cached(same_salt) == expected_prompt_tokens(FIRST)
    assert cached(await chat_usage(client, FIRST, cache_salt="tenant-b")) == 0
    assert cached(await chat_usage(client, FOLLOW_UP, cache_salt=None)) == (
        expected_prompt_tokens(FIRST)  # null is no salt
    )
    records = (await client.get("/_fake/requests")).json()["data"]
    assert [r["body"].get("cache_salt") for r in records] == [
        None,
        "tenant-a",
        "tenant-a",
        "tenant-b",
        None,
    ]


@pytest.mark.parametrize(("knob", "expected"), [(5, 5), (0, 0), (1000, "prompt")])
async def test_x_fake_cached_tokens_overrides(
    client: httpx.AsyncClient, knob: int, expected: int | str
) -> None:
    await chat_usage(client, FIRST)
    usage = await chat_usage(client, FIRST, x_fake={"cached_tokens": knob})
    assert cached(usage) == (usage["prompt_tokens"] if expected == "prompt" else expected)


async def test_cached_tokens_in_the_stream_usage(client: httpx.AsyncClient) -> None:
    await chat_usage(client, FIRST)
    payload = {
        "model": REASONER,
        "messages": FOLLOW_UP,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    events = await read_sse(client, payload)
    prompt = expected_prompt_tokens(FOLLOW_UP)
    assert events[-2]["usage"] == {
        **reasoning_usage(prompt, 4, 8),
        "prompt_tokens_details": {"cached_tokens": expected_prompt_tokens(FIRST)},
    }


async def test_only_answered_requests_fill_the_cache(client: httpx.AsyncClient) -> None:
    assert (
        await client.post(CHAT, json={"model": "no/such", "messages": FIRST})
    ).status_code == 404
    await client.post("/_fake/faults", json={"faults": [{"kind": "503"}]})
    assert (await client.post(CHAT, json={"model": MODEL, "messages": FIRST})).status_code == 503
    assert (await stats(client))["prefix_cache_entries"] == 0
    assert cached(await chat_usage(client, FIRST)) == 0
    assert (await stats(client))["prefix_cache_entries"] == len(FIRST)


async def test_reset_empties_the_cache(client: httpx.AsyncClient) -> None:
    await chat_usage(client, FIRST)
    assert cached(await chat_usage(client, FIRST)) > 0
    assert (await client.post("/_fake/reset")).status_code == 200
    assert (await stats(client))["prefix_cache_entries"] == 0
    assert cached(await chat_usage(client, FIRST)) == 0


def test_prefix_cache_is_a_bounded_lru() -> None:
    assert CACHE_LIMIT == 4096
    cache = PrefixCache(limit=2)
    assert cache.use(None, (b"a",)) == 0
    assert cache.use(None, (b"b",)) == 0
    assert cache.use(None, (b"a",)) == 1  # a hit makes "a" the most recently used
    assert cache.use(None, (b"c",)) == 0  # "b" goes
    assert len(cache) == 2
    assert cache.use("salt", (b"c",)) == 0  # another salt, another key; "a" goes
    assert cache.use(None, (b"c",)) == 1
    assert cache.use(None, (b"a",)) == 0
    cache.clear()
    assert len(cache) == 0


# --- tool calls and JSON answers ---------------------------------------------------------------

TOOL = {
    "type": "function",
    "function": {
        "name": "lookup",
        "parameters": {
            "type": "object",
            "properties": {"q": {"type": "string"}, "n": {"type": "integer", "minimum": 3}},
            "required": ["q"],
        },
    },
}
ARGUMENTS = '{"q":"fake q","n":3}'  # the documented generator's value, compact
ARGUMENT_PIECES = ['{"q"', ':"fa', "ke q", '","n', '":3}']  # 4 characters a token


def tool_calls(events: list[Any]) -> list[Any]:
    """The ``delta.tool_calls`` entries of a stream's events, in order."""
    chunks = [e for e in events if isinstance(e, dict)]
    return [d for e in chunks for c in e["choices"] for d in c["delta"].get("tool_calls", [])]


async def test_tool_call_answer(client: httpx.AsyncClient) -> None:
    data = (await client.post(CHAT, json=body(tools=[TOOL]))).json()
    [choice] = data["choices"]
    assert choice["finish_reason"] == "tool_calls"
    message = choice["message"]
    assert message["content"] is None
    [call] = message["tool_calls"]
    assert call["id"].startswith("call_")
    assert call == {
        "id": call["id"],
        "type": "function",
        "function": {"name": "lookup", "arguments": ARGUMENTS},
    }
    assert data["usage"]["completion_tokens"] == len(ARGUMENT_PIECES)
    again = (await client.post(CHAT, json=body(tools=[TOOL]))).json()
    assert again["choices"][0]["message"]["tool_calls"] == [call]


async def test_tool_call_stream_as_openai_sends_it(client: httpx.AsyncClient) -> None:
    whole = (await client.post(CHAT, json=body(tools=[TOOL]))).json()
    ident = whole["choices"][0]["message"]["tool_calls"][0]["id"]
    events = await read_sse(
        client, body(tools=[TOOL], stream=True, stream_options={"include_usage": True})
    )
    assert [c["delta"] for e in events[:2] for c in e["choices"]] == [
        {"role": "assistant", "content": None},
        {
            "tool_calls": [
                {
                    "index": 0,
                    "id": ident,
                    "type": "function",
                    "function": {"name": "lookup", "arguments": ""},
                }
            ]
        },
    ]
    fragments = [{"index": 0, "function": {"arguments": p}} for p in ARGUMENT_PIECES]
    assert tool_calls(events)[1:] == fragments
    assert events[-3]["choices"][0] == {
        "index": 0,
        "delta": {},
        "logprobs": None,
        "finish_reason": "tool_calls",
    }
    assert events[-2]["usage"]["completion_tokens"] == whole["usage"]["completion_tokens"]


async def test_tool_call_after_reasoning_cut_and_capped(client: httpx.AsyncClient) -> None:
    events: list[Any] = []
    payload = body(model=REASONER, tools=[TOOL], stream=True, x_fake={"cut_after": 6})
    with pytest.raises(httpx.TransportError):
        await read_sse(client, payload, events)
    deltas = [e["choices"][0]["delta"] for e in events]
    assert [d.get("reasoning") for d in deltas[1:5]] == ["Let ", "me ", "think ", "this"]
    assert [c["function"]["arguments"] for c in tool_calls(events)] == [
        "",
        *ARGUMENT_PIECES[:2],
    ]
    capped = (await client.post(CHAT, json=body(model=REASONER, tools=[TOOL], max_tokens=6))).json()
    choice = capped["choices"][0]
    assert choice["finish_reason"] == "length"
    assert choice["message"]["tool_calls"][0]["function"]["arguments"] == "".join(
        ARGUMENT_PIECES[:2]
    )
    assert capped["usage"]["completion_tokens"] == 6


async def test_text_after_a_tool_result(client: httpx.AsyncClient) -> None:
    messages = [
        {"role": "user", "content": "Look it up"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "lookup", "arguments": ARGUMENTS},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "found it"},
    ]
    data = (await client.post(CHAT, json=body(messages=messages, tools=[TOOL]))).json()
    assert data["choices"][0]["finish_reason"] == "stop"
    assert data["choices"][0]["message"] == {"role": "assistant", "content": TEXT8}


async def test_json_schema_answer_whole_and_streamed(client: httpx.AsyncClient) -> None:
    schema = TOOL["function"]["parameters"]  # type: ignore[index]
    wanted = {"type": "json_schema", "json_schema": {"name": "r", "schema": schema, "strict": True}}
    data = (await client.post(CHAT, json=body(response_format=wanted, n=2))).json()
    assert [c["message"]["content"] for c in data["choices"]] == [ARGUMENTS, ARGUMENTS]
    assert data["usage"]["completion_tokens"] == 2 * len(ARGUMENT_PIECES)
    events = await read_sse(client, body(response_format=wanted, stream=True))
    assert [e["choices"][0]["delta"].get("content") for e in events[1:-2]] == ARGUMENT_PIECES
    obj = (
        await client.post(
            CHAT, json=body(response_format={"type": "json_object"}, x_fake={"tokens": 2})
        )
    ).json()
    assert obj["choices"][0]["message"]["content"] == '{"answer":"Hello from"}'
    assert obj["usage"]["completion_tokens"] == 6  # 23 characters


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tools": [{"type": "function"}]}, "tools"),
        (
            {"tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
            "tool_choice",
        ),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"schema": {}}}},
            "response_format",
        ),
    ],
)
async def test_bad_tools_or_format_400(
    client: httpx.AsyncClient, extra: dict[str, Any], param: str
) -> None:
    resp = await client.post(CHAT, json=body(**extra))
    assert resp.status_code == 400
    assert resp.json()["error"]["param"] == param

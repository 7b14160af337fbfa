"""Chat completions through the gateway with the official openai SDK, sync and async."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.e2e.helpers import USER, aclient, client, prompt_tokens, seen
from tests.procs import LIMITED_KEY, LLAMA, SEARCH_KEY, WANDB_KEY, Proc

WORDS = ["Hello", "from", "the", "fake", "W&B", "upstream", "for", "testing"]


def test_plain_completion_sync(gateway: Proc, fake: Proc) -> None:
    resp = client(gateway).chat.completions.create(model=LLAMA, messages=USER)
    assert resp.choices[0].message.content == " ".join(WORDS)
    assert resp.usage is not None
    assert resp.usage.prompt_tokens == prompt_tokens(USER)
    assert resp.usage.completion_tokens == 8
    assert resp.model == LLAMA


async def test_plain_completion_async(gateway: Proc, fake: Proc) -> None:
    async with aclient(gateway) as c:
        resp = await c.chat.completions.create(model=LLAMA, messages=USER, max_tokens=3)
    assert resp.choices[0].message.content == " ".join(WORDS[:3])
    assert resp.choices[0].finish_reason == "length"


def test_stream_sync_relays_every_chunk(gateway: Proc, fake: Proc) -> None:
    stream = client(gateway).chat.completions.create(
        model=LLAMA,
        messages=USER,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == " ".join(WORDS)
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 8
    assert all(c.usage is None for c in chunks[:-1])


async def test_stream_async(gateway: Proc, fake: Proc) -> None:
    async with aclient(gateway) as c:
        stream = await c.chat.completions.create(
            model=LLAMA,
            messages=USER,
            stream=True,
            n=2,
        )
        chunks = [chunk async for chunk in stream]
    by_choice: dict[int, str] = {0: "", 1: ""}
    for chunk in chunks:
        for choice in chunk.choices:
            by_choice[choice.index] += choice.delta.content or ""
    assert by_choice == {0: " ".join(WORDS), 1: " ".join(WORDS)}


def test_stream_headers(gateway: Proc, fake: Proc) -> None:
    with httpx.stream(
        "POST",
        gateway.url + "/v1/chat/completions",
        headers={"Authorization": f"Bearer {SEARCH_KEY}"},
        json={"model": LLAMA, "messages": USER, "stream": True},
    ) as resp:
        body = resp.read().decode()
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/event-stream")
    assert resp.headers["cache-control"] == "no-cache"
    assert resp.headers["x-accel-buffering"] == "no"
    assert body.rstrip().endswith("data: [DONE]")


def test_body_passes_through_unchanged(gateway: Proc, fake: Proc) -> None:
    messages = [
        {"role": "system", "content": "You are terse."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in this picture?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
            ],
        },
    ]
    tools = [
        {
            "type": "function",
            "function": {
                "name": "lookup",
                "description": "Look a thing up",
                "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
            },
        }
    ]
    resp = client(gateway).chat.completions.create(
        model=LLAMA,
        messages=messages,
        tools=tools,
        tool_choice="auto",
        response_format={"type": "json_object"},
        seed=42,
        n=1,
        logprobs=True,
        top_logprobs=2,
        temperature=0.25,
        extra_body={"vendor_field": {"nested": [1, 2.5, None, True]}, "top_k": 7},
    )
    assert resp.usage is not None and resp.usage.prompt_tokens == prompt_tokens(messages)
    body = seen(fake)[-1]["body"]
    assert body["messages"] == messages
    assert body["tools"] == tools
    assert body["tool_choice"] == "auto"
    assert body["response_format"] == {"type": "json_object"}
    assert (body["seed"], body["n"], body["logprobs"], body["top_logprobs"]) == (42, 1, True, 2)
    assert body["temperature"] == 0.25
    assert body["vendor_field"] == {"nested": [1, 2.5, None, True]}
    assert body["top_k"] == 7


def test_credentials_are_swapped(gateway: Proc, fake: Proc) -> None:
    c = client(gateway, organization="org-caller", project="acme/search")
    c.chat.completions.create(
        model=LLAMA,
        messages=USER,
        extra_headers={"Cookie": "session=abc", "X-Custom": "kept"},
    )
    headers = seen(fake)[-1]["headers"]
    assert headers["authorization"] == f"Bearer {WANDB_KEY}"
    assert headers["openai-project"] == "acme/search"
    assert "openai-organization" not in headers
    assert "cookie" not in headers
    assert "x-custom" not in headers  # not on the allow-list (tests/e2e/test_headers.py)
    assert SEARCH_KEY not in str(headers)


def test_tenant_project_is_sent_when_client_sends_none(gateway: Proc, fake: Proc) -> None:
    client(gateway, key=LIMITED_KEY).chat.completions.create(model="gpt-4o-mini", messages=USER)
    assert seen(fake)[-1]["headers"]["openai-project"] == "acme/limited"


def test_allowed_extra_project(gateway: Proc, fake: Proc) -> None:
    client(gateway, project="acme/search-eval").chat.completions.create(model=LLAMA, messages=USER)
    assert seen(fake)[-1]["headers"]["openai-project"] == "acme/search-eval"


def test_other_project_is_refused(gateway: Proc, fake: Proc) -> None:
    with pytest.raises(openai.PermissionDeniedError) as err:
        client(gateway, project="acme/ads").chat.completions.create(model=LLAMA, messages=USER)
    assert err.value.status_code == 403
    assert err.value.body["type"] == "permission_error"
    assert seen(fake) == []


def test_alias_resolves_and_only_model_changes(gateway: Proc, fake: Proc) -> None:
    resp = client(gateway).chat.completions.create(
        model="gpt-4o-mini",
        messages=USER,
        temperature=0.5,
        extra_body={"big": 123456789012345678901234567890},
    )
    assert resp.model == LLAMA
    body = seen(fake)[-1]["body"]
    assert body["model"] == LLAMA
    assert body["temperature"] == 0.5
    assert body["big"] == 123456789012345678901234567890
    assert body["messages"] == USER


def test_request_id_is_kept_and_forwarded(gateway: Proc, fake: Proc) -> None:
    raw = client(gateway).chat.completions.with_raw_response.create(
        model=LLAMA,
        messages=USER,
        extra_headers={"X-Request-Id": "trace-123"},
    )
    assert raw.headers["x-request-id"] == "trace-123"
    assert seen(fake)[-1]["headers"]["x-request-id"] == "trace-123"
    raw = client(gateway).chat.completions.with_raw_response.create(model=LLAMA, messages=USER)
    generated = raw.headers["x-request-id"]
    assert generated.startswith("req_")
    assert seen(fake)[-1]["headers"]["x-request-id"] == generated
    assert "x-gateway-queue-ms" in raw.headers


def test_request_id_on_errors_and_other_routes(gateway: Proc) -> None:
    assert httpx.get(gateway.url + "/healthz").headers["x-request-id"].startswith("req_")
    resp = httpx.post(gateway.url + "/v1/chat/completions", headers={"X-Request-Id": "r-1"})
    assert resp.status_code == 401
    assert resp.headers["x-request-id"] == "r-1"

"""Small helpers shared by the end-to-end tests."""

from __future__ import annotations

from typing import Any

import httpx
import openai

from tests.procs import SEARCH_KEY, Proc

# SDK clients made by a test, closed after it (see conftest) so no socket is left to the GC.
OPEN_CLIENTS: list[openai.OpenAI] = []


def client(gateway: Proc, key: str = SEARCH_KEY, **kw: Any) -> openai.OpenAI:
    c = openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0, **kw)
    OPEN_CLIENTS.append(c)
    return c


def aclient(gateway: Proc, key: str = SEARCH_KEY, **kw: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0, **kw)


def faults(fake: Proc, *items: dict[str, Any]) -> None:
    httpx.post(fake.url + "/_fake/faults", json={"faults": list(items)}).raise_for_status()


def stats(fake: Proc) -> dict[str, Any]:
    data: dict[str, Any] = httpx.get(fake.url + "/_fake/stats").json()
    return data


def seen(fake: Proc) -> list[dict[str, Any]]:
    """The chat requests the fake upstream received, oldest first."""
    data: list[dict[str, Any]] = httpx.get(fake.url + "/_fake/requests").json()["data"]
    return data


def prompt_tokens(messages: list[dict[str, Any]]) -> int:
    """The fake upstream's documented formula, computed independently."""
    total = 0
    for m in messages:
        total += 3
        content = m.get("content")
        if isinstance(content, str):
            total += len(content.split())
        elif isinstance(content, list):
            for part in content:
                if part.get("type") == "text":
                    total += len(part["text"].split())
                elif part.get("type") == "image_url":
                    total += 85
    return total


USER = [{"role": "user", "content": "Say hello to the gateway please"}]

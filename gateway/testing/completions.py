"""What the fake answers, deterministically: a chat request parsed into a ``Call``, and its body.

Deterministic answers, so tests can compute them independently:

- ``prompt_tokens`` = sum over messages of ``3 + words(content)``, ``words(s) = len(s.split())``;
  when content is a list of parts it is the words of every ``{"type": "text"}`` part's ``text``
  plus 85 per ``{"type": "image_url"}`` part; any other content counts 0.
- Tokens per choice: ``x_fake.tokens`` if given, else 8; when ``max_completion_tokens`` (or else
  ``max_tokens``) is smaller, that cap is used and ``finish_reason`` is ``"length"``, otherwise
  ``"stop"``. The text is that many words cycled from ``WORDS``, each but the last followed by a
  space: one word = one token = one streamed content chunk.
- ``n`` choices (default 1) carry the same text; ``completion_tokens = tokens * n``.

Per-request knobs ride in a vendor field the real service would ignore:
``"x_fake": {"delay_s": float, "think_s": float, "chunk_delay_s": float, "tokens": int,
"cut_after": int}`` (``think_s``: a stream's silence between its headers and its first chunk).
Nothing here touches a socket: ``gateway.testing.answer`` writes what these functions compute.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Final

from gateway.testing.settings import FakeSettings

WORDS: Final = ("Hello", "from", "the", "fake", "W&B", "upstream", "for", "testing")
_DEFAULT_TOKENS: Final = 8
_IMAGE_TOKENS: Final = 85


@dataclass
class Call:
    """One chat request, parsed: everything needed to answer it."""

    model: str
    stream: bool
    include_usage: bool
    choices: int
    tokens: int
    finish_reason: str
    prompt_tokens: int
    delay_s: float
    chunk_delay_s: float
    cut_after: int | None
    think_s: float = 0.0
    hang: bool = False


class BadRequest(Exception):
    """A body the fake refuses with a 400, naming the offending ``param``."""

    def __init__(self, message: str, param: str | None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


def _words(text: object) -> int:
    return len(text.split()) if isinstance(text, str) else 0


def prompt_tokens(messages: list[Any]) -> int:
    """The fake's prompt token count (formula in the module docstring)."""
    total = 0
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        total += 3
        if isinstance(content, list):
            for part in content:
                kind = part.get("type") if isinstance(part, dict) else None
                if kind == "text":
                    total += _words(part.get("text"))
                elif kind == "image_url":
                    total += _IMAGE_TOKENS
        else:
            total += _words(content)
    return total


def _int(obj: dict[str, Any], name: str, default: int, param: str) -> int:
    value = obj.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BadRequest(f"'{name}' must be a non-negative integer", param)
    return value


def _float(obj: dict[str, Any], name: str, default: float, param: str) -> float:
    value = obj.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise BadRequest(f"'{name}' must be a non-negative number", param)
    return float(value)


def parse_call(body: object, settings: FakeSettings) -> Call:
    """The parsed request; ``BadRequest`` when the body is not one the fake can answer."""
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object", None)
    model, messages = body.get("model"), body.get("messages")
    if not isinstance(model, str):
        raise BadRequest("'model' is a required string", "model")
    if not isinstance(messages, list):
        raise BadRequest("'messages' is a required array", "messages")
    knobs = body.get("x_fake") or {}
    if not isinstance(knobs, dict):
        raise BadRequest("'x_fake' must be an object", "x_fake")
    choices = _int(body, "n", 1, "n")
    if choices < 1:
        raise BadRequest("'n' must be at least 1", "n")
    cap = _int(body, "max_completion_tokens", 0, "max_completion_tokens")
    cap = cap or _int(body, "max_tokens", 0, "max_tokens")
    wanted = _int(knobs, "tokens", _DEFAULT_TOKENS, "x_fake")
    capped = bool(cap) and cap < wanted
    options = body.get("stream_options")
    return Call(
        model=model,
        stream=body.get("stream") is True,
        include_usage=isinstance(options, dict) and options.get("include_usage") is True,
        choices=choices,
        tokens=cap if capped else wanted,
        finish_reason="length" if capped else "stop",
        prompt_tokens=prompt_tokens(messages),
        delay_s=_float(knobs, "delay_s", settings.delay_s, "x_fake"),
        chunk_delay_s=_float(knobs, "chunk_delay_s", settings.chunk_delay_s, "x_fake"),
        cut_after=None if knobs.get("cut_after") is None else _int(knobs, "cut_after", 0, "x_fake"),
        think_s=_float(knobs, "think_s", 0.0, "x_fake"),
    )


def text_words(tokens: int) -> list[str]:
    """The answer's words, one per token, each but the last with its trailing space."""
    words = [WORDS[i % len(WORDS)] for i in range(tokens)]
    return [w + " " for w in words[:-1]] + words[-1:]


def usage(call: Call) -> dict[str, int]:
    """The ``usage`` object for ``call``: every choice's tokens count."""
    prompt, completion = call.prompt_tokens, call.tokens * call.choices
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def completion(call: Call, ident: str) -> dict[str, Any]:
    """The non-streamed ``chat.completion`` body."""
    message = {"role": "assistant", "content": "".join(text_words(call.tokens))}
    choices = [
        {"index": i, "message": message, "logprobs": None, "finish_reason": call.finish_reason}
        for i in range(call.choices)
    ]
    head = {"id": ident, "object": "chat.completion", "created": int(time.time())}
    return {**head, "model": call.model, "choices": choices, "usage": usage(call)}

"""What the fake answers, deterministically: a chat request parsed into a ``Call``, and its body.

Deterministic answers, so tests can compute them independently:

- ``prompt_tokens`` = sum over messages of ``3 + words(content)``, ``words(s) = len(s.split())``;
  when content is a list of parts it is the words of every ``{"type": "text"}`` part's ``text``
  plus 85 per ``{"type": "image_url"}`` part; any other content counts 0 (an assistant's
  ``tool_calls`` too), and so do ``tools`` and ``response_format``.
- Reasoning tokens per choice, R: ``x_fake.reasoning_tokens`` if given (any model), else 4 for a
  reasoning model (``FakeSettings.reasoning``), else 0. The reasoning text is R words cycled from
  ``REASONING_WORDS``, each but the last followed by a space.
- The answer's form, by ``tools``, ``tool_choice``, ``response_format`` and the last message
  (``gateway.testing.structured``): the usual words, a tool call, or a JSON document.
- The usual words, one token each: ``x_fake.tokens`` if given, else 8, cycled from ``WORDS``,
  each but the last followed by a space.
- A JSON document (a tool call's ``arguments``, or JSON content), one token per 4 characters:
  its text cut into 4-character pieces, the last one shorter. ``x_fake.tokens`` sets only the
  words a ``json_object`` answer wraps; a schema's document is as long as the schema makes it.
- A cap, ``max_completion_tokens`` (or else ``max_tokens``), bounds reasoning and content
  together, reasoning first: with cap C < R + tokens, reasoning is ``min(R, C)``, content the
  first C - R tokens (words or pieces: a JSON document is then cut short), and
  ``finish_reason`` is ``"length"``; otherwise ``"tool_calls"`` for a tool call, else
  ``"stop"``.
- ``n`` choices (default 1) carry the same answer; ``completion_tokens = (R + tokens) * n``, the
  reasoning included (OpenAI's convention), and when R > 0 ``usage`` also has
  ``"completion_tokens_details": {"reasoning_tokens": R * n}``.
- ``cached_tokens``, C: the prompt tokens of the longest message prefix seen before with the
  same ``cache_salt`` (``gateway.testing.prefix_cache``), or ``x_fake.cached_tokens`` if given,
  capped at ``prompt_tokens``. When C > 0 ``usage`` also has
  ``"prompt_tokens_details": {"cached_tokens": C}``. ``cache_salt``, when not null, must be a
  non-empty string (W&B's rule), else a 400 naming it.
- Streamed, one token = one chunk: after the role chunk (``{"role": "assistant", "content":
  ""}``, ``"content": null`` for a tool call), ``delta.reasoning`` chunks first, then
  ``delta.content`` chunks (words or pieces). A tool call streams as OpenAI's does: one chunk
  ``{"tool_calls": [{"index": 0, "id", "type": "function", "function": {"name", "arguments":
  ""}}]}`` (no token: ``cut_after`` does not count it), then one per piece, ``{"tool_calls":
  [{"index": 0, "function": {"arguments": piece}}]}``. Not streamed, ``message.reasoning``
  holds the reasoning text (no such key when R = 0); a tool call's message has ``"content":
  null`` and ``tool_calls: [{"id", "type": "function", "function": {"name", "arguments"}}]``.
  The same ``usage`` is the body's and the final chunk's (include_usage).

Per-request knobs ride in a vendor field the real service would ignore:
``"x_fake": {"delay_s": float, "think_s": float, "chunk_delay_s": float, "tokens": int,
"reasoning_tokens": int, "cached_tokens": int, "cut_after": int}`` (``think_s``: a stream's
silence between its headers and its first chunk; ``cut_after``: token chunks, reasoning,
content or tool-call arguments, before the stream is cut).
Nothing here touches a socket: ``gateway.testing.answer`` writes what these functions compute.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any, Final

from gateway.testing.errors import BadRequest
from gateway.testing.settings import FakeSettings
from gateway.testing.structured import ToolCall, shape

WORDS: Final = ("Hello", "from", "the", "fake", "W&B", "upstream", "for", "testing")
REASONING_WORDS: Final = ("Let", "me", "think", "this", "through", "step", "by", "step")
_DEFAULT_TOKENS: Final = 8
_DEFAULT_REASONING_TOKENS: Final = 4
_IMAGE_TOKENS: Final = 85
PIECE_CHARS: Final = 4  # a JSON document's characters per token (and per stream chunk)


@dataclass
class Call:
    """One chat request, parsed: everything needed to answer it."""

    model: str
    stream: bool
    include_usage: bool
    choices: int
    pieces: tuple[str, ...]  # the content (or a tool call's arguments), one token each
    finish_reason: str
    prompt_tokens: int
    delay_s: float
    chunk_delay_s: float
    cut_after: int | None
    think_s: float = 0.0
    hang: bool = False
    reasoning_tokens: int = 0
    cache_salt: str | None = None
    # prefixes[k - 1]: a hash of the first k messages; prefix_tokens[k - 1]: their prompt tokens
    prefixes: tuple[bytes, ...] = ()
    prefix_tokens: tuple[int, ...] = ()
    cached_override: int | None = None  # x_fake.cached_tokens
    cached_tokens: int = 0  # set once the prefix cache has been asked
    tool_call: ToolCall | None = None  # its arguments are the pieces

    @property
    def tokens(self) -> int:
        """Content tokens per choice (reasoning aside)."""
        return len(self.pieces)


def _words(text: object) -> int:
    return len(text.split()) if isinstance(text, str) else 0


def _message_tokens(message: object) -> int:
    content = message.get("content") if isinstance(message, dict) else None
    total = 3
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


def prompt_tokens(messages: list[Any]) -> int:
    """The fake's prompt token count (formula in the module docstring)."""
    return sum(_message_tokens(message) for message in messages)


def _prefixes(messages: list[Any]) -> tuple[tuple[bytes, ...], tuple[int, ...]]:
    """A chained hash and the prompt tokens of every leading run of messages."""
    digests, counts = [], []
    digest, count = b"", 0
    for message in messages:
        canonical = json.dumps(message, sort_keys=True, separators=(",", ":")).encode()
        digest = hashlib.sha256(digest + canonical).digest()
        count += _message_tokens(message)
        digests.append(digest)
        counts.append(count)
    return tuple(digests), tuple(counts)


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


def _salt(body: dict[str, Any]) -> str | None:
    salt = body.get("cache_salt")
    if salt is not None and (not isinstance(salt, str) or not salt):
        raise BadRequest("'cache_salt' must be a non-empty string", "cache_salt")
    return salt


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
    salt = _salt(body)
    choices = _int(body, "n", 1, "n")
    if choices < 1:
        raise BadRequest("'n' must be at least 1", "n")
    thinking = _DEFAULT_REASONING_TOKENS if model in settings.reasoning else 0
    reasoning, pieces, tool_call, finish = _output(body, messages, knobs, thinking)
    cached = knobs.get("cached_tokens")
    prefixes, prefix_tokens = _prefixes(messages)
    options = body.get("stream_options")
    return Call(
        model=model,
        stream=body.get("stream") is True,
        include_usage=isinstance(options, dict) and options.get("include_usage") is True,
        choices=choices,
        pieces=pieces,
        finish_reason=finish,
        prompt_tokens=prefix_tokens[-1] if prefix_tokens else 0,
        delay_s=_float(knobs, "delay_s", settings.delay_s, "x_fake"),
        chunk_delay_s=_float(knobs, "chunk_delay_s", settings.chunk_delay_s, "x_fake"),
        cut_after=None if knobs.get("cut_after") is None else _int(knobs, "cut_after", 0, "x_fake"),
        think_s=_float(knobs, "think_s", 0.0, "x_fake"),
        reasoning_tokens=reasoning,
        cache_salt=salt,
        prefixes=prefixes,
        prefix_tokens=prefix_tokens,
        cached_override=None if cached is None else _int(knobs, "cached_tokens", 0, "x_fake"),
        tool_call=tool_call,
    )


def _output(
    body: dict[str, Any], messages: list[Any], knobs: dict[str, Any], thinking: int
) -> tuple[int, tuple[str, ...], ToolCall | None, str]:
    """Reasoning tokens, content pieces, the tool call if any and the finish reason, capped."""
    cap = _int(body, "max_completion_tokens", 0, "max_completion_tokens")
    cap = cap or _int(body, "max_tokens", 0, "max_tokens")
    words = text_words(_int(knobs, "tokens", _DEFAULT_TOKENS, "x_fake"))
    reasoning = _int(knobs, "reasoning_tokens", thinking, "x_fake")
    form = shape(body, messages, "".join(words))
    pieces = words if form.document is None else json_pieces(form.document)
    finish = "stop" if form.tool_call is None else "tool_calls"
    if cap and cap < reasoning + len(pieces):
        reasoning = min(reasoning, cap)
        cut = cap - reasoning
        pieces = pieces[:cut] if form.document is not None else text_words(cut)
        finish = "length"
    return reasoning, tuple(pieces), form.tool_call, finish


def json_pieces(document: str) -> list[str]:
    """A JSON document's tokens: ``PIECE_CHARS`` characters each, the last one shorter."""
    return [document[i : i + PIECE_CHARS] for i in range(0, len(document), PIECE_CHARS)]


def set_cached(call: Call, longest_seen: int) -> None:
    """``call.cached_tokens`` from the prefix cache's answer (its first ``longest_seen``
    messages were seen before) or from ``x_fake.cached_tokens``, at most the prompt."""
    seen = call.prefix_tokens[longest_seen - 1] if longest_seen else 0
    wanted = seen if call.cached_override is None else call.cached_override
    call.cached_tokens = min(wanted, call.prompt_tokens)


def _cycled(words: tuple[str, ...], tokens: int) -> list[str]:
    chosen = [words[i % len(words)] for i in range(tokens)]
    return [w + " " for w in chosen[:-1]] + chosen[-1:]


def text_words(tokens: int) -> list[str]:
    """The answer's words, one per token, each but the last with its trailing space."""
    return _cycled(WORDS, tokens)


def reasoning_words(tokens: int) -> list[str]:
    """The reasoning's words, one per token, each but the last with its trailing space."""
    return _cycled(REASONING_WORDS, tokens)


def usage(call: Call) -> dict[str, Any]:
    """The ``usage`` object for ``call``: every choice's tokens count, reasoning included."""
    prompt = call.prompt_tokens
    completion = (call.reasoning_tokens + call.tokens) * call.choices
    body: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    if call.cached_tokens:
        body["prompt_tokens_details"] = {"cached_tokens": call.cached_tokens}
    if call.reasoning_tokens:
        body["completion_tokens_details"] = {
            "reasoning_tokens": call.reasoning_tokens * call.choices
        }
    return body


def completion(call: Call, ident: str) -> dict[str, Any]:
    """The non-streamed ``chat.completion`` body."""
    text = "".join(call.pieces)
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if call.tool_call is not None:
        function = {"name": call.tool_call.name, "arguments": text}
        message["content"] = None
        message["tool_calls"] = [
            {"id": call.tool_call.id, "type": "function", "function": function}
        ]
    if call.reasoning_tokens:
        message["reasoning"] = "".join(reasoning_words(call.reasoning_tokens))
    choices = [
        {"index": i, "message": message, "logprobs": None, "finish_reason": call.finish_reason}
        for i in range(call.choices)
    ]
    head = {"id": ident, "object": "chat.completion", "created": int(time.time())}
    return {**head, "model": call.model, "choices": choices, "usage": usage(call)}


def role_delta(call: Call) -> dict[str, Any]:
    """The delta of a stream's first chunk, before any token."""
    return {"role": "assistant", "content": None if call.tool_call else ""}


def deltas(call: Call) -> list[tuple[dict[str, Any], bool]]:
    """The stream's deltas after the role chunk, in order, each with whether it is a token (the
    chunks ``cut_after`` counts): reasoning words, then the content or the tool call."""
    out: list[tuple[dict[str, Any], bool]] = [
        ({"reasoning": word}, True) for word in reasoning_words(call.reasoning_tokens)
    ]
    if call.tool_call is None:
        return out + [({"content": piece}, True) for piece in call.pieces]
    function = {"name": call.tool_call.name, "arguments": ""}
    head = {"index": 0, "id": call.tool_call.id, "type": "function", "function": function}
    out.append(({"tool_calls": [head]}, False))
    for piece in call.pieces:
        out.append(({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}, True))
    return out

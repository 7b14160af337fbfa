"""Chat messages in the shape of OpenTelemetry's `gen_ai.input.messages` and
`gen_ai.output.messages`: a JSON array of `{role, parts: [...]}`, each part typed (`text`,
`tool_call`, `tool_call_response`, or the kind of a part the conventions do not spell out).

What is captured is cut before it is written, never after, so each attribute is valid JSON of
bounded size whatever the request held: its strings, keys and values together hold at most
`cap` characters (a key or value counts one more, for its separator; a cut string ends in `…`),
arrays and objects stop where the room is used up, and nothing deeper than `MAX_DEPTH` is
kept. Imports no OpenTelemetry: `input_attributes` runs in the body reader's child process for
big bodies.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

MAX_DEPTH = 32
MAX_KEY = 64  # an object's keys are cut at this, never to the room left (they count in it)
CUT = "…"


def input_attributes(body: bytes, cap: int) -> dict[str, str]:
    """The prompt's attributes, from the request's body: its messages, cut at `cap`."""
    clean = True
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:  # lone surrogates (`\\ud800`) are JSON, but not to orjson
        try:
            payload = json.loads(body)
        except (ValueError, RecursionError):  # not JSON, or deeper than Python's stack
            return {}
        clean = False
    messages = payload.get("messages") if isinstance(payload, dict) else None
    if not isinstance(messages, list):
        return {}
    kept, _ = bounded(messages, cap, clean)
    return {
        "input.value": orjson.dumps(kept).decode(),
        "input.mime_type": "application/json",
        "gen_ai.input.messages": orjson.dumps(
            [_message(m) for m in kept if isinstance(m, dict)]
        ).decode(),
    }


def output_messages(text: str, calls: list[dict[str, Any]], reasons: list[str], cap: int) -> str:
    parts: list[dict[str, Any]] = [{"type": "text", "content": text}] if text else []
    message = {"role": "assistant", "parts": parts + calls}
    if reasons:
        message["finish_reason"] = reasons[0]
    kept, _ = bounded([message], cap)
    return orjson.dumps(kept).decode()


def bounded(value: Any, room: int, clean: bool = True, depth: int = 0) -> tuple[Any, int]:
    """`value` cut to `room` characters of strings (and values), and the room left. `clean`:
    its strings are known to hold no lone surrogate (else each is made valid UTF-8)."""
    if isinstance(value, str):
        if not clean:
            value = value.encode("utf-8", "replace").decode("utf-8")
        if len(value) <= room:
            return value, room - len(value)
        return value[: max(room, 0)] + CUT, 0
    if depth >= MAX_DEPTH or room <= 0:
        return CUT, 0
    if isinstance(value, list):
        items: list[Any] = []
        for item in value:
            if room <= 0:
                items.append(CUT)
                break
            item, room = bounded(item, room - 1, clean, depth + 1)
            items.append(item)
        return items, room
    if isinstance(value, dict):
        entries: dict[str, Any] = {}
        for key, item in value.items():
            if room <= 0:
                break
            key = key[:MAX_KEY] if clean else key[:MAX_KEY].encode("utf-8", "replace").decode()
            entries[key], room = bounded(item, room - len(key) - 1, clean, depth + 1)
        return entries, room
    return value, room - 1  # a number, true, false or null


def _message(message: dict[str, Any]) -> dict[str, Any]:
    role = message.get("role")
    content = message.get("content")
    parts: list[dict[str, Any]] = []
    if role == "tool":
        parts.append(
            {"type": "tool_call_response", "id": message.get("tool_call_id"), "response": content}
        )
    elif isinstance(content, str):
        parts.append({"type": "text", "content": content})
    elif isinstance(content, list):
        parts.extend(_part(p) for p in content if isinstance(p, dict))
    calls = message.get("tool_calls")
    for call in calls if isinstance(calls, list) else ():
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict):
            parts.append(
                {
                    "type": "tool_call",
                    "id": call.get("id"),
                    "name": function.get("name"),
                    "arguments": function.get("arguments"),
                }
            )
    return {"role": role if isinstance(role, str) else "user", "parts": parts}


def _part(part: dict[str, Any]) -> dict[str, Any]:
    kind = part.get("type")
    if kind == "text":
        return {"type": "text", "content": part.get("text")}
    return {"type": kind if isinstance(kind, str) else "unknown"}  # an image's bytes stay out

"""Chat messages in the shape of OpenTelemetry's `gen_ai.input.messages` and
`gen_ai.output.messages`: a JSON array of `{role, parts: [...]}`, each part typed (`text`,
`tool_call`, `tool_call_response`, or the kind of a part the conventions do not spell out)."""

from __future__ import annotations

from typing import Any

import orjson


def input_messages(messages: list[Any]) -> str:
    return orjson.dumps([_message(m) for m in messages if isinstance(m, dict)]).decode()


def output_messages(text: str, calls: list[dict[str, Any]], reasons: list[str]) -> str:
    parts: list[dict[str, Any]] = [{"type": "text", "content": text}] if text else []
    message = {"role": "assistant", "parts": parts + calls}
    if reasons:
        message["finish_reason"] = reasons[0]
    return orjson.dumps([message]).decode()


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

"""The model's answer as Responses output items: built from a whole chat completion
(`from_completion`) or chunk by chunk (`gateway.responses_api.stream`), always rendered by
`render_item`, so a streamed response ends with the object a whole one would give.

Output order for a whole answer: a `reasoning` item (when the message has `reasoning_content`
or `reasoning`: vLLM has sent both, the same text), a `message` item (its `content` an
`output_text` part, its `refusal` a `refusal` part), then one `function_call` item per tool call.
Item ids are derived from the response id and the item's index (`msg_`, `rs_`, `fc_` and 48 hex
digits), so the same answer always has the same ids; a tool call without an id, or with one
already used in the answer, gets `call_` and 24 hex digits the same way.

Statuses: `stop`, `tool_calls` (and any other finish reason) complete the response; `length`
leaves it `incomplete` (`max_output_tokens`), `content_filter` too (`content_filter`), and the
last output item, the one cut, `incomplete`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

JSON = dict[str, Any]

_INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}


@dataclass
class Reasoning:
    id: str
    text: str = ""
    status: str = "in_progress"


@dataclass
class Part:
    kind: str  # "output_text" or "refusal"
    text: str = ""


@dataclass
class Message:
    id: str
    parts: list[Part] = field(default_factory=list)
    status: str = "in_progress"


@dataclass
class FunctionCall:
    id: str
    call_id: str
    name: str
    arguments: str = ""
    status: str = "in_progress"


Item = Reasoning | Message | FunctionCall


@dataclass
class Answer:
    items: list[Item] = field(default_factory=list)
    model: str | None = None
    finish_reason: str | None = None
    usage: Mapping[str, Any] | None = None

    def outcome(self) -> tuple[str, JSON | None]:
        """The response's status and its `incomplete_details`."""
        reason = _INCOMPLETE.get(self.finish_reason or "")
        return ("completed", None) if reason is None else ("incomplete", {"reason": reason})

    def settle(self) -> None:
        """Ends the items still in progress: completed, but the last one of an incomplete
        answer, the one that was cut."""
        status, _ = self.outcome()
        for index, item in enumerate(self.items):
            if item.status == "in_progress":
                last = index == len(self.items) - 1
                item.status = "incomplete" if status == "incomplete" and last else "completed"


def digest(response_id: str, index: int, size: int) -> str:
    return hashlib.sha256(f"{response_id}/{index}".encode()).hexdigest()[:size]


def item_id(prefix: str, response_id: str, index: int) -> str:
    return f"{prefix}_{digest(response_id, index, 48)}"


def call_id(given: object, response_id: str, index: int, used: set[str]) -> str:
    chosen = given if isinstance(given, str) and given and given not in used else None
    if chosen is None:
        chosen = f"call_{digest(response_id, index, 24)}"
    used.add(chosen)
    return chosen


def reasoning_text(source: Mapping[str, Any]) -> str:
    """A message's or a delta's reasoning text: `reasoning_content`, else `reasoning`."""
    for key in ("reasoning_content", "reasoning"):
        value = source.get(key)
        if isinstance(value, str) and value:
            return value
    return ""


def render_part(part: Part) -> JSON:
    if part.kind == "refusal":
        return {"type": "refusal", "refusal": part.text}
    return {"type": "output_text", "text": part.text, "annotations": [], "logprobs": []}


def render_item(item: Item) -> JSON:
    if isinstance(item, Reasoning):
        content = [{"type": "reasoning_text", "text": item.text}] if item.text else []
        return {
            "id": item.id,
            "type": "reasoning",
            "summary": [],
            "content": content,
            "status": item.status,
        }
    if isinstance(item, Message):
        return {
            "id": item.id,
            "type": "message",
            "role": "assistant",
            "status": item.status,
            "content": [render_part(part) for part in item.parts],
        }
    return {
        "id": item.id,
        "type": "function_call",
        "call_id": item.call_id,
        "name": item.name,
        "arguments": item.arguments,
        "status": item.status,
    }


def from_completion(
    chat: Mapping[str, Any], response_id: str, taken: set[str] | None = None
) -> Answer:
    """A whole chat completion's first choice as an answer, its items settled; `taken` are the
    tool call ids the conversation used already (a server with per-turn ids repeats them)."""
    choices = chat.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices else {}
    choice = choice if isinstance(choice, dict) else {}
    message = choice.get("message")
    message = message if isinstance(message, dict) else {}
    answer = Answer(model=_str_or_none(chat.get("model")), usage=_usage(chat.get("usage")))
    answer.finish_reason = _str_or_none(choice.get("finish_reason"))
    items = answer.items
    thought = reasoning_text(message)
    if thought:
        items.append(Reasoning(item_id("rs", response_id, len(items)), thought))
    parts = [Part(kind, text) for kind, text in _texts(message) if text]
    if parts:
        items.append(Message(item_id("msg", response_id, len(items)), parts))
    used: set[str] = set(taken or ())
    calls = message.get("tool_calls")
    for call in calls if isinstance(calls, list) else ():
        call = call if isinstance(call, dict) else {}
        function = call.get("function")
        function = function if isinstance(function, dict) else {}
        index = len(items)
        items.append(
            FunctionCall(
                item_id("fc", response_id, index),
                call_id(call.get("id"), response_id, index, used),
                _str_or_none(function.get("name")) or "",
                _str_or_none(function.get("arguments")) or "",
            )
        )
    answer.settle()
    return answer


def _texts(message: Mapping[str, Any]) -> list[tuple[str, str]]:
    content = message.get("content")
    if isinstance(content, list):  # a few servers answer with text parts
        content = "".join(
            p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)
        )
    return [
        ("output_text", content if isinstance(content, str) else ""),
        ("refusal", _str_or_none(message.get("refusal")) or ""),
    ]


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _usage(value: object) -> Mapping[str, Any] | None:
    return value if isinstance(value, dict) else None

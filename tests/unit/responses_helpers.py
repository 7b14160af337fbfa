"""What the Responses translation tests share: chat completions and chunks as upstream sends
them, and the checks every produced object and event stream must pass (the openai SDK's own
types, the order of events, the SDK's own stream accumulator)."""

from __future__ import annotations

from typing import Any

import pydantic
from openai import omit
from openai.lib.streaming.responses import ResponseStreamState
from openai.types.responses import Response, ResponseStreamEvent

from gateway.responses_api import ChatPlan, StreamTranslator, from_chat, to_chat

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
RID = "resp_0123456789abcdef"
CREATED = 1_700_000_000
EVENT: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(ResponseStreamEvent)
USAGE = {
    "prompt_tokens": 20,
    "completion_tokens": 12,
    "total_tokens": 32,
    "prompt_tokens_details": {"cached_tokens": 8},
    "completion_tokens_details": {"reasoning_tokens": 5},
}
TERMINAL = {"response.completed", "response.incomplete", "response.failed"}

WEATHER: Any = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    },
    "strict": True,
}
SCHEMA: Any = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "degrees": {"type": "integer"}},
    "required": ["city", "degrees"],
    "additionalProperties": False,
}
JSON_FORMAT: Any = {"type": "json_schema", "name": "Weather", "schema": SCHEMA, "strict": True}


def respond(request: dict[str, Any], chat: dict[str, Any], **kw: Any) -> dict[str, Any]:
    """`request` answered by the whole chat completion `chat`."""
    return from_chat(to_chat(request), chat, response_id=RID, created_at=CREATED, **kw)


def calls_with_type(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Tool calls as an assistant message carries them."""
    return [{"id": c["id"], "type": "function", "function": c["function"]} for c in calls]


def completion(
    content: str | None = None,
    *,
    finish: str = "stop",
    usage: dict[str, Any] | None = USAGE,
    **message: Any,
) -> dict[str, Any]:
    """A whole chat completion whose one choice says `content` (and any other message key)."""
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, **message},
                "finish_reason": finish,
            }
        ],
        "usage": usage,
    }


def tool_call(call_id: str | None, name: str, arguments: str) -> dict[str, Any]:
    call: dict[str, Any] = {"type": "function", "function": {"name": name, "arguments": arguments}}
    if call_id is not None:
        call["id"] = call_id
    return call


def chunk(finish: str | None = None, **delta: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": MODEL,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        "usage": None,
    }


def call_chunk(
    index: int, arguments: str, call_id: str | None = None, name: str | None = None
) -> dict[str, Any]:
    fragment: dict[str, Any] = {"index": index, "function": {"arguments": arguments}}
    if call_id is not None:
        fragment.update(id=call_id, type="function")
    if name is not None:
        fragment["function"]["name"] = name
    return chunk(tool_calls=[fragment])


def usage_chunk(usage: dict[str, Any] = USAGE) -> dict[str, Any]:
    return {"id": "chatcmpl-1", "model": MODEL, "choices": [], "usage": usage}


def valid(obj: dict[str, Any]) -> Response:
    """The object as the SDK reads it; fails when the SDK's `Response` would not take it."""
    return Response.model_validate(obj)


def run(
    plan: ChatPlan, chunks: list[dict[str, Any]], fail: Any = None
) -> tuple[list[dict[str, Any]], StreamTranslator]:
    """The events for `chunks`, ended by `finish()` or by `fail(fail)`, checked."""
    translator = StreamTranslator(plan, response_id=RID, created_at=CREATED)
    events = translator.start()
    for c in chunks:
        events += translator.feed(c)
    events += translator.finish() if fail is None else translator.fail(fail)
    check_events(events)
    assert translator.response is not None
    assert events[-1]["response"] == translator.response
    valid(translator.response)
    return events, translator


def check_events(events: list[dict[str, Any]]) -> None:
    """Every event valid for the SDK, numbered in order, and nothing out of order."""
    for event in events:
        parsed = EVENT.validate_python(event)
        assert parsed.type == event["type"]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert [e["type"] for e in events[:2]] == ["response.created", "response.in_progress"]
    assert [e["type"] in TERMINAL for e in events].index(True) == len(events) - 1
    for event in events[:2]:
        assert event["response"]["status"] == "in_progress"
        assert event["response"]["output"] == []
    _check_items(events[2:-1], failed=events[-1]["type"] == "response.failed")
    final = events[-1]["response"]["output"]
    for event in events:
        if event["type"] == "response.output_item.done":
            assert final[event["output_index"]] == event["item"]


def _check_items(events: list[dict[str, Any]], *, failed: bool) -> None:
    added: list[int] = []
    done: set[int] = set()
    parts: dict[tuple[int, int], str] = {}  # open part -> its text so far
    closed: set[tuple[Any, ...]] = set()
    for e in events:
        kind, index = e["type"], e["output_index"]
        if kind == "response.output_item.added":
            assert index == len(added)
            added.append(index)
            continue
        assert index in added and index not in done, e
        part = (index, e.get("content_index", -1))
        if kind == "response.output_item.done":
            assert not [p for p in parts if p[0] == index]
            done.add(index)
        elif kind == "response.content_part.added":
            assert part not in parts and part not in closed
            parts[part] = ""
        elif kind == "response.content_part.done":
            assert part in parts and ("text", *part) in closed
            del parts[part]
            closed.add(part)
        elif kind.endswith(".delta") and "content_index" in e:
            assert part in parts and ("text", *part) not in closed
            parts[part] += e["delta"]
        elif kind.endswith(".done") and "content_index" in e:
            text = e.get("text", e.get("refusal"))
            assert parts[part] == text
            closed.add(("text", *part))
        elif kind == "response.function_call_arguments.delta":
            assert ("args", index) not in closed
        elif kind == "response.function_call_arguments.done":
            closed.add(("args", index))
    assert failed or done == set(added)


def accumulate(events: list[dict[str, Any]], **state: Any) -> list[Any]:
    """The events through the SDK's own stream accumulator (what `responses.stream` runs)."""
    accumulator: ResponseStreamState[Any] = ResponseStreamState(
        input_tools=state.get("input_tools", omit), text_format=state.get("text_format", omit)
    )
    out: list[Any] = []
    for event in events:
        out += accumulator.handle_event(EVENT.validate_python(event))
    return out

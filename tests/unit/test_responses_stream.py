"""`StreamTranslator`: upstream chunks in, Responses events out. Every stream here is checked by
`run` (each event through the SDK's `ResponseStreamEvent`, numbered, nothing out of order, the
final object valid) and the main ones also through the SDK's own accumulator."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from openai import omit
from pydantic import BaseModel

from gateway.errors import StreamInterrupted
from gateway.responses_api import StreamTranslator, encode_event, from_chat, to_chat
from tests.unit.responses_helpers import (
    CREATED,
    MODEL,
    RID,
    USAGE,
    accumulate,
    call_chunk,
    chunk,
    completion,
    run,
    tool_call,
    usage_chunk,
    valid,
)

PLAN = to_chat({"model": MODEL, "input": "Hi", "stream": True})
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    "strict": True,
}
TOOLS = to_chat({"model": MODEL, "input": "Weather?", "tools": [WEATHER], "stream": True})


def types(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in events]


def deltas(events: list[dict[str, Any]], kind: str) -> str:
    return "".join(e["delta"] for e in events if e["type"] == kind)


def test_a_text_stream_in_openai_order() -> None:
    chunks = [
        chunk(role="assistant", content=""),
        chunk(content="Hello"),
        chunk(content=" there"),
        chunk(finish="stop"),
        usage_chunk(),
    ]
    events, translator = run(PLAN, chunks)
    assert types(events) == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert events[4]["delta"] == "Hello" and events[4]["logprobs"] == []
    assert events[6]["text"] == "Hello there"
    response = valid(events[-1]["response"])
    assert response.output_text == "Hello there" and response.status == "completed"
    assert response.usage is not None and response.usage.input_tokens_details.cached_tokens == 8
    whole = from_chat(PLAN, completion("Hello there"), response_id=RID, created_at=CREATED)
    assert translator.response == whole
    assert translator.assistant_messages() == [{"role": "assistant", "content": "Hello there"}]


def test_the_sdk_accumulator_agrees() -> None:
    chunks = [chunk(content="Hel"), chunk(content="lo"), chunk(finish="stop"), usage_chunk()]
    events, translator = run(PLAN, chunks)
    seen = accumulate(events)
    text_deltas = [e for e in seen if e.type == "response.output_text.delta"]
    assert text_deltas[-1].snapshot == "Hello"
    [done] = [e for e in seen if e.type == "response.completed"]
    assert done.response.output_text == "Hello"
    final = done.response.to_dict()
    for item in final["output"]:
        for part in item["content"]:
            del part["parsed"]  # the SDK's own, None without a text format
    assert final == valid(translator.response).to_dict()  # type: ignore[arg-type]


def test_tool_calls_by_index_from_fragments() -> None:
    paris, rome = '{"city": "Paris"}', '{"city": "Rome"}'
    chunks = [
        chunk(role="assistant", content=None),
        call_chunk(0, "", "call_p", "get_weather"),
        call_chunk(0, paris[:5]),
        call_chunk(0, paris[5:11]),
        call_chunk(1, rome[:3], "call_r", "get_weather"),
        call_chunk(0, paris[11:]),  # late: the first call is still open
        call_chunk(1, rome[3:]),
        chunk(finish="tool_calls"),
        usage_chunk(),
    ]
    events, translator = run(TOOLS, chunks)
    added = [e["item"] for e in events if e["type"] == "response.output_item.added"]
    assert [(a["call_id"], a["arguments"], a["status"]) for a in added] == [
        ("call_p", "", "in_progress"),
        ("call_r", "", "in_progress"),
    ]
    by_item: dict[str, str] = {}
    for e in events:
        if e["type"] == "response.function_call_arguments.delta":
            by_item[e["item_id"]] = by_item.get(e["item_id"], "") + e["delta"]
    done = {
        e["item_id"]: e["arguments"]
        for e in events
        if e["type"] == "response.function_call_arguments.done"
    }
    assert by_item == done and sorted(done.values()) == sorted([paris, rome])
    response = valid(translator.response)  # type: ignore[arg-type]
    assert [(o.call_id, o.arguments) for o in response.output] == [
        ("call_p", paris),
        ("call_r", rome),
    ]  # type: ignore[union-attr]
    calls = [tool_call("call_p", "get_weather", paris), tool_call("call_r", "get_weather", rome)]
    whole = from_chat(
        TOOLS,
        completion(None, finish="tool_calls", tool_calls=calls),
        response_id=RID,
        created_at=CREATED,
    )
    assert translator.response == whole
    seen = accumulate(events, input_tools=[WEATHER])
    [final] = [e for e in seen if e.type == "response.completed"]
    assert [o.parsed_arguments for o in final.response.output] == [
        {"city": "Paris"},
        {"city": "Rome"},
    ]
    assert translator.assistant_messages()[0]["tool_calls"][1]["function"]["arguments"] == rome


def test_reasoning_then_content_then_a_tool_call() -> None:
    chunks = [
        chunk(role="assistant", reasoning="Let me ", reasoning_content="Let me "),  # vLLM: both
        chunk(reasoning="think."),
        chunk(content="Checking."),
        call_chunk(0, '{"city":', "call_1", "get_weather"),
        call_chunk(0, '"Paris"}'),
        chunk(finish="tool_calls"),
        usage_chunk(),
    ]
    events, translator = run(TOOLS, chunks)
    assert deltas(events, "response.reasoning_text.delta") == "Let me think."
    reasoning_part = next(e for e in events if e["type"] == "response.content_part.added")["part"]
    assert reasoning_part == {"type": "reasoning_text", "text": ""}
    order = [t for t in types(events) if t.startswith("response.output_item")]
    assert order == ["response.output_item.added", "response.output_item.done"] * 2 + [
        "response.output_item.added",
        "response.output_item.done",
    ]
    call = tool_call("call_1", "get_weather", '{"city":"Paris"}')
    whole = completion(
        "Checking.", finish="tool_calls", tool_calls=[call], reasoning="Let me think."
    )
    assert translator.response == from_chat(TOOLS, whole, response_id=RID, created_at=CREATED)
    accumulate(events, input_tools=[WEATHER])


def test_a_refusal_then_text_are_two_parts() -> None:
    chunks = [
        chunk(refusal="I can't."),
        chunk(refusal=" Sorry."),
        chunk(content="Try X."),
        chunk(finish="stop"),
    ]
    events, translator = run(PLAN, chunks)
    assert deltas(events, "response.refusal.delta") == "I can't. Sorry."
    [refusal_done] = [e for e in events if e["type"] == "response.refusal.done"]
    assert (refusal_done["refusal"], refusal_done["content_index"]) == ("I can't. Sorry.", 0)
    [text_delta] = [e for e in events if e["type"] == "response.output_text.delta"]
    assert text_delta["content_index"] == 1
    response = valid(translator.response)  # type: ignore[arg-type]
    assert response.output_text == "Try X." and response.usage is None
    assert [p.type for p in response.output[0].content] == ["refusal", "output_text"]  # type: ignore[union-attr]
    accumulate(events)


def test_a_length_cut_is_incomplete() -> None:
    plan = to_chat({"model": MODEL, "input": "Hi", "stream": True, "max_output_tokens": 3})
    chunks = [
        chunk(reasoning="Hmm"),
        chunk(content="Hello fr"),
        chunk(finish="length"),
        usage_chunk(),
    ]
    events, translator = run(plan, chunks)
    assert events[-1]["type"] == "response.incomplete"
    response = valid(events[-1]["response"])
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    assert [o.status for o in response.output] == ["completed", "incomplete"]  # type: ignore[union-attr]
    done = [e["item"]["status"] for e in events if e["type"] == "response.output_item.done"]
    assert done == ["completed", "incomplete"]
    whole = completion("Hello fr", finish="length", reasoning="Hmm")
    assert translator.response == from_chat(plan, whole, response_id=RID, created_at=CREATED)
    accumulate(events)


def test_a_failure_mid_stream() -> None:
    chunks = [chunk(content="Hel"), call_chunk(0, '{"ci', "call_1", "get_weather")]
    events, translator = run(TOOLS, chunks, fail=StreamInterrupted("W&B cut the stream."))
    assert events[-1]["type"] == "response.failed"
    assert "response.output_item.done" in types(events)  # the message, closed by the call
    response = valid(events[-1]["response"])
    assert response.status == "failed"
    assert response.error is not None
    assert (response.error.code, response.error.message) == ("server_error", "W&B cut the stream.")
    assert [o.status for o in response.output] == ["completed", "incomplete"]  # type: ignore[union-attr]
    assert response.output_text == "Hel"
    seen = accumulate(events)
    assert seen[-1].type == "response.failed"
    assert translator.finished and translator.feed(chunk(content="late")) == []
    assert translator.finish() == [] and translator.fail({"message": "again"}) == []


def test_an_error_chunk_fails_the_stream() -> None:
    translator = StreamTranslator(PLAN, response_id=RID, created_at=CREATED)
    events = translator.feed(chunk(content="a"))
    error = {"error": {"message": "overloaded", "type": "rate_limit_error", "code": None}}
    events += translator.feed(error)
    assert types(events)[:2] == ["response.created", "response.in_progress"]
    assert events[-1]["type"] == "response.failed"
    assert events[-1]["response"]["error"]["code"] == "rate_limit_exceeded"
    assert [e["sequence_number"] for e in events] == list(range(len(events)))


def test_odd_chunks() -> None:
    chunks = [
        {"choices": [{"index": 1, "delta": {"content": "other choice"}}]},
        {"choices": [{"delta": {"content": "no index "}}]},
        {"choices": [{"index": 0, "delta": None}], "usage": None},
        {"choices": None},
        call_chunk(0, '{"a":'),  # the name comes later: held until then
        {
            "choices": [
                {
                    "index": 0,
                    "delta": {
                        "tool_calls": [{"index": 0, "function": {"name": "f", "arguments": "1}"}}]
                    },
                }
            ]
        },
        {
            "choices": [
                {
                    "index": 0,
                    "delta": {
                        "tool_calls": [
                            {"id": "call_g", "function": {"name": "g", "arguments": "{"}}
                        ]
                    },
                }
            ]
        },
        {"choices": [{"index": 0, "delta": {"tool_calls": [{"function": {"arguments": "}"}}]}}]},
        chunk(finish="tool_calls"),
        usage_chunk({"prompt_tokens": 2, "completion_tokens": 3}),
    ]
    _events, translator = run(TOOLS, chunks)
    response = valid(translator.response)  # type: ignore[arg-type]
    assert response.output_text == "no index "
    calls = [(o.name, o.arguments) for o in response.output[1:]]  # type: ignore[union-attr]
    assert calls == [("f", '{"a":1}'), ("g", "{}")]
    assert all(o.call_id.startswith("call_") for o in response.output[1:])  # type: ignore[union-attr]
    assert response.usage is not None and response.usage.total_tokens == 5


def test_a_nameless_call_and_an_empty_stream_still_end() -> None:
    events, translator = run(TOOLS, [call_chunk(0, "{}")])
    assert valid(translator.response).output[0].name == ""  # type: ignore[arg-type, union-attr]
    events, translator = run(PLAN, [])
    assert types(events) == ["response.created", "response.in_progress", "response.completed"]
    assert translator.assistant_messages() == []


def test_structured_output_streamed_parses() -> None:
    class Weather(BaseModel):
        city: str
        degrees: int

    document = json.dumps({"city": "Paris", "degrees": 21})
    plan = to_chat(
        {
            "model": MODEL,
            "input": "x",
            "stream": True,
            "text": {
                "format": {
                    "type": "json_schema",
                    "name": "Weather",
                    "schema": Weather.model_json_schema(),
                    "strict": True,
                }
            },
        }
    )
    chunks = [chunk(content=document[:10]), chunk(content=document[10:]), chunk(finish="stop")]
    events, _ = run(plan, chunks)
    seen = accumulate(events, text_format=Weather)
    [text_done] = [e for e in seen if e.type == "response.output_text.done"]
    assert text_done.parsed == Weather(city="Paris", degrees=21)
    [final] = [e for e in seen if e.type == "response.completed"]
    assert final.response.output_parsed == Weather(city="Paris", degrees=21)


def test_start_is_once_and_events_encode_as_openai_sends_them() -> None:
    translator = StreamTranslator(PLAN, response_id=RID, created_at=CREATED)
    first = translator.start()
    assert len(first) == 2 and translator.start() == []
    raw = encode_event(first[0])
    head, data = raw.split(b"\n", 1)
    assert head == b"event: response.created"
    assert data.startswith(b"data: ") and data.endswith(b"\n\n")
    assert orjson.loads(data[6:]) == first[0]
    assert first[0]["response"]["usage"] is None and USAGE


@pytest.mark.parametrize("cut", range(1, 9))
def test_every_prefix_of_a_stream_fails_cleanly(cut: int) -> None:
    chunks = [
        chunk(reasoning="a"),
        chunk(content="b"),
        chunk(refusal="c"),
        call_chunk(0, "{", "c1", "f"),
        call_chunk(1, "{", "c2", "g"),
        call_chunk(0, "}"),
        chunk(content="d"),
        call_chunk(1, "}"),
    ]
    events, _ = run(TOOLS, chunks[:cut], fail={"message": "cut", "type": "server_error"})
    accumulate(events, input_tools=omit)
    events, translator = run(TOOLS, chunks[:cut])
    accumulate(events)
    assert translator.response is not None

"""`to_chat`: a Responses request as the chat body upstream gets, and a conversation continued
both ways (`previous_response_id` and items sent back) reaching upstream alike.
Whole answers: test_responses_answers.py; streams: test_responses_stream.py; refusals:
test_responses_refusals.py; the real SDK client on top of it all: test_responses_sdk.py."""

from __future__ import annotations

import json
from typing import Any

from gateway.responses_api import assistant_messages, from_chat, to_chat
from tests.unit.responses_helpers import (
    CREATED,
    JSON_FORMAT,
    MODEL,
    RID,
    SCHEMA,
    WEATHER,
    calls_with_type,
    completion,
    respond,
    tool_call,
    valid,
)

CHAT_WEATHER = {
    "type": "function",
    "function": {k: v for k, v in WEATHER.items() if k != "type"},
}


# --- requests ---------------------------------------------------------------------------------


def test_a_string_input_is_one_user_message() -> None:
    plan = to_chat({"model": MODEL, "input": "Hi there"})
    assert plan.body == {"model": MODEL, "messages": [{"role": "user", "content": "Hi there"}]}
    assert (plan.stream, plan.store, plan.previous_response_id) == (False, True, None)
    assert plan.messages == [{"role": "user", "content": "Hi there"}]


def test_item_input_with_an_image_part() -> None:
    content = [
        {"type": "input_text", "text": "What is this?"},
        {"type": "input_image", "image_url": "https://example.com/cat.png", "detail": "low"},
        {
            "type": "input_image",
            "image_url": "data:image/png;base64,iVBORw0KGgo=",
            "detail": "auto",
        },
        {"type": "input_image", "image_url": "https://example.com/big.png", "detail": "original"},
        {"type": "input_image", "image_url": "https://example.com/plain.png"},
    ]
    plan = to_chat({"model": MODEL, "input": [{"role": "user", "content": content}]})
    assert plan.body["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is this?"},
                {
                    "type": "image_url",
                    "image_url": {"url": "https://example.com/cat.png", "detail": "low"},
                },
                {
                    "type": "image_url",
                    "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "auto"},
                },
                {
                    "type": "image_url",
                    "image_url": {"url": "https://example.com/big.png", "detail": "high"},
                },
                {"type": "image_url", "image_url": {"url": "https://example.com/plain.png"}},
            ],
        }
    ]


def test_every_message_form() -> None:
    items = [
        {"role": "system", "content": "Be brief."},
        {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "No"}]},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {
            "type": "message",
            "id": "msg_1",
            "status": "completed",
            "role": "assistant",
            "content": [
                {"type": "output_text", "text": "Sure, ", "annotations": [], "logprobs": []},
                {"type": "refusal", "refusal": "but not that."},
            ],
        },
        {
            "type": "reasoning",
            "id": "rs_1",
            "summary": [],
            "content": [{"type": "reasoning_text", "text": "hm"}],
        },
    ]
    assert to_chat({"model": MODEL, "input": items}).messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "system", "content": [{"type": "text", "text": "No"}]},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "assistant", "content": "Sure, but not that."},
    ]


def test_instructions_lead_and_do_not_carry_over() -> None:
    plan = to_chat({"model": MODEL, "input": "Hi", "instructions": "Talk like a pirate."})
    assert plan.body["messages"] == [
        {"role": "system", "content": "Talk like a pirate."},
        {"role": "user", "content": "Hi"},
    ]
    assert plan.messages == [{"role": "user", "content": "Hi"}]
    assert plan.conversation([{"role": "assistant", "content": "Arr"}]) == [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Arr"},
    ]
    response = from_chat(plan, completion("Arr"), response_id=RID, created_at=CREATED)
    assert valid(response).instructions == "Talk like a pirate."


def test_sampling_and_limits_are_sent_and_metadata_is_not() -> None:
    plan = to_chat(
        {
            "model": MODEL,
            "input": "Hi",
            "max_output_tokens": 64,
            "temperature": 0.2,
            "top_p": 0.9,
            "user": "user-7",
            "parallel_tool_calls": False,  # no tools: not sent
            "metadata": {"ticket": "42"},
            "reasoning": {"effort": "low", "summary": "auto"},
            "stream": True,
        }
    )
    assert plan.body == {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 64,
        "temperature": 0.2,
        "top_p": 0.9,
        "user": "user-7",
        "reasoning_effort": "low",
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    assert plan.stream
    echo = valid(from_chat(plan, completion("Hi"), response_id=RID, created_at=CREATED))
    assert echo.metadata == {"ticket": "42"}
    assert (echo.max_output_tokens, echo.temperature, echo.top_p, echo.user) == (
        64,
        0.2,
        0.9,
        "user-7",
    )
    assert echo.parallel_tool_calls is False
    assert echo.reasoning is not None and echo.reasoning.effort == "low"


def test_nulls_are_absent_and_accepted_fields_are_not_sent() -> None:
    nulls = dict.fromkeys(
        [
            "instructions",
            "tools",
            "tool_choice",
            "text",
            "max_output_tokens",
            "temperature",
            "top_p",
            "user",
            "parallel_tool_calls",
            "reasoning",
            "stream",
            "store",
            "previous_response_id",
            "metadata",
            "include",
            "truncation",
            "top_logprobs",
            "service_tier",
            "prompt_cache_key",
            "background",
            "conversation",
            "prompt",
            "max_tool_calls",
        ]
    )
    assert (
        to_chat({"model": MODEL, "input": "Hi", **nulls}).body
        == to_chat({"model": MODEL, "input": "Hi"}).body
    )
    accepted = {
        "include": ["reasoning.encrypted_content", "message.output_text.logprobs"],
        "truncation": "auto",
        "top_logprobs": 0,
        "service_tier": "flex",
        "prompt_cache_key": "k1",
        "prompt_cache_retention": "24h",
        "safety_identifier": "hashed-user",
        "max_tool_calls": 3,
        "stream_options": {"include_obfuscation": False},
        "background": False,
        "store": False,
        "context_management": [],
    }
    plan = to_chat({"model": MODEL, "input": "Hi", **accepted})
    assert plan.body == {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}]}
    assert plan.store is False
    obj = from_chat(plan, completion("ok"), response_id=RID, created_at=CREATED)
    echo = valid(obj)
    assert (echo.truncation, obj["store"], echo.background) == ("disabled", False, False)
    assert (echo.prompt_cache_key, echo.safety_identifier, echo.max_tool_calls) == (
        "k1",
        "hashed-user",
        3,
    )


def test_function_tools_and_every_tool_choice() -> None:
    plain = {"type": "function", "name": "now", "parameters": None, "strict": None}
    base = {"model": MODEL, "input": "Weather?", "tools": [WEATHER, plain]}
    chat_plain = {"type": "function", "function": {"name": "now"}}
    plan = to_chat({**base, "parallel_tool_calls": True})
    assert plan.body["tools"] == [CHAT_WEATHER, chat_plain]
    assert "tool_choice" not in plan.body and plan.body["parallel_tool_calls"] is True
    for choice in ("auto", "none", "required"):
        assert to_chat({**base, "tool_choice": choice}).body["tool_choice"] == choice
    named = to_chat({**base, "tool_choice": {"type": "function", "name": "now"}})
    assert named.body["tool_choice"] == {"type": "function", "function": {"name": "now"}}
    allowed = {
        "type": "allowed_tools",
        "mode": "required",
        "tools": [{"type": "function", "name": "now"}],
    }
    narrowed = to_chat({**base, "tool_choice": allowed})
    assert (narrowed.body["tools"], narrowed.body["tool_choice"]) == ([chat_plain], "required")
    echo = valid(from_chat(narrowed, completion("ok"), response_id=RID, created_at=CREATED))
    assert [t.name for t in echo.tools] == ["get_weather", "now"]  # pyright: ignore
    assert echo.tool_choice.type == "allowed_tools"  # pyright: ignore
    assert (
        to_chat({"model": MODEL, "input": "x", "tool_choice": "auto"}).body.get("tool_choice")
        is None
    )


def test_text_formats() -> None:
    def sent(text: Any) -> Any:
        return to_chat({"model": MODEL, "input": "x", "text": text}).body.get("response_format")

    described = {**JSON_FORMAT, "description": "A city's weather."}
    assert sent({"format": described}) == {
        "type": "json_schema",
        "json_schema": {
            "name": "Weather",
            "schema": SCHEMA,
            "strict": True,
            "description": "A city's weather.",
        },
    }
    assert sent({"format": {"type": "json_object"}}) == {"type": "json_object"}
    assert sent({"format": {"type": "text"}}) is None
    assert sent({"verbosity": "low"}) is None


def test_json_schema_output_is_the_json_document() -> None:
    document = json.dumps({"city": "Paris", "degrees": 21})
    response = valid(
        respond(
            {"model": MODEL, "input": "x", "text": {"format": JSON_FORMAT}}, completion(document)
        )
    )
    assert json.loads(response.output_text) == {"city": "Paris", "degrees": 21}
    assert response.text is not None and response.text.format is not None
    assert response.text.format.type == "json_schema"
    assert response.text.format.schema_ == SCHEMA  # pyright: ignore


# --- conversations ----------------------------------------------------------------------------


def test_a_two_turn_function_call_by_items() -> None:
    first = to_chat({"model": MODEL, "input": "Weather in Paris?", "tools": [WEATHER]})
    answer = completion(
        None,
        finish="tool_calls",
        tool_calls=[tool_call("call_1", "get_weather", '{"city":"Paris"}')],
    )
    response = from_chat(first, answer, response_id=RID, created_at=CREATED)
    output = [{"type": "function_call_output", "call_id": "call_1", "output": '{"degrees": 21}'}]
    again = [{"role": "user", "content": "Weather in Paris?"}, *response["output"], *output]
    second = to_chat({"model": MODEL, "input": again, "tools": [WEATHER]})
    assert second.body["messages"] == [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": '{"degrees": 21}'},
    ]


def test_previous_response_id_and_items_reach_upstream_alike() -> None:
    """Turn 1 stored (`plan.conversation`) and continued by history, versus the same turn
    sent back as items: upstream sees the same messages."""
    request = {
        "model": MODEL,
        "input": "Weather in Paris and Rome?",
        "tools": [WEATHER],
        "instructions": "Be brief.",
    }
    calls = [
        tool_call("call_p", "get_weather", '{"city":"Paris"}'),
        tool_call("call_r", "get_weather", '{"city":"Rome"}'),
    ]
    plan = to_chat(request)
    response = from_chat(
        plan,
        completion("Checking.", finish="tool_calls", tool_calls=calls, reasoning="Two calls."),
        response_id=RID,
        created_at=CREATED,
    )
    stored = plan.conversation(assistant_messages(response))
    outputs = [
        {"type": "function_call_output", "call_id": "call_p", "output": "21"},
        {
            "type": "function_call_output",
            "call_id": "call_r",
            "output": [{"type": "input_text", "text": "2"}, {"type": "input_text", "text": "4"}],
        },
    ]
    by_id = to_chat(
        {**request, "input": outputs, "previous_response_id": RID, "instructions": "Be terse."},
        history=stored,
    )
    assert stored == plan.conversation(assistant_messages(response))  # not changed by to_chat
    by_items = to_chat(
        {
            **request,
            "input": [{"role": "user", "content": request["input"]}, *response["output"], *outputs],
            "instructions": "Be terse.",
        }
    )
    assert by_id.body == by_items.body
    assert by_id.body["messages"][0] == {"role": "system", "content": "Be terse."}
    assert by_id.body["messages"][2:] == [
        {"role": "assistant", "content": "Checking.", "tool_calls": calls_with_type(calls)},
        {"role": "tool", "tool_call_id": "call_p", "content": "21"},
        {"role": "tool", "tool_call_id": "call_r", "content": "24"},
    ]
    assert by_id.messages == by_id.body["messages"][1:]
    assert by_id.previous_response_id == RID
    assert (
        valid(
            from_chat(by_id, completion("21 and 24."), response_id="resp_2", created_at=CREATED)
        ).previous_response_id
        == RID
    )


def test_function_calls_merge_into_the_assistant_message_before_them() -> None:
    items = [
        {"role": "user", "content": "Go"},
        {"type": "function_call", "call_id": "c1", "name": "a", "arguments": "{}"},
        {
            "type": "function_call",
            "call_id": "c2",
            "name": "b",
            "arguments": "{}",
            "id": "fc_x",
            "status": "completed",
        },
        {"type": "function_call_output", "call_id": "c1", "output": "1"},
        {"type": "function_call_output", "call_id": "c2", "output": "2"},
        {"role": "assistant", "content": "Then"},
        {"type": "function_call", "call_id": "c3", "name": "a", "arguments": "{}"},
    ]
    messages = to_chat({"model": MODEL, "input": items}).messages
    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "tool", "assistant"]
    assert [c["id"] for c in messages[1]["tool_calls"]] == ["c1", "c2"]
    assert messages[4] == {
        "role": "assistant",
        "content": "Then",
        "tool_calls": [
            {"id": "c3", "type": "function", "function": {"name": "a", "arguments": "{}"}}
        ],
    }

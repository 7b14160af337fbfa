"""What `to_chat` refuses: a 400 `BadRequest` (`invalid_request_error`) whose `param` names the
field at fault and whose message says what the gateway supports."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.errors import BadRequest, render
from gateway.responses_api import to_chat
from tests.unit.responses_helpers import MODEL

FUNCTION = {"type": "function", "name": "f", "parameters": {"type": "object"}}
USER = {"role": "user", "content": "Hi"}


def refused(change: dict[str, Any], history: list[dict[str, Any]] | None = None) -> BadRequest:
    request = {"model": MODEL, "input": "Hi", **change}
    with pytest.raises(BadRequest) as info:
        to_chat({k: v for k, v in request.items() if v != "<absent>"}, history)
    error = info.value
    assert type(error) is BadRequest and error.status == 400
    status, _, body = render(error)
    envelope = json.loads(body)["error"]
    assert (status, envelope["type"], envelope["param"]) == (
        400,
        "invalid_request_error",
        error.param,
    )
    return error


BUILT_IN = [
    {"type": "web_search"},
    {"type": "web_search_preview"},
    {"type": "file_search", "vector_store_ids": ["vs_1"]},
    {"type": "code_interpreter", "container": {"type": "auto"}},
    {
        "type": "computer_use_preview",
        "display_width": 1024,
        "display_height": 768,
        "environment": "browser",
    },
    {"type": "computer"},
    {"type": "image_generation"},
    {"type": "mcp", "server_label": "deepwiki", "server_url": "https://mcp.deepwiki.com/mcp"},
    {"type": "local_shell"},
    {"type": "shell"},
    {"type": "apply_patch"},
    {"type": "custom", "name": "grammar"},
    {"type": "namespace", "name": "ns", "tools": []},
    {"type": "tool_search"},
]


@pytest.mark.parametrize("tool", BUILT_IN, ids=lambda t: t["type"])
def test_built_in_tools(tool: dict[str, Any]) -> None:
    error = refused({"tools": [FUNCTION, tool]})
    assert error.param == "tools[1].type"
    assert "function tools" in error.message and tool["type"] in error.message


@pytest.mark.parametrize(
    ("change", "param", "says"),
    [
        ({"background": True}, "background", "stream: true"),
        ({"background_options": {"completion_window": "2h"}}, "background_options", "background"),
        ({"conversation": "conv_1"}, "conversation", "previous_response_id"),
        ({"conversation": {"id": "conv_1"}}, "conversation", "previous_response_id"),
        ({"prompt": {"id": "pmpt_1"}}, "prompt", "instructions"),
        (
            {"context_management": [{"type": "compaction"}]},
            "context_management",
            "whole conversation",
        ),
        ({"moderation": {"model": "omni-moderation-latest"}}, "moderation", "moderation"),
        ({"access_programs": {"cyber": "standard"}}, "access_programs", "access programs"),
        ({"top_logprobs": 5}, "top_logprobs", "0 or null"),
        (
            {"tool_choice": {"type": "web_search_preview"}},
            "tool_choice.type",
            "'auto', 'none', 'required'",
        ),
        ({"tool_choice": {"type": "mcp", "server_label": "x"}}, "tool_choice.type", "function"),
        (
            {"tools": [{**FUNCTION, "defer_loading": True}]},
            "tools[0].defer_loading",
            "every function tool",
        ),
    ],
)
def test_what_cannot_be_translated(change: dict[str, Any], param: str, says: str) -> None:
    error = refused(change)
    assert error.param == param and says in error.message


@pytest.mark.parametrize(
    ("item", "param", "says"),
    [
        ({"type": "item_reference", "id": "msg_1"}, "input[1].type", "previous_response_id"),
        ({"id": "msg_1"}, "input[1].type", "keeps no items"),
        (
            {"type": "web_search_call", "id": "ws_1", "status": "completed"},
            "input[1].type",
            "function_call_output",
        ),
        (
            {"type": "computer_call_output", "call_id": "c", "output": {}},
            "input[1].type",
            "message, function_call",
        ),
        (
            {"type": "custom_tool_call", "call_id": "c", "name": "x", "input": ""},
            "input[1].type",
            "function tools",
        ),
        (
            {"role": "user", "content": [{"type": "input_file", "file_id": "file_1"}]},
            "input[1].content[0].type",
            "text and images",
        ),
        (
            {
                "role": "user",
                "content": [{"type": "input_image", "file_id": "file_1", "detail": "auto"}],
            },
            "input[1].content[0].file_id",
            "data URL",
        ),
        (
            {"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]},
            "input[1].content[0].type",
            "input_text and input_image",
        ),
        (
            {"role": "user", "content": [{"type": "output_text", "text": "x"}]},
            "input[1].content[0].type",
            "input_text",
        ),
        (
            {
                "role": "system",
                "content": [
                    {"type": "input_image", "image_url": "https://x/y.png", "detail": "auto"}
                ],
            },
            "input[1].content[0].type",
            "user messages only",
        ),
        (
            {"role": "assistant", "content": [{"type": "input_image", "image_url": "u"}]},
            "input[1].content[0].type",
            "output_text and refusal",
        ),
        (
            {"type": "function_call_output", "call_id": "nope", "output": "1"},
            "input[1].call_id",
            "No tool call found",
        ),
        (
            {"type": "function_call", "name": "f", "arguments": "{}"},
            "input[1].call_id",
            "Missing required",
        ),
        (
            {"role": "tool", "content": "x"},
            "input[1].role",
            "'user', 'assistant', 'system', 'developer'",
        ),
        ({"content": "x", "type": "message"}, "input[1].role", "Missing required"),
        ({"role": "user"}, "input[1].content", "Missing required"),
        ({"role": "user", "content": 5}, "input[1].content", "expected an array"),
        (
            {"role": "user", "content": [{"type": "input_text", "text": 5}]},
            "input[1].content[0].text",
            "a string",
        ),
        (
            {"role": "user", "content": [{"text": "x"}]},
            "input[1].content[0].type",
            "Missing required",
        ),
        (
            {"type": "function_call", "call_id": "c", "name": "f", "arguments": {}},
            "input[1].arguments",
            "a string",
        ),
        ("just a string", "input[1]", "an object"),
        ({}, "input[1].type", "Missing required"),
    ],
)
def test_input_items(item: Any, param: str, says: str) -> None:
    error = refused({"input": [USER, item]})
    assert error.param == param and says in error.message


def test_tool_outputs_take_text_only() -> None:
    calls = [
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
        {
            "type": "function_call_output",
            "call_id": "c1",
            "output": [{"type": "input_image", "image_url": "u"}],
        },
    ]
    error = refused({"input": [USER, *calls]})
    assert error.param == "input[2].output[0].type" and "text only" in error.message


def test_a_call_id_must_come_before_its_output() -> None:
    output = {"type": "function_call_output", "call_id": "c1", "output": "1"}
    assert refused({"input": [output]}, history=[USER]).param == "input[0].call_id"
    history = [
        USER,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
            ],
        },
    ]
    assert (
        to_chat({"model": MODEL, "input": [output]}, history).messages[-1]["tool_call_id"] == "c1"
    )


@pytest.mark.parametrize(
    ("field", "hint"),
    [
        ("messages", "`input`"),
        ("max_tokens", "max_output_tokens"),
        ("max_completion_tokens", "max_output_tokens"),
        ("response_format", "text.format"),
        ("reasoning_effort", "reasoning.effort"),
        ("n", "one answer"),
        ("functions", "tools"),
        ("stop", "not a Responses API parameter"),
        ("seed", "not a Responses API parameter"),
        ("frequency_penalty", "not a Responses API parameter"),
        ("x_fake", "not a Responses API parameter"),
    ],
)
def test_unknown_fields(field: str, hint: str) -> None:
    error = refused({field: 1})
    assert error.param == field
    assert error.message.startswith(f"Unrecognized request argument supplied: {field}")
    assert hint in error.message


BAD_TYPES = [
    ({"model": 1}, "model"),
    ({"model": ""}, "model"),
    ({"model": "<absent>"}, "model"),
    ({"input": 5}, "input"),
    ({"input": []}, "input"),
    ({"input": "<absent>"}, "input"),
    ({"instructions": ["x"]}, "instructions"),
    ({"tools": {"type": "function"}}, "tools"),
    ({"tools": ["f"]}, "tools[0]"),
    ({"tools": [{"name": "f"}]}, "tools[0].type"),
    ({"tools": [{"type": "function"}]}, "tools[0].name"),
    ({"tools": [{**FUNCTION, "parameters": "{}"}]}, "tools[0].parameters"),
    ({"tools": [{**FUNCTION, "strict": "yes"}]}, "tools[0].strict"),
    ({"tools": [{**FUNCTION, "description": 3}]}, "tools[0].description"),
    ({"tools": [FUNCTION, FUNCTION]}, "tools[1]"),
    ({"tool_choice": 3}, "tool_choice"),
    ({"tool_choice": "sometimes"}, "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": [FUNCTION], "tool_choice": {"type": "function"}}, "tool_choice.name"),
    ({"tools": [FUNCTION], "tool_choice": {"type": "function", "name": "g"}}, "tool_choice.name"),
    (
        {"tools": [FUNCTION], "tool_choice": {"type": "allowed_tools", "mode": "any", "tools": []}},
        "tool_choice.mode",
    ),
    (
        {
            "tools": [FUNCTION],
            "tool_choice": {
                "type": "allowed_tools",
                "mode": "auto",
                "tools": [{"type": "function", "name": "g"}],
            },
        },
        "tool_choice.tools[0].name",
    ),
    ({"text": "json"}, "text"),
    ({"text": {"format": "json"}}, "text.format"),
    ({"text": {"format": {"type": "yaml"}}}, "text.format.type"),
    ({"text": {"format": {"type": "json_schema", "name": "W"}}}, "text.format.schema"),
    ({"text": {"format": {"type": "json_schema", "schema": {}}}}, "text.format.name"),
    (
        {"text": {"format": {"type": "json_schema", "name": "W", "schema": {}, "strict": 1}}},
        "text.format.strict",
    ),
    ({"text": {"verbosity": "loud"}}, "text.verbosity"),
    ({"max_output_tokens": "10"}, "max_output_tokens"),
    ({"max_output_tokens": 0}, "max_output_tokens"),
    ({"max_output_tokens": True}, "max_output_tokens"),
    ({"max_output_tokens": 1.5}, "max_output_tokens"),
    ({"temperature": "hot"}, "temperature"),
    ({"top_p": True}, "top_p"),
    ({"parallel_tool_calls": "yes"}, "parallel_tool_calls"),
    ({"user": 1}, "user"),
    ({"metadata": []}, "metadata"),
    ({"metadata": {"k": 1}}, "metadata.k"),
    ({"metadata": {str(i): "v" for i in range(17)}}, "metadata"),
    ({"metadata": {"k" * 65: "v"}}, "metadata"),
    ({"metadata": {"k": "v" * 513}}, "metadata.k"),
    ({"reasoning": "high"}, "reasoning"),
    ({"reasoning": {"effort": "extreme"}}, "reasoning.effort"),
    ({"reasoning": {"summary": "long"}}, "reasoning.summary"),
    ({"stream": "yes"}, "stream"),
    ({"store": 1}, "store"),
    ({"previous_response_id": 5}, "previous_response_id"),
    ({"truncation": "sometimes"}, "truncation"),
    ({"include": "reasoning.encrypted_content"}, "include"),
    ({"include": ["everything"]}, "include[0]"),
    ({"top_logprobs": "1"}, "top_logprobs"),
    ({"service_tier": 1}, "service_tier"),
    ({"prompt_cache_key": 1}, "prompt_cache_key"),
    ({"safety_identifier": 1}, "safety_identifier"),
    ({"max_tool_calls": "1"}, "max_tool_calls"),
    ({"stream_options": True}, "stream_options"),
    (
        {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": 5}]}]},
        "input[0].content[0].image_url",
    ),
    (
        {
            "input": [
                {
                    "role": "user",
                    "content": [{"type": "input_image", "image_url": "u", "detail": "max"}],
                }
            ]
        },
        "input[0].content[0].detail",
    ),
]


@pytest.mark.parametrize(("change", "param"), BAD_TYPES, ids=lambda v: str(v)[:60])
def test_wrong_types_name_the_field(change: dict[str, Any], param: str) -> None:
    error = refused(change)
    assert error.param == param, error.message
    assert param.split("[")[0].split(".")[0] in error.message or "Missing" in error.message


def test_type_messages_read_like_openai_s() -> None:
    assert refused({"temperature": "hot"}).message == (
        "Invalid type for 'temperature': expected a number, but got a string instead."
    )
    assert refused({"model": "<absent>"}).message == "Missing required parameter: 'model'."

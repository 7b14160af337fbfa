"""`from_chat`: a whole chat completion as the Responses object, checked by the openai SDK's
own `Response`: output items, ids, statuses, usage; and failed responses, their errors mapped."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.errors import BudgetExceeded, StreamInterrupted, UpstreamTimeout
from gateway.responses_api import (
    assistant_messages,
    failed_response,
    from_chat,
    response_error,
    to_chat,
)
from tests.unit.responses_helpers import (
    CREATED,
    MODEL,
    RID,
    WEATHER,
    call_chunk,
    calls_with_type,
    chunk,
    completion,
    respond,
    run,
    tool_call,
    valid,
)

# --- whole answers ----------------------------------------------------------------------------


def test_a_text_answer() -> None:
    obj = respond(
        {"model": MODEL, "input": "Hi", "metadata": {"a": "b"}},
        completion("Hello!"),
        completed_at=CREATED + 2,
    )
    response = valid(obj)
    assert response.output_text == "Hello!"
    assert (response.id, response.object, response.status, response.model) == (
        RID,
        "response",
        "completed",
        MODEL,
    )
    assert (response.created_at, response.completed_at) == (CREATED, CREATED + 2)
    assert response.error is None and response.incomplete_details is None
    [message] = obj["output"]
    assert message["id"].startswith("msg_") and len(message["id"]) == 52
    assert message == {
        "id": message["id"],
        "type": "message",
        "role": "assistant",
        "status": "completed",
        "content": [{"type": "output_text", "text": "Hello!", "annotations": [], "logprobs": []}],
    }
    assert (
        respond({"model": MODEL, "input": "Hi"}, completion("Hello!"))["output"][0]["id"]
        == message["id"]
    )
    assert respond({"model": MODEL, "input": "Hi"}, completion("Hi"))["usage"] == obj["usage"]


def test_usage_maps_cached_and_reasoning_tokens() -> None:
    usage = valid(respond({"model": MODEL, "input": "Hi"}, completion("Hi"))).usage
    assert usage is not None
    assert (usage.input_tokens, usage.output_tokens, usage.total_tokens) == (20, 12, 32)
    assert usage.input_tokens_details.cached_tokens == 8
    assert usage.output_tokens_details.reasoning_tokens == 5
    bare = respond(
        {"model": MODEL, "input": "Hi"},
        completion("Hi", usage={"prompt_tokens": 3, "completion_tokens": 4}),
    )
    assert bare["usage"] == {
        "input_tokens": 3,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": 4,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 7,
    }
    assert (
        valid(respond({"model": MODEL, "input": "Hi"}, completion("Hi", usage=None))).usage is None
    )


@pytest.mark.parametrize("key", ["reasoning_content", "reasoning"])
def test_reasoning_content_and_tool_calls_in_one_answer(key: str) -> None:
    calls = [
        tool_call("call_a", "get_weather", '{"city":"Paris"}'),
        tool_call("call_b", "now", "{}"),
    ]
    chat = completion("Let me check.", finish="tool_calls", tool_calls=calls, **{key: "Think."})
    obj = respond({"model": MODEL, "input": "Weather?", "tools": [WEATHER]}, chat)
    response = valid(obj)
    assert [item.type for item in response.output] == [
        "reasoning",
        "message",
        "function_call",
        "function_call",
    ]
    reasoning, _, first, second = obj["output"]
    assert reasoning == {
        "id": reasoning["id"],
        "type": "reasoning",
        "summary": [],
        "content": [{"type": "reasoning_text", "text": "Think."}],
        "status": "completed",
    }
    assert reasoning["id"].startswith("rs_") and first["id"].startswith("fc_")
    assert first == {
        "id": first["id"],
        "type": "function_call",
        "call_id": "call_a",
        "name": "get_weather",
        "arguments": '{"city":"Paris"}',
        "status": "completed",
    }
    assert (second["call_id"], second["name"], second["arguments"]) == ("call_b", "now", "{}")
    assert response.output_text == "Let me check."
    assert assistant_messages(obj) == [
        {"role": "assistant", "content": "Let me check.", "tool_calls": calls_with_type(calls)}
    ]


def test_tool_calls_without_ids_or_with_the_same_get_their_own() -> None:
    calls = [tool_call(None, "a", "{}"), tool_call("dup", "b", "{}"), tool_call("dup", "c", "{}")]
    obj = respond(
        {"model": MODEL, "input": "x"}, completion(None, finish="tool_calls", tool_calls=calls)
    )
    ids = [item["call_id"] for item in obj["output"]]
    assert ids[1] == "dup" and ids[0].startswith("call_") and ids[2].startswith("call_")
    assert len(set(ids)) == 3
    assert valid(obj).output_text == ""
    assert assistant_messages(obj)[0]["content"] is None


def test_a_refusal() -> None:
    obj = respond(
        {"model": MODEL, "input": "x"}, completion(None, refusal="I can't help with that.")
    )
    assert obj["output"][0]["content"] == [
        {"type": "refusal", "refusal": "I can't help with that."}
    ]
    assert valid(obj).output_text == ""
    assert assistant_messages(obj) == [{"role": "assistant", "content": "I can't help with that."}]


@pytest.mark.parametrize(
    ("finish", "reason"), [("length", "max_output_tokens"), ("content_filter", "content_filter")]
)
def test_a_cut_answer_is_incomplete(finish: str, reason: str) -> None:
    chat = completion("Hello fr", finish=finish, reasoning="Think.")
    response = valid(
        respond({"model": MODEL, "input": "x", "max_output_tokens": 5}, chat, completed_at=9)
    )
    assert response.status == "incomplete" and response.completed_at is None
    assert response.incomplete_details is not None and response.incomplete_details.reason == reason
    assert [item.status for item in response.output] == ["completed", "incomplete"]  # pyright: ignore
    assert response.output_text == "Hello fr"


def test_model_and_odd_answers() -> None:
    assert respond({"model": "alias", "input": "x"}, completion("a"))["model"] == MODEL
    empty = respond({"model": "alias", "input": "x"}, {"choices": []})
    assert (empty["model"], empty["output"], empty["usage"]) == ("alias", [], None)
    valid(empty)
    parts = completion(None)
    parts["choices"][0]["message"]["content"] = [
        {"type": "text", "text": "a"},
        {"type": "text", "text": "b"},
    ]
    assert valid(respond({"model": MODEL, "input": "x"}, parts)).output_text == "ab"


# --- failures ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (UpstreamTimeout("W&B took too long."), "server_error"),
        (StreamInterrupted("cut"), "server_error"),
        (BudgetExceeded("over budget"), "rate_limit_exceeded"),
        (
            {"message": "slow down", "type": "rate_limit_error", "code": "rate_limit_exceeded"},
            "rate_limit_exceeded",
        ),
        (
            {"message": "bad", "type": "invalid_request_error", "code": None, "param": "input"},
            "invalid_prompt",
        ),
        (
            {"message": "no", "type": "invalid_request_error", "code": "invalid_image_url"},
            "invalid_image_url",
        ),
        ({}, "server_error"),
    ],
)
def test_failed_response_maps_errors(error: Any, code: str) -> None:
    plan = to_chat({"model": MODEL, "input": "x"})
    response = valid(failed_response(plan, RID, CREATED, error))
    assert response.status == "failed" and response.output == []
    assert response.error is not None and response.error.code == code
    assert response.error.message
    assert response_error(error)["code"] == code


def test_an_error_keeps_its_message_type_and_param() -> None:
    error = response_error(BudgetExceeded("Tenant 'ads' is over its monthly budget."))
    assert error == {
        "code": "rate_limit_exceeded",
        "message": "Tenant 'ads' is over its monthly budget.",
        "param": None,
        "type": "insufficient_quota",
    }


def test_a_tool_call_id_the_conversation_used_already_is_replaced() -> None:
    """Servers with per-turn ids (`functions.get_weather:0`) repeat them turn after turn: the
    second call gets an id of its own, so its output cannot be matched to the first one."""
    reused = "functions.get_weather:0"
    history = [
        {"role": "user", "content": "Weather?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": calls_with_type([tool_call(reused, "get_weather", '{"city": "Oslo"}')]),
        },
        {"role": "tool", "tool_call_id": reused, "content": "Snow"},
    ]
    plan = to_chat({"model": MODEL, "input": "And in Rome?"}, history)
    again = completion(
        None, finish="tool_calls", tool_calls=[tool_call(reused, "get_weather", "{}")]
    )
    whole = from_chat(plan, again, response_id=RID, created_at=CREATED)
    [call] = [item for item in whole["output"] if item["type"] == "function_call"]
    assert call["call_id"] != reused
    _, translator = run(plan, [call_chunk(0, "{}", reused, "get_weather"), chunk("tool_calls")])
    assert translator.response is not None
    [streamed] = [i for i in translator.response["output"] if i["type"] == "function_call"]
    assert streamed["call_id"] == call["call_id"]  # the same replacement, streamed or not

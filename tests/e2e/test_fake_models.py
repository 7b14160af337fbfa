"""Apps with tools and structured output, through the gateway, against the fake upstream.

The official openai SDK (``chat.completions.parse``, ``.stream``, a tool-calling loop) and
LangChain's ``ChatOpenAI`` (``bind_tools``, ``with_structured_output``), as an app would use
them: the fake answers as ``gateway.testing.structured`` documents. And ``make demo``: the
Python it prints works as printed, and a second demo refuses a busy port.
"""

from __future__ import annotations

import enum
import json
import math
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import openai
import pytest
from langchain_core.messages import HumanMessage, ToolMessage
from langchain_openai import ChatOpenAI
from pydantic import BaseModel, Field

from gateway.cli import demo_python
from tests.e2e.helpers import client
from tests.procs import LLAMA, ROOT, SEARCH_KEY, Proc, free_port

TEXT = "Hello from the fake W&B upstream for testing"
ASK = [{"role": "user", "content": "Find me a travel plan for Lisbon please"}]


class Season(enum.StrEnum):
    SPRING = "spring"
    AUTUMN = "autumn"


class Stop(BaseModel):
    city: str
    nights: int = Field(ge=1, le=14)


class Plan(BaseModel):
    """A travel plan: a nested model, a list, an enum and an optional field."""

    title: str
    season: Season
    stops: list[Stop]
    budget_eur: float | None
    note: str | None = None


class GetWeather(BaseModel):
    """The weather in a city on a day."""

    city: str
    day: str = Field(json_schema_extra={"format": "date"})
    unit: str = Field(json_schema_extra={"enum": ["celsius", "fahrenheit"]})


WEATHER_TOOL: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city on a day",
        "parameters": GetWeather.model_json_schema(),
    },
}
NOOP_TOOL: Any = {
    "type": "function",
    "function": {"name": "noop", "parameters": {"type": "object"}},
}


def tokens(text: str) -> int:
    """The fake's documented count for a JSON document: one token per 4 characters."""
    return math.ceil(len(text) / 4)


def usage(answer: Any) -> tuple[int, int]:
    """Prompt and completion tokens (a repeated prompt is also reported cached: left out)."""
    return answer.usage.prompt_tokens, answer.usage.completion_tokens


def test_parse_gives_the_pydantic_object(gateway: Proc, fake: Proc) -> None:
    resp = client(gateway).chat.completions.parse(model=LLAMA, messages=ASK, response_format=Plan)
    choice = resp.choices[0]
    assert choice.finish_reason == "stop"
    plan = choice.message.parsed
    assert isinstance(plan, Plan)
    assert plan.season is Season.SPRING
    assert plan.stops and 1 <= plan.stops[0].nights <= 14
    assert choice.message.content is not None
    assert resp.usage is not None
    assert resp.usage.completion_tokens == tokens(choice.message.content)


def test_streamed_parse_is_the_same_document(gateway: Proc, fake: Proc) -> None:
    c = client(gateway)
    whole = c.chat.completions.parse(model=LLAMA, messages=ASK, response_format=Plan)
    with c.chat.completions.stream(
        model=LLAMA,
        messages=ASK,
        response_format=Plan,
        stream_options={"include_usage": True},
    ) as stream:
        pieces = [e.delta for e in stream if e.type == "content.delta"]
        final = stream.get_final_completion()
    assert len(pieces) > 1
    assert final.choices[0].message.parsed == whole.choices[0].message.parsed
    assert final.choices[0].message.content == whole.choices[0].message.content
    assert usage(final) == usage(whole)


def test_json_object_answers_an_object(gateway: Proc, fake: Proc) -> None:
    resp = client(gateway).chat.completions.create(
        model=LLAMA, messages=ASK, response_format={"type": "json_object"}
    )
    assert json.loads(resp.choices[0].message.content or "") == {"answer": TEXT}


def call_weather(c: openai.OpenAI, **extra: Any) -> Any:
    return c.chat.completions.create(
        model=LLAMA, messages=ASK, tools=[NOOP_TOOL, WEATHER_TOOL], **extra
    )


def test_tool_loop(gateway: Proc, fake: Proc) -> None:
    c = client(gateway)
    named = {"type": "function", "function": {"name": "get_weather"}}
    first = call_weather(c, tool_choice=named)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    [call] = choice.message.tool_calls or []
    assert call.function.name == "get_weather"
    assert call.id.startswith("call_")
    arguments = json.loads(call.function.arguments)
    jsonschema.validate(arguments, GetWeather.model_json_schema())
    assert GetWeather.model_validate(arguments).unit == "celsius"
    assert first.usage is not None
    assert first.usage.completion_tokens == tokens(call.function.arguments)
    assert call_weather(c, tool_choice=named).choices[0].message.tool_calls == [call]

    result = {"role": "tool", "tool_call_id": call.id, "content": '{"celsius": 21}'}
    messages = [*ASK, choice.message.model_dump(exclude_none=True), result]
    second = c.chat.completions.create(
        model=LLAMA, messages=messages, tools=[NOOP_TOOL, WEATHER_TOOL], tool_choice=named
    )
    assert second.choices[0].finish_reason == "stop"
    assert second.choices[0].message.content == TEXT
    assert not second.choices[0].message.tool_calls


def test_auto_takes_the_first_tool_and_none_answers_text(gateway: Proc, fake: Proc) -> None:
    c = client(gateway)
    [call] = call_weather(c).choices[0].message.tool_calls or []
    assert (call.function.name, call.function.arguments) == ("noop", "{}")
    assert call_weather(c, tool_choice="none").choices[0].message.content == TEXT


def test_streamed_tool_call_is_the_same(gateway: Proc, fake: Proc) -> None:
    c = client(gateway)
    named = {"type": "function", "function": {"name": "get_weather"}}
    whole = call_weather(c, tool_choice=named)
    stream = call_weather(c, tool_choice=named, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    deltas = [d for ch in chunks for choice in ch.choices for d in choice.delta.tool_calls or []]
    assert deltas[0].id and deltas[0].function.name == "get_weather"
    assert deltas[0].function.arguments == ""
    assert len(deltas) > 2 and all(d.id is None and d.index == 0 for d in deltas[1:])
    arguments = "".join(d.function.arguments or "" for d in deltas)
    [call] = whole.choices[0].message.tool_calls or []
    assert (deltas[0].id, arguments) == (call.id, call.function.arguments)
    finish = [choice.finish_reason for ch in chunks for choice in ch.choices]
    assert finish[-1] == "tool_calls"
    assert usage(chunks[-1]) == usage(whole)

    with c.chat.completions.stream(
        model=LLAMA,
        messages=ASK,
        tools=[openai.pydantic_function_tool(GetWeather)],
    ) as helper:
        final = helper.get_final_completion()
    [parsed] = final.choices[0].message.tool_calls or []
    assert isinstance(parsed.function.parsed_arguments, GetWeather)


def langchain(gateway: Proc) -> ChatOpenAI:
    return ChatOpenAI(model=LLAMA, base_url=gateway.url + "/v1", api_key=SEARCH_KEY, max_retries=0)


def get_weather(city: str, day: str) -> str:
    """The weather in a city on a day (YYYY-MM-DD)."""
    return f"sunny in {city} on {day}"


def test_langchain_bind_tools(gateway: Proc, fake: Proc) -> None:
    model = langchain(gateway).bind_tools([get_weather])
    ask = HumanMessage("What is the weather in Lisbon tomorrow?")
    reply = model.invoke([ask])
    [call] = reply.tool_calls
    assert call["name"] == "get_weather"
    assert set(call["args"]) == {"city", "day"}
    streamed: Any = None
    for chunk in model.stream([ask]):
        streamed = chunk if streamed is None else streamed + chunk
    assert streamed is not None and streamed.tool_calls == reply.tool_calls
    result = ToolMessage(get_weather(**call["args"]), tool_call_id=call["id"])
    assert model.invoke([ask, reply, result]).content == TEXT


@pytest.mark.parametrize("method", ["json_schema", "function_calling"])
def test_langchain_structured_output(gateway: Proc, fake: Proc, method: str) -> None:
    model = langchain(gateway).with_structured_output(Plan, method=method)
    plan = model.invoke("Plan a trip to Lisbon")
    assert isinstance(plan, Plan)
    assert plan.stops[0].city


# --- make demo ---------------------------------------------------------------------------------


def test_the_demo_python_works_as_printed(gateway: Proc, fake: Proc) -> None:
    code = demo_python(gateway.url + "/v1", SEARCH_KEY)
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 3
    assert TEXT in lines[0]
    assert lines[1] == "name='fake name' population=1"
    assert "name='get_weather'" in lines[2] and 'arguments=\'{"city":"fake city"}\'' in lines[2]


@pytest.mark.parametrize("busy", ["gateway", "upstream"])
def test_a_second_demo_refuses_a_busy_port(tmp_path: Path, busy: str) -> None:
    keys = tmp_path / "demo.keys"
    keys.write_text("sha256:the-running-demo's\n")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port, other = taken.getsockname()[1], free_port()
        ports = (port, other) if busy == "gateway" else (other, port)
        more = ["--upstream-port", str(ports[1]), "--keys-file", str(keys)]
        done = subprocess.run(
            [sys.executable, "-m", "gateway", "demo", "--port", str(ports[0]), *more],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    assert done.returncode != 0
    assert done.stdout == ""
    [line] = done.stderr.splitlines()
    assert f"port {port} on 127.0.0.1" in line and str(other) not in line
    assert keys.read_text() == "sha256:the-running-demo's\n"

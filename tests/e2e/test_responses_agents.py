"""Agent frameworks on the Responses API, unchanged but for `base_url` and `api_key`: the OpenAI
Agents SDK running a function tool, LangChain's `ChatOpenAI(use_responses_api=True)` binding
tools and asking for structured output, and the SDK's own function-calling loop both ways
(`previous_response_id`, and the items passed back). The fake upstream answers a request with
tools by calling the first one, and a tool's output with text."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import agents
import openai
from langchain_openai import ChatOpenAI
from openai.types.responses import FunctionToolParam
from pydantic import BaseModel

from tests.e2e.helpers import client, seen
from tests.procs import LLAMA, SEARCH_KEY, Proc

WEATHER_TOOL: FunctionToolParam = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 1}},
        "required": ["city", "days"],
        "additionalProperties": False,
    },
    "strict": True,
}


def test_a_function_calling_loop_by_previous_response_id(gateway: Proc, fake: Proc) -> None:
    c = client(gateway)
    first = c.responses.create(model=LLAMA, input="Weather in Paris?", tools=[WEATHER_TOOL])
    [call] = [item for item in first.output if item.type == "function_call"]
    assert call.name == "get_weather"  # type: ignore[union-attr]
    arguments = json.loads(call.arguments)  # type: ignore[union-attr]
    assert isinstance(arguments["city"], str) and arguments["days"] >= 1
    second = c.responses.create(
        model=LLAMA,
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "Sunny"}],  # type: ignore[union-attr]
        tools=[WEATHER_TOOL],
    )
    assert second.output_text and second.status == "completed"
    messages = seen(fake)[-1]["body"]["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "tool"]
    assert messages[1]["tool_calls"][0]["id"] == call.call_id == messages[2]["tool_call_id"]  # type: ignore[union-attr]


def test_a_function_calling_loop_by_passing_the_items_back(gateway: Proc, fake: Proc) -> None:
    c = client(gateway)
    history: list[Any] = [{"role": "user", "content": "Weather in Oslo?"}]
    first = c.responses.create(model=LLAMA, input=history, tools=[WEATHER_TOOL], store=False)
    history += [item.model_dump(exclude_none=True) for item in first.output]
    [call] = [item for item in first.output if item.type == "function_call"]
    history.append({"type": "function_call_output", "call_id": call.call_id, "output": "Snow"})  # type: ignore[union-attr]
    second = c.responses.create(model=LLAMA, input=history, tools=[WEATHER_TOOL], store=False)
    assert second.output_text
    roles = [m["role"] for m in seen(fake)[-1]["body"]["messages"]]
    assert roles == ["user", "assistant", "tool"]


def test_a_streamed_function_call_assembles_to_the_whole_one(gateway: Proc) -> None:
    c = client(gateway)
    whole = c.responses.create(model=LLAMA, input="Weather in Rome?", tools=[WEATHER_TOOL])
    with c.responses.stream(model=LLAMA, input="Weather in Rome?", tools=[WEATHER_TOOL]) as s:
        kinds = [event.type for event in s]
        final = s.get_final_response()
    assert "response.function_call_arguments.delta" in kinds
    streamed = [i for i in final.output if i.type == "function_call"]
    called = [i for i in whole.output if i.type == "function_call"]
    assert [(i.name, i.arguments) for i in streamed] == [(i.name, i.arguments) for i in called]  # type: ignore[union-attr]


def test_the_openai_agents_sdk_runs_a_tool_through_the_gateway(gateway: Proc) -> None:
    agents.set_tracing_disabled(True)  # no traces sent to OpenAI
    called: list[str] = []

    @agents.function_tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        called.append(city)
        return f"Sunny in {city}"

    async def run() -> Any:
        async with openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key=SEARCH_KEY) as sdk:
            agent = agents.Agent(
                name="Assistant",
                instructions="Answer with the tool's help.",
                tools=[get_weather],
                model=agents.OpenAIResponsesModel(model=LLAMA, openai_client=sdk),
            )
            return await agents.Runner.run(agent, "What is the weather in Paris?")

    result = asyncio.run(run())
    assert len(called) == 1 and isinstance(called[0], str)
    assert isinstance(result.final_output, str) and result.final_output


class Verdict(BaseModel):
    title: str
    score: int
    tags: list[str]


def test_langchain_on_the_responses_api_binds_tools_and_structures_output(gateway: Proc) -> None:
    model = ChatOpenAI(
        model=LLAMA,
        base_url=gateway.url + "/v1",
        api_key=SEARCH_KEY,
        use_responses_api=True,
        max_retries=0,
    )

    def get_weather(city: str) -> str:
        """The weather in a city."""
        return f"Sunny in {city}"

    message = model.bind_tools([get_weather]).invoke("Weather in Lima?")
    [call] = message.tool_calls
    assert call["name"] == "get_weather" and isinstance(call["args"]["city"], str)
    verdict = model.with_structured_output(Verdict).invoke("Rate this gateway")
    assert isinstance(verdict, Verdict)

"""The official openai client against the translation layer, in-process: a stand-in route
(`Route`: to_chat, a deterministic model, from_chat or StreamTranslator, a dict for the store)
behind an httpx2 mock transport, so what the SDK sends is what `to_chat` reads and what
`from_chat` / the events give is what the SDK parses (`responses.parse`, `responses.stream`)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx2
import openai
import pytest
from pydantic import BaseModel

from gateway.errors import BadRequest, render
from gateway.responses_api import (
    StreamTranslator,
    assistant_messages,
    encode_event,
    from_chat,
    to_chat,
)
from tests.unit.responses_helpers import (
    CREATED,
    MODEL,
    WEATHER,
    check_events,
    completion,
    tool_call,
    usage_chunk,
)


class Weather(BaseModel):
    city: str
    degrees: int


def model(body: dict[str, Any]) -> dict[str, Any]:
    """A deterministic model: JSON for a schema, a tool call to a user's question when it
    has tools, a text about the tool's output after one, else a greeting."""
    last = body["messages"][-1]
    if "response_format" in body:
        return completion(json.dumps({"city": "Paris", "degrees": 21}))
    if body.get("tools") and last["role"] == "user":
        name = body["tools"][0]["function"]["name"]
        call = tool_call(f"call_{len(body['messages'])}", name, '{"city": "Paris"}')
        return completion(None, finish="tool_calls", tool_calls=[call], reasoning="A tool.")
    if last["role"] == "tool":
        return completion(f"It is {last['content']}.")
    images = sum(isinstance(p, dict) and p.get("type") == "image_url" for p in last["content"])
    return completion("Hello" + " and an image" * images)


def chunks(chat: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """A whole completion as upstream streams it: small pieces, then the usage chunk."""
    message, finish = chat["choices"][0]["message"], chat["choices"][0]["finish_reason"]

    def piece(delta: dict[str, Any], reason: str | None = None) -> dict[str, Any]:
        return {"model": MODEL, "choices": [{"index": 0, "delta": delta, "finish_reason": reason}]}

    yield piece({"role": "assistant", "content": ""})
    for key in ("reasoning", "content"):
        text = message.get(key) or ""
        for at in range(0, len(text), 3):
            yield piece({key: text[at : at + 3]})
    for index, call in enumerate(message.get("tool_calls") or []):
        arguments = call["function"]["arguments"]
        head = {"index": index, "id": call["id"], "type": "function"}
        yield piece(
            {
                "tool_calls": [
                    {**head, "function": {"name": call["function"]["name"], "arguments": ""}}
                ]
            }
        )
        for at in range(0, len(arguments), 4):
            fragment = {"index": index, "function": {"arguments": arguments[at : at + 4]}}
            yield piece({"tool_calls": [fragment]})
    yield piece({}, finish)
    yield usage_chunk()


class Route:
    """What the real route will do, minus auth, limits and the proxy."""

    def __init__(self) -> None:
        self.stored: dict[str, list[dict[str, Any]]] = {}
        self.upstream: list[dict[str, Any]] = []

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        body = json.loads(request.content)
        try:
            previous = body.get("previous_response_id")
            plan = to_chat(body, self.stored[previous] if previous else None)
        except BadRequest as error:
            status, _, content = render(error)
            return httpx2.Response(
                status, content=content, headers={"content-type": "application/json"}
            )
        self.upstream.append(plan.body)
        response_id = f"resp_{len(self.upstream)}"
        chat = model(plan.body)
        if plan.stream:
            translator = StreamTranslator(plan, response_id=response_id, created_at=CREATED)
            events = translator.start()
            for c in chunks(chat):
                events += translator.feed(c)
            events += translator.finish(completed_at=CREATED + 1)
            check_events(events)
            assert translator.response is not None
            response = translator.response
            answer = httpx2.Response(
                200,
                content=b"".join(encode_event(e) for e in events),
                headers={"content-type": "text/event-stream"},
            )
        else:
            response = from_chat(plan, chat, response_id=response_id, created_at=CREATED)
            answer = httpx2.Response(200, json=response)
        if plan.store:
            self.stored[response_id] = plan.conversation(assistant_messages(response))
        return answer


@pytest.fixture
def route() -> Route:
    return Route()


@pytest.fixture
def client(route: Route) -> Iterator[openai.OpenAI]:
    http = httpx2.Client(transport=httpx2.MockTransport(route))
    with openai.OpenAI(
        base_url="http://gateway.test/v1", api_key="sk-test", max_retries=0, http_client=http
    ) as sdk:
        yield sdk


def test_string_input_and_instructions(client: openai.OpenAI, route: Route) -> None:
    response = client.responses.create(model=MODEL, input="Hi", instructions="Be brief.")
    assert response.output_text == "Hello"
    assert response.instructions == "Be brief."
    assert route.upstream[0]["messages"][0] == {"role": "system", "content": "Be brief."}


def test_item_input_with_an_image(client: openai.OpenAI) -> None:
    content: Any = [
        {"type": "input_text", "text": "What is in it?"},
        {
            "type": "input_image",
            "image_url": "data:image/png;base64,iVBORw0KGgo=",
            "detail": "auto",
        },
    ]
    response = client.responses.create(model=MODEL, input=[{"role": "user", "content": content}])
    assert response.output_text == "Hello and an image"


def test_parse_structured_output(client: openai.OpenAI, route: Route) -> None:
    response = client.responses.parse(model=MODEL, input="Weather?", text_format=Weather)
    assert response.output_parsed == Weather(city="Paris", degrees=21)
    assert route.upstream[0]["response_format"]["json_schema"]["name"] == "Weather"


def test_function_calling_by_previous_response_id(client: openai.OpenAI, route: Route) -> None:
    first = client.responses.create(model=MODEL, input="Weather in Paris?", tools=[WEATHER])
    [call] = [item for item in first.output if item.type == "function_call"]
    assert (call.name, json.loads(call.arguments)) == ("get_weather", {"city": "Paris"})
    output: Any = {"type": "function_call_output", "call_id": call.call_id, "output": "21 degrees"}
    second = client.responses.create(
        model=MODEL, input=[output], tools=[WEATHER], previous_response_id=first.id
    )
    assert second.output_text == "It is 21 degrees."
    assert second.previous_response_id == first.id
    sent = route.upstream[1]["messages"]
    assert sent[1]["tool_calls"][0]["id"] == sent[2]["tool_call_id"] == call.call_id


def test_function_calling_by_items(client: openai.OpenAI, route: Route) -> None:
    question: Any = {"role": "user", "content": "Weather in Paris?"}
    first = client.responses.create(model=MODEL, input=[question], tools=[WEATHER], store=False)
    [call] = [item for item in first.output if item.type == "function_call"]
    output: Any = {"type": "function_call_output", "call_id": call.call_id, "output": "21 degrees"}
    given = [question, *first.output, output]
    second = client.responses.create(model=MODEL, input=given, tools=[WEATHER])
    assert second.output_text == "It is 21 degrees."
    assert route.stored.keys() == {"resp_2"}
    by_id = to_chat(
        {"model": MODEL, "input": [output]}, [question, *assistant_messages(first.to_dict())]
    )
    assert route.upstream[1]["messages"] == by_id.body["messages"]


def test_stream_text_to_its_final_response(client: openai.OpenAI) -> None:
    with client.responses.stream(model=MODEL, input="Hi") as stream:
        texts = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(texts) == final.output_text == "Hello"
    assert final.status == "completed" and final.usage is not None
    assert final.usage.output_tokens_details.reasoning_tokens == 5


def test_stream_a_tool_call_and_its_answer(client: openai.OpenAI) -> None:
    with client.responses.stream(model=MODEL, input="Weather?", tools=[WEATHER]) as stream:
        final = stream.get_final_response()
    assert [item.type for item in final.output] == ["reasoning", "function_call"]
    call = final.output[1]
    assert call.parsed_arguments == {"city": "Paris"}
    output: Any = {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}
    with client.responses.stream(
        model=MODEL, input=[output], tools=[WEATHER], previous_response_id=final.id
    ) as stream:
        assert stream.get_final_response().output_text == "It is sunny."


def test_stream_parse_structured_output(client: openai.OpenAI) -> None:
    with client.responses.stream(model=MODEL, input="Weather?", text_format=Weather) as stream:
        final = stream.get_final_response()
    assert final.output_parsed == Weather(city="Paris", degrees=21)


def test_raw_event_stream(client: openai.OpenAI) -> None:
    events = list(client.responses.create(model=MODEL, input="Hi", stream=True))
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    assert events[-1].response.output_text == "Hello"


def test_refusals_reach_the_sdk_as_bad_requests(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(model=MODEL, input="Hi", tools=[{"type": "web_search"}])
    assert info.value.param == "tools[0].type"
    assert "function tools" in info.value.message
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(model=MODEL, input="Hi", background=True)
    assert info.value.param == "background"

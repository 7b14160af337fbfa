"""The fake's schema-driven answers: values from JSON schemas, and the form an answer takes."""

from __future__ import annotations

import contextlib
import enum
import random
from typing import Any, Literal

import jsonschema  # type: ignore[import-untyped]
import openai
import pytest
from pydantic import BaseModel, Field

from gateway.testing.errors import BadRequest
from gateway.testing.schema_values import MAX_NODES, SchemaError, instance
from gateway.testing.structured import Shape, ToolCall, shape

# --- values from schemas ---------------------------------------------------------------------


class Colour(enum.StrEnum):
    RED = "red"
    BLUE = "blue"


class Address(BaseModel):
    street: str
    postcode: str = Field(min_length=5, max_length=5)


class Node(BaseModel):
    label: str
    children: list[Node] = []
    parent: Node | None = None


class Person(BaseModel):
    name: str
    age: int = Field(ge=18, le=99)
    share: float = Field(gt=0, lt=1)
    colour: Colour
    home: Address
    tags: list[str] = Field(min_length=2, max_length=3)
    nickname: str | None = None
    kind: Literal["a", "b"]
    tree: Node
    email: str = Field(json_schema_extra={"format": "email"})
    pair: tuple[int, str]
    scores: dict[str, int] = {}


def strict_schema() -> Any:
    """What the openai SDK sends for the model (``strict``: every property required)."""
    return openai.pydantic_function_tool(Person)["function"]["parameters"]  # type: ignore[typeddict-item]


@pytest.mark.parametrize("make", [Person.model_json_schema, strict_schema])
def test_pydantic_schemas_give_valid_documents(make: Any) -> None:
    schema = make()
    value = instance(schema)
    jsonschema.validate(value, schema)
    person = Person.model_validate(value)
    assert person.colour is Colour.RED
    assert person.nickname == "fake nickname"  # optional fields are filled too
    assert len(person.tags) == 2 and person.tags[0] != person.tags[1]
    assert instance(schema) == value  # deterministic


@pytest.mark.parametrize(
    ("schema", "expected"),
    [
        ({"type": "string"}, "fake value"),
        ({"type": "string", "minLength": 14}, "fake valuexxxx"),
        ({"type": "string", "maxLength": 3}, "fak"),
        ({"type": "string", "format": "date"}, "2025-01-01"),
        ({"type": "string", "format": "date-time"}, "2025-01-01T12:00:00Z"),
        ({"type": "string", "format": "email"}, "fake@example.com"),
        ({"type": "string", "format": "uri"}, "https://example.com/fake"),
        ({"type": "integer"}, 1),
        ({"type": "integer", "minimum": 5, "maximum": 9}, 5),
        ({"type": "integer", "exclusiveMinimum": 5}, 6),
        (
            {
                "$schema": "http://json-schema.org/draft-04/schema#",
                "type": "integer",
                "minimum": 5,
                "exclusiveMinimum": True,
            },
            6,
        ),
        ({"type": "integer", "maximum": -3}, -3),
        ({"type": "integer", "minimum": 4, "multipleOf": 3}, 6),
        ({"type": "number"}, 1.5),
        ({"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1}, 0.5),
        ({"type": "number", "maximum": 1}, 1.0),
        ({"type": "boolean"}, True),
        ({"type": "null"}, None),
        ({"const": "fixed"}, "fixed"),
        ({"enum": [3, "x"]}, 3),
        ({"type": ["null", "integer"]}, 1),
        ({"anyOf": [{"type": "boolean"}, {"type": "string"}]}, True),
        ({"oneOf": [{"type": "integer"}, {"type": "string"}]}, 1),
        ({}, "fake value"),
        (True, "fake value"),
        ({"type": "array", "items": {"type": "integer"}}, [1]),
        ({"type": "array", "items": {"type": "integer"}, "minItems": 3}, [1, 2, 3]),
        ({"type": "array", "items": {"enum": ["a", "b"]}, "minItems": 3}, ["a", "b", "a"]),
        ({"type": "array", "maxItems": 0}, []),
        ({"type": "array", "prefixItems": [{"type": "integer"}, {"type": "boolean"}]}, [1]),
        (
            {
                "type": "array",
                "prefixItems": [{"type": "integer"}, {"type": "null"}],
                "minItems": 2,
            },
            [1, None],
        ),
        ({"type": "object"}, {}),
        ({"properties": {"b": {"type": "integer"}, "a": {}}}, {"b": 1, "a": "fake a"}),
        ({"type": "object", "required": ["x"]}, {"x": "fake x"}),
        (
            {
                "$defs": {"Id": {"type": "integer", "minimum": 7}},
                "type": "object",
                "properties": {"id": {"$ref": "#/$defs/Id"}},
            },
            {"id": 7},
        ),
        (
            {"definitions": {"S": {"type": "string"}}, "$ref": "#/definitions/S", "maxLength": 4},
            "fake",
        ),
        (
            {
                "allOf": [
                    {"properties": {"a": {"type": "integer"}}, "required": ["a"]},
                    {"properties": {"b": {"type": "boolean"}}},
                ]
            },
            {"a": 1, "b": True},
        ),
    ],
)
def test_values_follow_the_documented_rules(schema: Any, expected: Any) -> None:
    value = instance(schema)
    assert value == expected
    assert type(value) is type(expected)
    if isinstance(schema, dict):
        jsonschema.validate(value, schema)


def test_recursion_ends_below_the_soft_depth() -> None:
    schema = Node.model_json_schema()
    value = instance(schema)
    jsonschema.validate(value, schema)
    depth, node = 0, value
    while node.get("children"):
        node, depth = node["children"][0], depth + 1
    assert 0 < depth < 6


def nested(keyword: str, depth: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "null"}
    for _ in range(depth):
        schema = {keyword: [schema]}
    return schema


@pytest.mark.parametrize(
    "schema",
    [
        False,
        [1, 2],
        {"$ref": "#/$defs/Missing"},
        {"$ref": "https://example.com/schema.json"},
        {"$ref": "#"},  # a cycle of references, with nothing in between
        {"type": "object", "properties": {"me": {"$ref": "#"}}, "required": ["me"]},
        {"type": "array", "items": {"type": "integer"}, "minItems": MAX_NODES + 1},
        {"type": "string", "minLength": 10**9},
        {"type": "array", "minItems": 80, "items": {"type": "array", "minItems": 80}},
        nested("anyOf", 5000),
        nested("allOf", 5000),
        {
            "$defs": {"T": {"items": {"$ref": "#/$defs/T"}, "minItems": 2}},
            "$ref": "#/$defs/T",
        },
    ],
)
def test_schemas_it_cannot_fill(schema: Any) -> None:
    with pytest.raises(SchemaError):
        instance(schema)


def junk(rng: random.Random, depth: int = 0) -> Any:
    """A random JSON value built mostly from schema keywords: for the generator's robustness."""
    words = ["type", "properties", "items", "enum", "$ref", "anyOf", "allOf", "minItems"]
    words += ["required", "const", "minimum", "maxLength", "prefixItems", "format", "string"]
    words += ["object", "array", "integer", "number", "null", "#", "#/properties/a", "a"]
    choice = rng.randrange(7 if depth < 4 else 4)
    if choice == 0:
        return rng.choice(words)
    if choice == 1:
        return rng.choice([None, True, False, -1, 0, 2, 1.5, float("1e300")])
    if choice in (2, 3):
        return rng.choice(["string", "integer", "object", "array", ["null", "string"]])
    if choice == 4:
        return [junk(rng, depth + 1) for _ in range(rng.randrange(3))]
    return {rng.choice(words): junk(rng, depth + 1) for _ in range(rng.randrange(4))}


def test_any_json_gives_a_value_or_a_schema_error() -> None:
    rng = random.Random(14)
    for _ in range(3000):
        with contextlib.suppress(SchemaError):
            instance(junk(rng))


# --- the answer's form -----------------------------------------------------------------------

WORDS = "Hello from the fake W&B upstream for testing"
USER = [{"role": "user", "content": "Hi"}]
NUMBER_TOOL = {
    "type": "function",
    "function": {
        "name": "number",
        "parameters": {
            "type": "object",
            "required": ["n"],
            "properties": {"n": {"type": "integer"}},
        },
    },
}
EMPTY_TOOL = {"type": "function", "function": {"name": "empty"}}


def form(messages: list[Any] = USER, **body: Any) -> Shape:
    return shape({"model": "m", "messages": messages, **body}, messages, WORDS)


def test_no_tools_no_format_gives_the_usual_words() -> None:
    assert form() == Shape()
    assert form(response_format={"type": "text"}) == Shape()


@pytest.mark.parametrize(
    ("tool_choice", "name", "arguments"),
    [
        (None, "number", '{"n":1}'),
        ("auto", "number", '{"n":1}'),
        ("required", "number", '{"n":1}'),
        ({"type": "function", "function": {"name": "empty"}}, "empty", "{}"),
    ],
)
def test_a_user_message_last_gets_a_tool_call(tool_choice: Any, name: str, arguments: str) -> None:
    extra = {} if tool_choice is None else {"tool_choice": tool_choice}
    got = form(tools=[NUMBER_TOOL, EMPTY_TOOL], **extra)
    assert got.tool_call is not None
    assert got.tool_call.name == name
    assert got.tool_call.id.startswith("call_") and len(got.tool_call.id) == 5 + 24
    assert got.document == arguments


def test_the_call_id_is_the_requests() -> None:
    first = form(tools=[NUMBER_TOOL]).tool_call
    assert first == form(tools=[NUMBER_TOOL], stream=True, x_fake={"tokens": 3}).tool_call
    other = form([{"role": "user", "content": "Hi again"}], tools=[NUMBER_TOOL]).tool_call
    assert isinstance(other, ToolCall) and other.id != first.id  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "messages",
    [
        [*USER, {"role": "assistant", "content": None}, {"role": "tool", "content": "42"}],
        [{"role": "system", "content": "Be brief"}],
        [],
    ],
)
def test_a_tool_result_last_gets_text(messages: list[Any]) -> None:
    assert form(messages, tools=[NUMBER_TOOL], tool_choice="required") == Shape()


def test_tool_choice_none_gets_text_or_the_format() -> None:
    assert form(tools=[NUMBER_TOOL], tool_choice="none") == Shape()
    got = form(tools=[NUMBER_TOOL], tool_choice="none", response_format={"type": "json_object"})
    assert got == Shape(document='{"answer":"Hello from the fake W&B upstream for testing"}')


def test_response_formats() -> None:
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}}
    wanted = {"type": "json_schema", "json_schema": {"name": "r", "schema": schema, "strict": True}}
    assert form(response_format=wanted) == Shape(document='{"ok":true}')
    bare = {"type": "json_schema", "json_schema": {"name": "r"}}
    assert form(response_format=bare) == form(response_format={"type": "json_object"})


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"tools": {"type": "function"}}, "tools"),
        ({"tools": [{"type": "web_search"}]}, "tools"),
        ({"tools": [{"type": "function", "function": {"parameters": {}}}]}, "tools"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": 3}}]}, "tools"),
        ({"tools": [NUMBER_TOOL], "tool_choice": "sometimes"}, "tool_choice"),
        ({"tools": [NUMBER_TOOL], "tool_choice": {"type": "function"}}, "tool_choice"),
        (
            {
                "tools": [NUMBER_TOOL],
                "tool_choice": {"type": "function", "function": {"name": "x"}},
            },
            "tool_choice",
        ),
        ({"response_format": {"type": "yaml"}}, "response_format"),
        ({"response_format": "json"}, "response_format"),
        ({"response_format": {"type": "json_schema", "json_schema": {}}}, "response_format"),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "r", "schema": 1}}},
            "response_format",
        ),
        (
            {
                "tools": [
                    {"type": "function", "function": {"name": "f", "parameters": {"$ref": "#/x"}}}
                ]
            },
            "tools",
        ),
    ],
)
def test_what_it_refuses(body: dict[str, Any], param: str) -> None:
    with pytest.raises(BadRequest) as refused:
        form(**body)
    assert refused.value.param == param

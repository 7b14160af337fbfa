"""What a chat request asks the fake to answer with: the usual words, a tool call, or JSON.

Decided from the body, in this order:

1. **A tool call** when ``tools`` holds function tools, the last message's ``role`` is
   ``"user"`` and ``tool_choice`` is not ``"none"``: for the tool ``tool_choice`` names
   (``{"type": "function", "function": {"name": ...}}``), else for the first one (``"auto"``,
   ``"required"`` or no ``tool_choice``). Its ``arguments`` are the compact JSON of
   ``schema_values.instance(function.parameters)`` (``{}`` without ``parameters``); its ``id``
   is ``call_`` and 24 hex digits of a SHA-256 over the model, messages, tools and tool_choice,
   so the same request gets the same id, streamed or not. One call: ``parallel_tool_calls`` is
   ignored. When the last message is a ``tool`` result (or anything but the user's), the fake
   answers as in 2, so a tool loop always ends.
2. **By ``response_format``**: ``json_schema`` answers with the compact JSON of
   ``instance(json_schema.schema)``; ``json_object`` (or a ``json_schema`` without ``schema``)
   with ``{"answer": "<the usual words>"}``; ``text``, or no ``response_format``, with the usual
   words (``completions.text_words``).

JSON is written compact (``","`` and ``":"``, no spaces) and ASCII (``\\u`` escapes).
Refused with a 400 naming the field: ``tools`` that are not a list of ``{"type": "function",
"function": {"name": str, "parameters": object}}``, a ``tool_choice`` that is none of the
above or names no given tool, a ``response_format`` of another type, a ``json_schema`` without
a ``name``, and a schema ``schema_values`` cannot fill (``SchemaError``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from gateway.testing.errors import BadRequest
from gateway.testing.schema_values import SchemaError, instance


@dataclass(frozen=True)
class ToolCall:
    """The one function call the fake answers with; its arguments are ``Shape.document``."""

    id: str
    name: str


@dataclass(frozen=True)
class Shape:
    """The answer's form: ``document`` is the JSON text (the call's arguments, or the content);
    None means the usual words."""

    tool_call: ToolCall | None = None
    document: str | None = None


def _dump(value: object) -> str:
    return json.dumps(value, separators=(",", ":"))


def _functions(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The ``function`` objects of ``tools``, checked; [] without tools."""
    tools = body.get("tools")
    if tools is None:
        return []
    bad = BadRequest(
        "'tools' must be a list of {'type': 'function', 'function': {'name': ..., "
        "'parameters': {...}}}",
        "tools",
    )
    if not isinstance(tools, list):
        raise bad
    functions = []
    for tool in tools:
        if not isinstance(tool, dict) or tool.get("type") != "function":
            raise bad
        function = tool.get("function")
        if not isinstance(function, dict):
            raise bad
        name, parameters = function.get("name"), function.get("parameters")
        if not isinstance(name, str) or not (parameters is None or isinstance(parameters, dict)):
            raise bad
        functions.append(function)
    return functions


def _chosen(body: dict[str, Any], functions: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The function to call by ``tool_choice``; None for ``"none"`` or without tools."""
    choice = body.get("tool_choice")
    if choice in (None, "auto", "required"):
        return functions[0] if functions else None
    if choice == "none":
        return None
    named = choice.get("function") if isinstance(choice, dict) else None
    name = named.get("name") if isinstance(named, dict) else None
    if not isinstance(choice, dict) or choice.get("type") != "function" or name is None:
        raise BadRequest(
            "'tool_choice' must be 'none', 'auto', 'required' or "
            "{'type': 'function', 'function': {'name': ...}}",
            "tool_choice",
        )
    for function in functions:
        if function["name"] == name:
            return function
    raise BadRequest(f"'tool_choice' names {name!r:.80}, which is not in 'tools'", "tool_choice")


def _call_id(body: dict[str, Any]) -> str:
    asked = {k: body.get(k) for k in ("model", "messages", "tools", "tool_choice")}
    digest = hashlib.sha256(json.dumps(asked, sort_keys=True).encode()).hexdigest()
    return "call_" + digest[:24]


def _filled(schema: object, param: str) -> str:
    try:
        return _dump(instance(schema))
    except SchemaError as exc:
        raise BadRequest(f"'{param}' has a schema the fake cannot fill: {exc}", param) from None


def _document(body: dict[str, Any], words: str) -> str | None:
    """The JSON content ``response_format`` asks for; None for text."""
    wanted = body.get("response_format")
    kind = wanted.get("type") if isinstance(wanted, dict) else None
    if wanted is None or kind == "text":
        return None
    if kind == "json_object":
        return _dump({"answer": words})
    spec = wanted.get("json_schema") if isinstance(wanted, dict) else None
    if kind != "json_schema" or not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise BadRequest(
            "'response_format' must be {'type': 'text'}, {'type': 'json_object'} or "
            "{'type': 'json_schema', 'json_schema': {'name': ..., 'schema': {...}}}",
            "response_format",
        )
    if spec.get("schema") is None:
        return _dump({"answer": words})
    return _filled(spec["schema"], "response_format")


def shape(body: dict[str, Any], messages: list[Any], words: str) -> Shape:
    """The answer's form for ``body`` (rules in the module docstring); ``words`` is the usual
    text, which a ``json_object`` answer wraps. ``BadRequest`` for what it refuses."""
    try:
        return _shape(body, messages, words)
    except RecursionError:  # tools as deep as the JSON parser allows, hashed for the call's id
        raise BadRequest("'tools' is nested too deeply", "tools") from None


def _shape(body: dict[str, Any], messages: list[Any], words: str) -> Shape:
    function = _chosen(body, _functions(body))
    last = messages[-1] if messages else None
    by_user = isinstance(last, dict) and last.get("role") == "user"
    document = _document(body, words)  # checked even when a tool call answers
    if function is None or not by_user:
        return Shape(document=document)
    arguments = _filled(function.get("parameters") or {"type": "object"}, "tools")
    return Shape(tool_call=ToolCall(_call_id(body), function["name"]), document=arguments)

"""`tools`, `tool_choice` and `text` -> their chat completions forms, and the Responses forms the
response object echoes.

- Function tools only: `{"type": "function", "name", "description", "parameters", "strict"}`
  -> `{"type": "function", "function": {...}}` (`description`, `parameters` and `strict` only
  when given); other keys (`output_schema`, `allowed_callers`...) are not sent. A deferred
  (`defer_loading`) or `async` tool needs OpenAI's tool search or programs, and is refused.
  Every other tool type is an OpenAI built-in (web search, file search, code interpreter,
  computer use, image generation, MCP, shell, apply patch...) or a custom tool: refused.
- `tool_choice`: not sent when not given (upstream's default is auto); `auto` / `none` /
  `required` as they are (no tools: nothing sent, `required` refused);
  `{"type": "function", "name"}` -> `{"type": "function", "function": {"name"}}`;
  `{"type": "allowed_tools", "mode", "tools"}` -> only those function tools sent, with `mode`
  as the choice. Built-in tool choices refused.
- `text.format`: `text` (nothing sent), `json_object`, `json_schema` (`name`, `schema`,
  `strict`, `description`) -> `response_format`; `text.verbosity` accepted, echoed, not sent.
"""

from __future__ import annotations

from collections.abc import Mapping

from gateway.responses_api.checks import (
    JSON,
    as_list,
    as_object,
    as_str,
    at,
    one_of,
    opt_bool,
    opt_object,
    opt_str,
    refuse,
    required,
)

_CHOICES = ("auto", "none", "required")
_VERBOSITY = ("low", "medium", "high")


def chat_tools(value: object) -> tuple[list[JSON], list[JSON]]:
    """`tools` as chat tools, and as the response echoes them."""
    chat: list[JSON] = []
    echo: list[JSON] = []
    names: set[str] = set()
    for index, raw in enumerate(as_list(value, "tools")):
        path = at("tools", index)
        tool = as_object(raw, path)
        _function_only(tool, path)
        name = as_str(required(tool, "name", path), at(path, "name"))
        if name in names:
            refuse(f"Invalid 'tools': two function tools are named '{name}'.", path)
        names.add(name)
        function: JSON = {"name": name}
        description = opt_str(tool, "description", path)
        if description is not None:
            function["description"] = description
        parameters = opt_object(tool, "parameters", path)
        if parameters is not None:
            function["parameters"] = dict(parameters)
        strict = opt_bool(tool, "strict", path)
        if strict is not None:
            function["strict"] = strict
        chat.append({"type": "function", "function": function})
        echo.append({"type": "function", "description": None, "parameters": None, "strict": None})
        echo[-1].update(function)
    return chat, echo


def _function_only(tool: Mapping[str, object], path: str) -> None:
    kind = as_str(required(tool, "type", path), at(path, "type"))
    if kind != "function":
        refuse(
            f"Tools of type '{kind}' are not supported: the gateway supports function tools "
            '({"type": "function", "name", "parameters"}) only; OpenAI\'s built-in and custom '
            "tools cannot run on W&B Inference.",
            at(path, "type"),
        )
    for key in ("defer_loading", "async"):
        if opt_bool(tool, key, path):
            refuse(
                f"Function tools with '{key}: true' are not supported: the gateway sends every "
                "function tool to the model, to be called in its answer.",
                at(path, key),
            )


def chat_tool_choice(
    value: object, tools: list[JSON]
) -> tuple[str | JSON | None, list[JSON], str | JSON]:
    """`tool_choice` as the chat choice (None: send none), the chat tools to send, and the
    choice as the response echoes it."""
    names = {tool["function"]["name"] for tool in tools}
    if value is None:
        return None, tools, "auto"
    if isinstance(value, str):
        choice = one_of(value, _CHOICES, "tool_choice")
        if choice == "required" and not tools:
            refuse("tool_choice 'required' needs function tools in 'tools'.", "tool_choice")
        return (choice if tools else None), tools, choice
    obj = as_object(value, "tool_choice")
    kind = as_str(required(obj, "type", "tool_choice"), "tool_choice.type")
    if kind == "function":
        name = as_str(required(obj, "name", "tool_choice"), "tool_choice.name")
        _known(name, names, "tool_choice.name")
        return {"type": "function", "function": {"name": name}}, tools, dict(obj)
    if kind == "allowed_tools":
        return _allowed(obj, tools, names)
    refuse(
        f"tool_choice of type '{kind}' is not supported: the gateway supports 'auto', 'none', "
        '\'required\', a function ({"type": "function", "name"}) and allowed_tools of '
        "function tools.",
        "tool_choice.type",
    )


def _known(name: str, names: set[str], param: str) -> None:
    if name not in names:
        refuse(f"Invalid '{param}': '{name}' is not one of the function tools in 'tools'.", param)


def _allowed(
    obj: Mapping[str, object], tools: list[JSON], names: set[str]
) -> tuple[str, list[JSON], JSON]:
    mode = one_of(
        as_str(required(obj, "mode", "tool_choice"), "tool_choice.mode"),
        ("auto", "required"),
        "tool_choice.mode",
    )
    allowed: set[str] = set()
    for index, raw in enumerate(
        as_list(required(obj, "tools", "tool_choice"), "tool_choice.tools")
    ):
        path = at("tool_choice.tools", index)
        entry = as_object(raw, path)
        _function_only({"type": entry.get("type")}, path)
        name = as_str(required(entry, "name", path), at(path, "name"))
        _known(name, names, at(path, "name"))
        allowed.add(name)
    kept = [tool for tool in tools if tool["function"]["name"] in allowed]
    if not kept:
        refuse(
            "tool_choice allowed_tools needs at least one of the tools in 'tools'.", "tool_choice"
        )
    return mode, kept, dict(obj)


def chat_format(value: object) -> tuple[JSON | None, JSON]:
    """`text` as the chat `response_format` (None: plain text), and as the response echoes it."""
    text = {} if value is None else as_object(value, "text")
    verbosity = opt_str(text, "verbosity", "text")
    echo: JSON = {"format": {"type": "text"}}
    if verbosity is not None:
        echo["verbosity"] = one_of(verbosity, _VERBOSITY, "text.verbosity")
    form = opt_object(text, "format", "text")
    if form is None:
        return None, echo
    echo["format"] = dict(form)
    kind = as_str(required(form, "type", "text.format"), "text.format.type")
    if kind == "text":
        return None, echo
    if kind == "json_object":
        return {"type": "json_object"}, echo
    if kind != "json_schema":
        one_of(kind, ("text", "json_object", "json_schema"), "text.format.type")
    schema: JSON = {
        "name": as_str(required(form, "name", "text.format"), "text.format.name"),
        "schema": dict(as_object(required(form, "schema", "text.format"), "text.format.schema")),
    }
    description = opt_str(form, "description", "text.format")
    if description is not None:
        schema["description"] = description
    strict = opt_bool(form, "strict", "text.format")
    if strict is not None:
        schema["strict"] = strict
    return {"type": "json_schema", "json_schema": schema}, echo

"""`input` items -> chat messages; the same code reads a response's own `output` back into the
assistant messages to store, so a conversation continued by `previous_response_id` and one
continued by sending the items again reach upstream as the same messages.

- A string is one user message.
- `message` items (`{"role", "content"}`, `type: "message"` optional): `user`, `system`,
  `developer` (sent as `system`: open models' chat templates know system, user, assistant and
  tool) with a string or `input_text` / `input_image` parts (images in user messages only;
  `image_url` a URL or a data URL, `detail` low/high/auto, `original` sent as high);
  `assistant` with a string or `output_text` / `refusal` parts, joined into one string (open
  models have no refusal channel: a refusal is what the model said).
- `function_call` items become an assistant message's `tool_calls`: consecutive calls, and
  calls right after an assistant message, join that one message, as upstream answered them.
- `function_call_output` items become `tool` messages; the call id must be one made before,
  in this input or in the history (OpenAI refuses the same way).
- `reasoning` items are dropped: W&B's models do not take their reasoning back.
- Anything else is refused: `item_reference` (the gateway keeps no items by id), `input_file`,
  images by `file_id`, audio, and the items of OpenAI's built-in tools.
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
    opt_str,
    refuse,
    required,
)

_ROLES = ("user", "assistant", "system", "developer")
_ITEMS = ("message", "function_call", "function_call_output", "reasoning")
_DETAILS = ("low", "high", "auto", "original")


def input_messages(value: object, calls: set[str], path: str = "input") -> list[JSON]:
    """`input` as chat messages. `calls` holds the tool call ids made so far (the history's);
    the calls this input makes are added to it."""
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    messages: list[JSON] = []
    for index, raw in enumerate(as_list(value, path)):
        item_path = at(path, index)
        item = as_object(raw, item_path)
        kind = _item_type(item, item_path)
        if kind == "message":
            messages.append(_message(item, item_path))
        elif kind == "function_call":
            _add_call(messages, _function_call(item, item_path), calls)
        elif kind == "function_call_output":
            messages.append(_call_output(item, item_path, calls))
    return messages


def history_calls(history: list[JSON]) -> set[str]:
    """The tool call ids a stored conversation made."""
    return {
        call["id"]
        for message in history
        for call in message.get("tool_calls") or ()
        if isinstance(call, dict) and isinstance(call.get("id"), str)
    }


def _item_type(item: Mapping[str, object], path: str) -> str:
    kind = item.get("type")
    if kind is None:
        if "role" in item:
            return "message"
        kind = "item_reference" if "id" in item else required(item, "type", path)
    kind = as_str(kind, at(path, "type"))
    if kind in _ITEMS:
        return kind
    if kind == "item_reference":
        refuse(
            "Item references are not supported: the gateway keeps no items by id. Send the "
            "item itself in `input`, or chain responses with `previous_response_id`.",
            at(path, "type"),
        )
    refuse(
        f"Input items of type '{kind}' are not supported: the gateway translates message, "
        "function_call, function_call_output and reasoning items (function tools only).",
        at(path, "type"),
    )


def _message(item: Mapping[str, object], path: str) -> JSON:
    role = one_of(as_str(required(item, "role", path), at(path, "role")), _ROLES, at(path, "role"))
    content = required(item, "content", path)
    content_path = at(path, "content")
    if role == "assistant":
        return {"role": "assistant", "content": _assistant_text(content, content_path)}
    chat_role = "system" if role == "developer" else role
    if isinstance(content, str):
        return {"role": chat_role, "content": content}
    parts = as_list(content, content_path)
    return {
        "role": chat_role,
        "content": [_input_part(p, at(content_path, j), role) for j, p in enumerate(parts)],
    }


def _part_type(raw: object, path: str) -> tuple[Mapping[str, object], str]:
    part = as_object(raw, path)
    return part, as_str(required(part, "type", path), at(path, "type"))


def _assistant_text(content: object, path: str) -> str:
    if isinstance(content, str):
        return content
    texts = []
    for j, raw in enumerate(as_list(content, path)):
        part_path = at(path, j)
        part, kind = _part_type(raw, part_path)
        if kind in ("output_text", "input_text"):
            texts.append(as_str(required(part, "text", part_path), at(part_path, "text")))
        elif kind == "refusal":
            texts.append(as_str(required(part, "refusal", part_path), at(part_path, "refusal")))
        else:
            refuse(
                f"Content of type '{kind}' is not supported in assistant messages: they take "
                "output_text and refusal parts.",
                at(part_path, "type"),
            )
    return "".join(texts)


def _input_part(raw: object, path: str, role: str) -> JSON:
    part, kind = _part_type(raw, path)
    if kind == "input_text":
        return {"type": "text", "text": as_str(required(part, "text", path), at(path, "text"))}
    if kind == "input_image" and role == "user":
        return _image(part, path)
    if kind == "input_image":
        refuse("Images are supported in user messages only.", at(path, "type"))
    if kind == "input_file":
        refuse(
            "File inputs (input_file) are not supported: W&B Inference takes text and images. "
            "Send the file's text as an input_text part.",
            at(path, "type"),
        )
    refuse(
        f"Content of type '{kind}' is not supported in {role} messages: they take input_text "
        "and input_image parts.",
        at(path, "type"),
    )


def _image(part: Mapping[str, object], path: str) -> JSON:
    if part.get("image_url") is None and part.get("file_id") is not None:
        refuse(
            "Images by file_id are not supported: the gateway has no file storage. Give "
            "image_url, a URL or a data URL (data:image/png;base64,...).",
            at(path, "file_id"),
        )
    image: JSON = {"url": as_str(required(part, "image_url", path), at(path, "image_url"))}
    detail = opt_str(part, "detail", path)
    if detail is not None:
        one_of(detail, _DETAILS, at(path, "detail"))
        image["detail"] = "high" if detail == "original" else detail
    return {"type": "image_url", "image_url": image}


def _function_call(item: Mapping[str, object], path: str) -> JSON:
    def text(key: str) -> str:
        return as_str(required(item, key, path), at(path, key))

    function = {"name": text("name"), "arguments": text("arguments")}
    return {"id": text("call_id"), "type": "function", "function": function}


def _add_call(messages: list[JSON], call: JSON, calls: set[str]) -> None:
    calls.add(call["id"])
    if messages and messages[-1]["role"] == "assistant":
        messages[-1].setdefault("tool_calls", []).append(call)
    else:
        messages.append({"role": "assistant", "content": None, "tool_calls": [call]})


def _call_output(item: Mapping[str, object], path: str, calls: set[str]) -> JSON:
    call_id = as_str(required(item, "call_id", path), at(path, "call_id"))
    if call_id not in calls:
        refuse(
            f"No tool call found for function call output with call_id {call_id}.",
            at(path, "call_id"),
        )
    output = required(item, "output", path)
    content = _output_text(output, at(path, "output"))
    return {"role": "tool", "tool_call_id": call_id, "content": content}


def _output_text(output: object, path: str) -> str:
    if isinstance(output, str):
        return output
    texts = []
    for j, raw in enumerate(as_list(output, path)):
        part_path = at(path, j)
        part, kind = _part_type(raw, part_path)
        if kind != "input_text":
            refuse(
                f"Function call outputs of type '{kind}' are not supported: chat completions' "
                "tool messages carry text only (a string, or input_text parts).",
                at(part_path, "type"),
            )
        texts.append(as_str(required(part, "text", part_path), at(part_path, "text")))
    return "".join(texts)

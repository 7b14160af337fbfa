"""`to_chat(request, history)`: a `POST /v1/responses` body, checked, as the chat completions body
for upstream, in a `ChatPlan`. Pure: no I/O, nothing kept.

Every top-level field is one of four kinds; any other is refused, as OpenAI refuses unknown
parameters (with a hint when it is a chat completions field: `messages`, `max_tokens`,
`response_format`, `n`, `stop`, `seed`...).

- Translated: `model`, `input` and `instructions` (a leading system message, not stored),
  `tools`, `tool_choice`, `text` (see `tools`), `max_output_tokens` (-> `max_tokens`, the cap
  every OpenAI-compatible server takes), `temperature`, `top_p`, `user`, `parallel_tool_calls`
  (sent with tools only), `reasoning.effort` (-> `reasoning_effort`, when given), `stream`
  (upstream always with `stream_options.include_usage`), `store` (default true) and
  `previous_response_id` (the caller resolves it into `history`), `metadata` (echoed, not sent).
- Accepted, checked and not sent: `include` (its known values: there is nothing to include),
  `truncation` (`auto` runs as `disabled`, which the response says: the gateway drops no input),
  `top_logprobs` 0 (more is refused: log probabilities are not translated), `service_tier`
  (W&B has one), `prompt_cache_key`, `prompt_cache_retention`, `prompt_cache_options`
  (W&B's prompt cache is automatic), `safety_identifier` (echoed), `max_tool_calls` (it bounds
  built-in tools, which are refused), `stream_options`, `image`, and in `reasoning` `summary`,
  `generate_summary`, `context`, `mode` (reasoning comes back as text, never summarized).
- Refused unless off: `background: true`, `background_options`, `conversation`, `prompt`,
  `context_management`, `moderation`, `access_programs`.
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
    opt_int,
    opt_number,
    opt_object,
    opt_str,
    refuse,
    required,
)
from gateway.responses_api.items import history_calls, input_messages
from gateway.responses_api.plan import ChatPlan
from gateway.responses_api.tools import chat_format, chat_tool_choice, chat_tools

_TRANSLATED = frozenset(
    [
        "model",
        "input",
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
    ]
)
_ACCEPTED = frozenset(
    [
        "include",
        "truncation",
        "top_logprobs",
        "service_tier",
        "prompt_cache_key",
        "prompt_cache_retention",
        "prompt_cache_options",
        "safety_identifier",
        "max_tool_calls",
        "stream_options",
        "image",
    ]
)
_REFUSED = {
    "background": "`background: true` is not supported: the gateway answers within the request "
    "(use `stream: true` for long answers).",
    "background_options": "`background_options` is not supported: the gateway has no background "
    "responses.",
    "conversation": "Conversation objects are not supported: chain responses with "
    "`previous_response_id`, or send the items in `input`.",
    "prompt": "Reusable prompts (`prompt`) are not supported: the gateway has no prompt store; "
    "send `instructions` and `input`.",
    "context_management": "`context_management` (compaction) is not supported: the gateway "
    "sends the whole conversation.",
    "moderation": "`moderation` is not supported: the gateway runs no moderation model.",
    "access_programs": "`access_programs` is not supported: it selects OpenAI access programs.",
}
_CHAT_HINTS = {
    "messages": "the Responses API takes `input` (and `instructions`)",
    "max_tokens": "use `max_output_tokens`",
    "max_completion_tokens": "use `max_output_tokens`",
    "response_format": "use `text.format`",
    "reasoning_effort": "use `reasoning.effort`",
    "verbosity": "use `text.verbosity`",
    "functions": "use `tools`",
    "function_call": "use `tool_choice`",
    "n": "a response has one answer: send several requests for several",
}
_INCLUDABLE = frozenset(
    [
        "file_search_call.results",
        "web_search_call.results",
        "web_search_call.action.sources",
        "message.input_image.image_url",
        "computer_call_output.output.image_url",
        "code_interpreter_call.outputs",
        "reasoning.encrypted_content",
        "message.output_text.logprobs",
    ]
)
_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh", "max")
_SUMMARIES = ("auto", "concise", "detailed")


def to_chat(request: Mapping[str, object], history: list[JSON] | None = None) -> ChatPlan:
    """Check a Responses request and translate it; `history` is the stored conversation of its
    `previous_response_id` (`ChatPlan.conversation` of that response). Raises `BadRequest`."""
    request = as_object(request, "body")
    _top_level(request)
    model = as_str(required(request, "model"), "model")
    if not model:
        refuse("Invalid 'model': empty string.", "model")
    stream = opt_bool(request, "stream") or False
    store = opt_bool(request, "store")
    past = list(history or [])
    calls = history_calls(past)
    given = request.get("input")
    messages = past + ([] if given is None else input_messages(given, calls))
    if not messages:
        refuse("Missing required parameter: 'input'.", "input")
    instructions = opt_str(request, "instructions")
    lead = [{"role": "system", "content": instructions}] if instructions else []
    body: JSON = {"model": model, "messages": lead + messages}
    echo = _options(request, body)
    echo.update(_accepted(request), instructions=instructions, store=store is not False)
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return ChatPlan(
        body=body,
        messages=messages,
        model=model,
        stream=stream,
        store=store is not False,
        previous_response_id=opt_str(request, "previous_response_id"),
        echo=echo,
    )


def _top_level(request: Mapping[str, object]) -> None:
    for key, value in request.items():
        if key in _TRANSLATED or key in _ACCEPTED:
            continue
        if key in _REFUSED:
            if value is None or value is False or value == []:
                continue
            refuse(_REFUSED[key], key)
        hint = _CHAT_HINTS.get(key, "it is not a Responses API parameter")
        refuse(f"Unrecognized request argument supplied: {key} ({hint}).", key)


def _options(request: Mapping[str, object], body: JSON) -> JSON:
    """Sets the chat body's tools, format and sampling; returns the echo of those fields."""
    given = request.get("tools")
    tools, tools_echo = chat_tools([] if given is None else given)
    choice, tools, choice_echo = chat_tool_choice(request.get("tool_choice"), tools)
    if tools:
        body["tools"] = tools
    if choice is not None:
        body["tool_choice"] = choice
    response_format, text_echo = chat_format(request.get("text"))
    if response_format is not None:
        body["response_format"] = response_format
    cap = opt_int(request, "max_output_tokens", minimum=1)
    sent: JSON = {
        "max_tokens": cap,
        "temperature": opt_number(request, "temperature"),
        "top_p": opt_number(request, "top_p"),
        "user": opt_str(request, "user"),
    }
    parallel = opt_bool(request, "parallel_tool_calls")
    if tools:
        sent["parallel_tool_calls"] = parallel
    effort, reasoning_echo = _reasoning(request.get("reasoning"))
    sent["reasoning_effort"] = effort
    body.update((k, v) for k, v in sent.items() if v is not None)
    return {
        "max_output_tokens": cap,
        "metadata": _metadata(request.get("metadata")),
        "parallel_tool_calls": parallel is not False,
        "previous_response_id": opt_str(request, "previous_response_id"),
        "reasoning": reasoning_echo,
        "temperature": sent["temperature"],
        "text": text_echo,
        "tool_choice": choice_echo,
        "tools": tools_echo,
        "top_p": sent["top_p"],
        "user": sent["user"],
    }


def _reasoning(value: object) -> tuple[str | None, JSON]:
    reasoning = {} if value is None else as_object(value, "reasoning")
    effort = opt_str(reasoning, "effort", "reasoning")
    if effort is not None:
        one_of(effort, _EFFORTS, "reasoning.effort")
    summaries = [opt_str(reasoning, key, "reasoning") for key in ("summary", "generate_summary")]
    for key, chosen in zip(("summary", "generate_summary"), summaries, strict=True):
        if chosen is not None:
            one_of(chosen, _SUMMARIES, at("reasoning", key))
    for key in ("context", "mode"):
        opt_str(reasoning, key, "reasoning")
    return effort, {"effort": effort, "summary": summaries[0]}


def _metadata(value: object) -> dict[str, str]:
    if value is None:
        return {}
    metadata = as_object(value, "metadata")
    if len(metadata) > 16:
        refuse("Invalid 'metadata': at most 16 key-value pairs.", "metadata")
    for key, item in metadata.items():
        if len(key) > 64:
            refuse(f"Invalid 'metadata': key '{key[:64]}...' is over 64 characters.", "metadata")
        if len(as_str(item, at("metadata", key))) > 512:
            refuse(f"Invalid 'metadata.{key}': over 512 characters.", at("metadata", key))
    return {key: str(item) for key, item in metadata.items()}


def _accepted(request: Mapping[str, object]) -> JSON:
    """Checks the fields accepted and not sent; returns the ones the response echoes."""
    given = request.get("include")
    for index, raw in enumerate(as_list([] if given is None else given, "include")):
        value = as_str(raw, at("include", index))
        if value not in _INCLUDABLE:
            one_of(value, tuple(sorted(_INCLUDABLE)), at("include", index))
    truncation = opt_str(request, "truncation")
    if truncation is not None:
        one_of(truncation, ("auto", "disabled"), "truncation")
    top_logprobs = opt_int(request, "top_logprobs")
    if top_logprobs:
        refuse(
            "Log probabilities are not supported: the gateway does not translate them; "
            "top_logprobs must be 0 or null.",
            "top_logprobs",
        )
    for key in ("service_tier", "prompt_cache_retention"):
        opt_str(request, key)
    for key in ("prompt_cache_options", "stream_options", "image"):
        opt_object(request, key)
    return {
        "background": False,
        "max_tool_calls": opt_int(request, "max_tool_calls"),
        "prompt_cache_key": opt_str(request, "prompt_cache_key"),
        "safety_identifier": opt_str(request, "safety_identifier"),
        "top_logprobs": top_logprobs,
        "truncation": "disabled",
    }

"""OpenAI's Responses API on top of chat completions: a pure translation layer (no I/O, no clock,
no HTTP). The route, the storage of conversations and the proxying live elsewhere.

    plan = to_chat(request, history=None) -> ChatPlan
        Checks a `POST /v1/responses` body (parsed JSON) and builds `plan.body`, the chat
        completions body for upstream; raises `gateway.errors.BadRequest` with `param` naming
        the field for anything it cannot translate. `history` is the stored conversation of
        `previous_response_id` (the caller resolves the id). `plan.stream`, `plan.store`,
        `plan.previous_response_id` and `plan.model` say what the caller does next.

    from_chat(plan, chat, *, response_id, created_at, completed_at=None) -> dict
        A whole chat completion (parsed) as the `response` object, as
        `openai.types.responses.Response` validates it.

    StreamTranslator(plan, *, response_id, created_at)
        .start() / .feed(chunk) / .finish(completed_at=None) / .fail(error) -> list[dict]
        Upstream's chunks in, Responses stream events out (each one as
        `openai.types.responses.ResponseStreamEvent` validates it); `.response` is the final
        object once ended, `.assistant_messages()` the answer to store.
    encode_event(event) -> bytes: one event as SSE (`event:` and `data:` lines).

    assistant_messages(response) -> list[dict]
        The chat messages of a response's output; a stored conversation is
        `plan.conversation(assistant_messages(response))` (its `messages`, without the
        `instructions`, then the answer).
    failed_response(plan, response_id, created_at, error) -> dict
        A `status: "failed"` response object; `error` a `GatewayError` or an error envelope's
        inner object, its code mapped by `response_error` onto `ResponseError`'s closed list.

What is translated, accepted and ignored, or refused is documented where it is decided:
`request` (top-level fields), `items` (`input`), `tools` (`tools`, `tool_choice`, `text`),
`answer` (output items, ids, statuses), `response` (usage, errors), `stream` (events).
"""

from gateway.responses_api.plan import ChatPlan
from gateway.responses_api.request import to_chat
from gateway.responses_api.response import (
    assistant_messages,
    failed_response,
    from_chat,
    response_error,
)
from gateway.responses_api.stream import StreamTranslator, encode_event

__all__ = [
    "ChatPlan",
    "StreamTranslator",
    "assistant_messages",
    "encode_event",
    "failed_response",
    "from_chat",
    "response_error",
    "to_chat",
]

"""`ChatPlan`: what `to_chat` decided for one `POST /v1/responses`, and all the rest of the
translation needs from the request."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

JSON = dict[str, Any]


@dataclass(frozen=True)
class ChatPlan:
    """One Responses request, translated.

    `body` is the chat completions body for upstream (`model` as the client sent it: aliases
    are the chat path's business). `messages` is the conversation so far as chat messages, the
    stored `history` first, then this request's `input`, and never the `instructions` (OpenAI:
    they do not carry over to the next response): after the answer, a stored response keeps
    `messages + assistant_messages(response)`. `echo` holds the request's fields the response
    object repeats (`instructions`, `metadata`, `tools` in the Responses shape, `tool_choice`,
    `text`, ...).
    """

    body: JSON
    messages: list[JSON]
    model: str
    stream: bool
    store: bool
    previous_response_id: str | None
    echo: JSON = field(default_factory=dict)

    def conversation(self, assistant: list[JSON]) -> list[JSON]:
        """What to store for `previous_response_id`: this turn's messages, then the answer's."""
        return [*self.messages, *assistant]

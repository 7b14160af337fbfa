"""`StreamTranslator`: upstream's chat completion chunks in, Responses stream events out.

Fed one parsed chunk per `data:` event (`feed`), then `finish()` on `[DONE]`, or `fail(error)`
when the stream broke; each call returns the events to send, in order, numbered by
`sequence_number` from 0. `start()` gives `response.created` and `response.in_progress` before
the first chunk (`feed` calls it when the caller did not).

Items open as their first delta arrives, in that order, each with `response.output_item.added`:

- reasoning (`delta.reasoning_content`, else `delta.reasoning`): a `reasoning` item with one
  `reasoning_text` part (`response.content_part.added`, `response.reasoning_text.delta`...);
- text and refusal (`delta.content`, `delta.refusal`): a `message` item, one `output_text` or
  `refusal` part per run of the same kind (`response.output_text.delta` / `refusal.delta`);
- tool calls, by their chunk `index`: a `function_call` item with empty arguments, as soon as
  the call's name is known (fragments before it are held), then
  `response.function_call_arguments.delta` per fragment.

A reasoning or message item is done (its `.done` events, `response.content_part.done`,
`response.output_item.done`) when another item opens; a later delta of its kind opens a new
item. Tool calls stay open until the end, so a late fragment is never lost; `finish()` closes
what is open, in output order, and ends with `response.completed` (or `response.incomplete`,
finish reason `length` or `content_filter`) carrying `response`, the object built by the same
code as a whole answer's, with the usage of the final usage chunk. `fail()` ends with
`response.failed`: the items produced so far, those unfinished `incomplete`, no done events.
A chunk that is an error (`{"error": {...}}`, no choices) fails the stream. After the end,
every call returns no events.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.errors import GatewayError
from gateway.responses_api.answer import (
    Answer,
    FunctionCall,
    Item,
    Message,
    Part,
    Reasoning,
    call_id,
    item_id,
    reasoning_text,
    render_item,
    render_part,
)
from gateway.responses_api.checks import JSON
from gateway.responses_api.items import history_calls
from gateway.responses_api.plan import ChatPlan
from gateway.responses_api.response import assistant_messages, build, failed_response


def encode_event(event: Mapping[str, Any]) -> bytes:
    """One event as OpenAI sends it: `event: <type>` and `data: <json>`."""
    return b"event: %s\ndata: %s\n\n" % (str(event["type"]).encode(), orjson.dumps(event))


@dataclass
class _Call:
    """A tool call being streamed: its item once its name is known."""

    id: str | None = None
    name: str | None = None
    held: str = ""
    item: FunctionCall | None = None


class StreamTranslator:
    """One streamed response: see the module's docstring for what it emits when."""

    def __init__(self, plan: ChatPlan, *, response_id: str, created_at: int) -> None:
        self._plan = plan
        self._id = response_id
        self._created_at = created_at
        self._answer = Answer()
        self._events: list[JSON] = []
        self._sequence = 0
        self._started = False
        self._text: Reasoning | Message | None = None  # the reasoning or message item open
        self._calls: dict[int, _Call] = {}
        self._call_ids: set[str] = history_calls(plan.messages)  # ids the conversation used
        self._indexes: dict[str, int] = {}
        self.response: JSON | None = None  # the final response object, once ended

    @property
    def finished(self) -> bool:
        return self.response is not None

    def assistant_messages(self) -> list[JSON]:
        """The answer as the chat messages to store (`ChatPlan.conversation`); none before
        the end."""
        return [] if self.response is None else assistant_messages(self.response)

    def start(self) -> list[JSON]:
        self._begin()
        return self._drain()

    def feed(self, chunk: Mapping[str, Any]) -> list[JSON]:
        """One upstream chunk (a parsed `data:` event)."""
        if self.finished:
            return []
        self._begin()
        error = chunk.get("error")
        if error is not None and not chunk.get("choices"):
            return self.fail(error if isinstance(error, dict) else {"message": str(error)})
        if isinstance(chunk.get("model"), str):
            self._answer.model = chunk["model"]
        if isinstance(chunk.get("usage"), dict):
            self._answer.usage = chunk["usage"]
        choices = chunk.get("choices")
        for choice in choices if isinstance(choices, list) else ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue  # the gateway never asks for n > 1
            delta = choice.get("delta")
            self._delta(delta if isinstance(delta, dict) else {})
            if isinstance(choice.get("finish_reason"), str):
                self._answer.finish_reason = choice["finish_reason"]
        return self._drain()

    def finish(self, *, completed_at: int | None = None) -> list[JSON]:
        """The upstream stream ended (`[DONE]`): close every item and the response."""
        if self.finished:
            return []
        self._begin()
        for call in self._calls.values():
            if call.item is None:  # a call whose name never came
                self._open_call(call)
        still_open = [item for item in self._answer.items if item.status == "in_progress"]
        self._text = None
        self._answer.settle()
        for item in still_open:
            self._close(item)
        self.response = self._build(completed_at=completed_at)
        done = self.response["status"] == "completed"
        self._emit("response.completed" if done else "response.incomplete", response=self.response)
        return self._drain()

    def fail(self, error: GatewayError | Mapping[str, Any]) -> list[JSON]:
        """The stream broke: `response.failed`, with the gateway's error mapped."""
        if self.finished:
            return []
        self._begin()
        for item in self._answer.items:
            if item.status == "in_progress":
                item.status = "incomplete"
        self.response = failed_response(self._plan, self._id, self._created_at, error, self._answer)
        self._emit("response.failed", response=self.response)
        return self._drain()

    def _begin(self) -> None:
        if not self._started:
            self._started = True
            for kind in ("response.created", "response.in_progress"):
                self._emit(kind, response=self._build(status="in_progress"))

    def _build(self, *, status: str | None = None, completed_at: int | None = None) -> JSON:
        return build(
            self._plan,
            self._answer,
            response_id=self._id,
            created_at=self._created_at,
            status=status,
            completed_at=completed_at,
        )

    def _emit(self, kind: str, **fields: Any) -> None:
        self._events.append({"type": kind, "sequence_number": self._sequence, **fields})
        self._sequence += 1

    def _drain(self) -> list[JSON]:
        events, self._events = self._events, []
        return events

    def _where(self, item: Item) -> JSON:
        return {"item_id": item.id, "output_index": self._indexes[item.id]}

    def _delta(self, delta: Mapping[str, Any]) -> None:
        thought = reasoning_text(delta)
        if thought:
            self._reasoning_delta(thought)
        for kind, key in (("output_text", "content"), ("refusal", "refusal")):
            text = delta.get(key)
            if isinstance(text, str) and text:
                self._message_delta(kind, text)
        calls = delta.get("tool_calls")
        for call in calls if isinstance(calls, list) else ():
            if isinstance(call, dict):
                self._call_delta(call)

    def _open(self, item: Item) -> None:
        self._indexes[item.id] = len(self._answer.items)
        self._answer.items.append(item)
        self._emit(
            "response.output_item.added",
            output_index=self._indexes[item.id],
            item=render_item(item),
        )

    def _open_text(self, item: Reasoning | Message) -> None:
        self._close_text()
        self._open(item)
        self._text = item

    def _close_text(self) -> None:
        if self._text is not None:
            self._text.status = "completed"
            self._close(self._text)
            self._text = None

    def _close(self, item: Item) -> None:
        where = self._where(item)
        if isinstance(item, Reasoning):
            self._emit("response.reasoning_text.done", **where, content_index=0, text=item.text)
            part = {"type": "reasoning_text", "text": item.text}
            self._emit("response.content_part.done", **where, content_index=0, part=part)
        elif isinstance(item, Message) and item.parts:
            self._close_part(item)
        elif isinstance(item, FunctionCall):
            self._emit("response.function_call_arguments.done", **where, arguments=item.arguments)
        self._emit(
            "response.output_item.done", output_index=where["output_index"], item=render_item(item)
        )

    def _reasoning_delta(self, text: str) -> None:
        item = self._text
        if not isinstance(item, Reasoning):
            item = Reasoning(item_id("rs", self._id, len(self._answer.items)))
            self._open_text(item)
            part = {"type": "reasoning_text", "text": ""}
            self._emit(
                "response.content_part.added", **self._where(item), content_index=0, part=part
            )
        item.text += text
        self._emit(
            "response.reasoning_text.delta", **self._where(item), content_index=0, delta=text
        )

    def _message_delta(self, kind: str, text: str) -> None:
        message = self._text
        if not isinstance(message, Message):
            message = Message(item_id("msg", self._id, len(self._answer.items)))
            self._open_text(message)
        where = self._where(message)
        if not message.parts or message.parts[-1].kind != kind:
            if message.parts:
                self._close_part(message)
            message.parts.append(Part(kind))
            where["content_index"] = len(message.parts) - 1
            self._emit("response.content_part.added", **where, part=render_part(Part(kind)))
        part = message.parts[-1]
        part.text += text
        where["content_index"] = len(message.parts) - 1
        if kind == "refusal":
            self._emit("response.refusal.delta", **where, delta=text)
        else:
            self._emit("response.output_text.delta", **where, delta=text, logprobs=[])

    def _close_part(self, message: Message) -> None:
        part = message.parts[-1]
        where = {**self._where(message), "content_index": len(message.parts) - 1}
        if part.kind == "refusal":
            self._emit("response.refusal.done", **where, refusal=part.text)
        else:
            self._emit("response.output_text.done", **where, text=part.text, logprobs=[])
        self._emit("response.content_part.done", **where, part=render_part(part))

    def _call_delta(self, fragment: Mapping[str, Any]) -> None:
        call = self._calls.setdefault(self._call_key(fragment), _Call())
        function = fragment.get("function")
        function = function if isinstance(function, dict) else {}
        if call.id is None and isinstance(fragment.get("id"), str):
            call.id = fragment["id"]
        if call.name is None and isinstance(function.get("name"), str) and function["name"]:
            call.name = function["name"]
        arguments = function.get("arguments")
        arguments = arguments if isinstance(arguments, str) else ""
        if call.item is None:
            call.held += arguments
            if call.name is not None:
                self._open_call(call)
        elif arguments:
            self._arguments(call.item, arguments)

    def _call_key(self, fragment: Mapping[str, Any]) -> int:
        """The call a fragment belongs to: its `index`; without one (a few servers), a new
        call when it brings a new id, else the last call."""
        index = fragment.get("index")
        if isinstance(index, int) and not isinstance(index, bool):
            return index
        given = fragment.get("id")
        if not self._calls or (given and all(c.id != given for c in self._calls.values())):
            return max(self._calls, default=-1) + 1
        return max(self._calls)

    def _open_call(self, call: _Call) -> None:
        self._close_text()
        index = len(self._answer.items)
        call.item = FunctionCall(
            item_id("fc", self._id, index),
            call_id(call.id, self._id, index, self._call_ids),
            call.name or "",
        )
        self._open(call.item)
        if call.held:
            self._arguments(call.item, call.held)
            call.held = ""

    def _arguments(self, item: FunctionCall, fragment: str) -> None:
        item.arguments += fragment
        self._emit("response.function_call_arguments.delta", **self._where(item), delta=fragment)

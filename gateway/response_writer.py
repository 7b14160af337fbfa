"""`ResponsesResponder`: a `Responder` that speaks OpenAI's Responses API to the client while the
proxy goes on writing a chat completion.

The proxy runs a `/v1/responses` request exactly as a chat completion (slot, retries, budget,
charge, metrics) and writes what W&B answered: a whole answer through `whole()`, a stream through
`start()`, `chunk()` and `end()`. This class turns those writes into the response object
(`from_chat`), or its event stream (`StreamTranslator`, fed each `data:` event as it completes;
`: keep-alive` comments pass as they are). Errors before the response started are OpenAI's
envelope, as on every path; once a stream is under way, the gateway's SSE error event becomes
`response.failed`.

A completed or incomplete response is kept (`keep`, for `store: true`) before its last byte
goes, so a client that sends the next turn at once finds it.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.types import Receive, Send

from gateway.errors import RawHeaders, StreamInterrupted, UpstreamError, render
from gateway.responses import Responder
from gateway.responses_api import ChatPlan, StreamTranslator, assistant_messages, encode_event
from gateway.responses_api import from_chat as response_from_chat

Keep = Callable[[dict[str, Any], list[dict[str, Any]]], Awaitable[None]]
MAX_EVENT_BYTES = 16 * 1024 * 1024  # one upstream SSE event held while it arrives


class ResponsesResponder(Responder):
    __slots__ = ("_buffer", "_keep", "_translator", "created_at", "final", "plan", "response_id")

    def __init__(self, send: Send, receive: Receive, response_id: str, keep: Keep) -> None:
        super().__init__(send, receive)
        self.response_id = response_id
        self.created_at = int(time.time())
        self.plan: ChatPlan | None = None  # set once the request is understood
        self.final: dict[str, Any] | None = None  # the response object the client got
        self._keep = keep
        self._translator: StreamTranslator | None = None
        self._buffer = b""

    async def whole(self, status: int, headers: RawHeaders, body: bytes) -> None:
        if status != 200 or self.plan is None:
            await super().whole(status, headers, body)
            return
        try:
            chat = orjson.loads(body)
            if not isinstance(chat, dict):
                raise TypeError
        except (orjson.JSONDecodeError, TypeError):
            await super().whole(*render(UpstreamError("W&B answered 200 with no JSON object.")))
            return
        response = response_from_chat(
            self.plan,
            chat,
            response_id=self.response_id,
            created_at=self.created_at,
            completed_at=int(time.time()),
        )
        await self._finished(response)
        data = orjson.dumps(response)
        kept = [(k, v) for k, v in headers if k != b"content-length"]
        await super().whole(200, [*kept, (b"content-length", b"%d" % len(data))], data)

    async def start(self, status: int, headers: RawHeaders) -> None:
        await super().start(status, headers)
        if status == 200 and self.plan is not None and self.plan.stream:
            self._translator = StreamTranslator(
                self.plan, response_id=self.response_id, created_at=self.created_at
            )
            await super().chunk(_encode(self._translator.start()))

    async def chunk(self, body: bytes) -> None:
        if self._translator is None:
            await super().chunk(body)
            return
        out = self._translate(body)
        if out:
            await super().chunk(out)

    async def end(self, body: bytes = b"") -> None:
        translator = self._translator
        if translator is None:
            await super().end(body)
            return
        out = self._translate(body)
        if not translator.finished:
            cut = StreamInterrupted("W&B ended the stream before it was complete.")
            out += _encode(translator.fail(cut))
        response = translator.response
        if response is not None and response.get("status") != "failed":
            await self._finished(response)
        else:
            self.final = response
        await super().end(out)

    async def _finished(self, response: dict[str, Any]) -> None:
        self.final = response
        assert self.plan is not None
        if self.plan.store:
            await self._keep(response, self.plan.conversation(assistant_messages(response)))

    def _translate(self, body: bytes) -> bytes:
        """The complete SSE events in what has arrived, as Responses events; the rest waits."""
        translator = self._translator
        assert translator is not None
        self._buffer += body
        *events, self._buffer = self._buffer.replace(b"\r\n", b"\n").split(b"\n\n")
        if len(self._buffer) > MAX_EVENT_BYTES:
            self._buffer = b""
            events.append(b'data: {"error": {"message": "an upstream event was too large"}}')
        out: list[bytes] = []
        for event in events:
            data = b"\n".join(
                line[5:].lstrip(b" ") for line in event.split(b"\n") if line.startswith(b"data:")
            )
            if not data:
                if event.startswith(b":"):
                    out.append(event + b"\n\n")  # a keep-alive comment
                continue
            if data == b"[DONE]":
                out.append(_encode(translator.finish(completed_at=int(time.time()))))
                continue
            try:
                chunk = orjson.loads(data)
            except orjson.JSONDecodeError:
                continue  # upstream's own noise: the chat path would relay it, no model reads it
            if isinstance(chunk, dict):
                out.append(_encode(translator.feed(chunk)))
        return b"".join(out)


def _encode(events: list[dict[str, Any]]) -> bytes:
    return b"".join(encode_event(e) for e in events)

"""`Trace`: one request's span before it is made, and what the proxy saw of the answer.

Its ids are chosen when the request comes (the `traceparent` sent upstream names them); the
span is made only at the end, whole (`Tracing.finish`). The
proxy hands it the answer it relays (`answer` for a whole one, `chunk` for each run of stream
events) only when the trace is sampled; it keeps the response's id, model and finish reasons,
and, with content capture on, the answer's text and tool calls, each bounded. Plain Python, no
OpenTelemetry: `gateway.tracing.spans` turns it into the span.
"""

from __future__ import annotations

import re
import time
from typing import Any

import orjson

_FINISH = re.compile(rb'"finish_reason": ?"([^"\\]{1,64})"')
_DATA = b"data:"
MAX_TOOL_CALLS = 64  # kept of one answer, with capture on


class Trace:
    __slots__ = (
        "_calls",
        "_kept",
        "_parts",
        "capture",
        "finish_reasons",
        "max_chars",
        "parent",
        "project",
        "recording",
        "response_id",
        "response_model",
        "route",
        "span_id",
        "start_ns",
        "tenant",
        "trace_id",
        "traceparent",
        "tracestate",
    )

    def __init__(
        self,
        route: Any,
        parent: Any,
        ids: tuple[int, int, bool],
        project: str,
        capture: bool,
        max_chars: int,
        tenant: tuple[str, str] = ("", ""),
    ) -> None:
        self.route = route  # where the span goes (`batches.Route`), and the client's span
        self.parent = parent  # context or None: typed Any so that this module imports neither
        self.trace_id, self.span_id, self.recording = ids  # recording: sampled
        flags = "01" if self.recording else "00"
        self.traceparent = f"00-{self.trace_id:032x}-{self.span_id:016x}-{flags}"
        self.tracestate: str | None = None  # the parent's, as the span carries it on
        if parent is not None and (state := parent.trace_state):
            self.tracestate = state.to_header()
        self.start_ns = time.time_ns()
        self.project = project  # where a Weave span goes (the request's OpenAI-Project)
        self.tenant = tenant  # (name, own project)
        self.capture = capture and self.recording
        self.max_chars = max_chars
        self.response_id: str | None = None
        self.response_model: str | None = None
        self.finish_reasons: list[str] = []
        self._parts: list[str] = []  # the answer's text, with capture on
        self._kept = 0  # its characters
        self._calls: dict[int, _ToolCall] = {}  # by the tool call's index

    def answer(self, payload: Any) -> None:
        """A whole answer, as upstream's JSON."""
        if not isinstance(payload, dict):
            return
        self._ids(payload)
        for choice in _choices(payload):
            self._reason(choice.get("finish_reason"))
            message = choice.get("message")
            if self.capture and isinstance(message, dict):
                self._add(message)

    def chunk(self, data: bytes) -> None:
        """Whole stream events, as relayed: the first gives the id and model; finish reasons
        are found by a scan; only content capture reads every event."""
        if self.response_id is None or self.capture:
            for payload in _events(data, first=not self.capture):
                self._ids(payload)
                if self.capture:
                    for choice in _choices(payload):
                        delta = choice.get("delta")
                        if isinstance(delta, dict):
                            self._add(delta)
        if b'"finish_reason":"' in data or b'"finish_reason": "' in data:  # not null
            for found in _FINISH.findall(data):
                self._reason(found.decode("utf-8", "replace"))

    def output(self) -> tuple[str, list[dict[str, Any]]] | None:
        """(the text, the tool calls as name and arguments), with capture on."""
        if not self.capture:
            return None
        calls = [
            {"type": "tool_call", "name": call.name, "arguments": "".join(call.parts)}
            for _, call in sorted(self._calls.items())
        ]
        return "".join(self._parts), calls

    def _ids(self, payload: dict[str, Any]) -> None:
        if self.response_id is None and isinstance(found := payload.get("id"), str):
            self.response_id = found[:200]
        if self.response_model is None and isinstance(found := payload.get("model"), str):
            self.response_model = found[:200]

    def _reason(self, reason: Any) -> None:
        if isinstance(reason, str) and reason not in self.finish_reasons:
            self.finish_reasons.append(reason[:64])

    def _add(self, message: dict[str, Any]) -> None:
        """A message's (or a delta's) text and tool calls, until `max_chars` are kept of each
        (counted as they come: a stream's every delta costs the same, however long it runs)."""
        text = message.get("content")
        room = self.max_chars - self._kept
        if isinstance(text, str) and text and room > 0:
            self._parts.append(text[:room])
            self._kept += min(len(text), room)
        calls = message.get("tool_calls")
        for n, call in enumerate(calls if isinstance(calls, list) else ()):
            if not isinstance(call, dict):
                continue
            index = call.get("index", n)
            function = call.get("function")
            if not isinstance(index, int) or not isinstance(function, dict):
                continue
            kept = self._calls.get(index)
            if kept is None:
                if len(self._calls) >= MAX_TOOL_CALLS:
                    continue
                kept = self._calls[index] = _ToolCall()
            if isinstance(name := function.get("name"), str):
                kept.name = name[:200]
            arguments = function.get("arguments")
            room = self.max_chars - kept.chars
            if isinstance(arguments, str) and arguments and room > 0:
                kept.parts.append(arguments[:room])
                kept.chars += min(len(arguments), room)


class _ToolCall:
    __slots__ = ("chars", "name", "parts")

    def __init__(self) -> None:
        self.name = ""
        self.parts: list[str] = []  # its arguments, as they came
        self.chars = 0


def _choices(payload: dict[str, Any]) -> list[dict[str, Any]]:
    choices = payload.get("choices")
    return [c for c in choices if isinstance(c, dict)] if isinstance(choices, list) else []


def _events(data: bytes, first: bool) -> list[dict[str, Any]]:
    """The JSON objects of the `data:` lines in whole SSE events (only the first one if
    `first`); a line that is no JSON object is skipped."""
    found: list[dict[str, Any]] = []
    for line in data.split(b"\n"):
        if not line.startswith(_DATA) or line[5:].strip() == b"[DONE]":
            continue
        try:
            payload = orjson.loads(line[5:])
        except orjson.JSONDecodeError:
            continue
        if isinstance(payload, dict):
            found.append(payload)
            if first:
                break
    return found

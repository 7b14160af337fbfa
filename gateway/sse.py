"""Watching a chat completion stream go by, without re-encoding it.

`StreamMeter.feed()` takes upstream bytes and returns what the client should get. It splits the
bytes into SSE events only to find three things: the usage chunk (W&B sends it last when
`stream_options.include_usage` is set), how many content and reasoning chunks were relayed (to
estimate the tokens of a stream cut short), and `[DONE]`, which it holds back for `flush()` to
give: the request is charged before the client has the end of its answer. When the gateway
itself asked for usage on the client's behalf, the usage chunk and the `"usage":null` fields are
removed, so the client sees exactly what it would have seen without the gateway.

A `"usage":null` cannot be matched inside a JSON string: there its quotes are escaped.
"""

from __future__ import annotations

import re

import orjson

from gateway.cost import Usage, usage_from

_USAGE_OBJECT = re.compile(rb'"usage"\s*:\s*\{')
_USAGE_NULL = re.compile(rb',\s*"usage"\s*:\s*null|"usage"\s*:\s*null\s*,?')
# A content (or reasoning) delta with text in it: one token a chunk, for estimates.
_TEXT_DELTA = re.compile(rb'"(content|reasoning_content|reasoning)"\s*:\s*"(?!")')
_DONE = b"data: [DONE]"
_LINE_DONE = b"\n" + _DONE


class StreamMeter:
    __slots__ = ("_buf", "_ending", "content_chunks", "done", "strip_usage", "usage")

    def __init__(self, strip_usage: bool) -> None:
        self.strip_usage = strip_usage
        self.usage: Usage | None = None
        self.content_chunks = 0
        self.done = False  # `[DONE]` came: it is held back, for `flush()` to give
        self._buf = b""
        self._ending = b""

    def feed(self, chunk: bytes) -> bytes:
        data = self._buf + chunk if self._buf else chunk
        held = b""
        if b"\r" in data:  # CRLF line ends; a lone CR at the end may meet its LF next time
            if data.endswith(b"\r"):
                data, held = data[:-1], b"\r"
            data = data.replace(b"\r\n", b"\n")
        end = data.rfind(b"\n\n") + 2  # what ends with whole events goes out now
        if end < 2:
            self._buf = data + held
            return b""
        self._buf = data[end:] + held
        return self._events(data[:end] if end < len(data) else data)

    def _events(self, data: bytes) -> bytes:
        """Whole events: each one with a usage object (upstream sends one, last) on its own,
        every run of events between them in one piece, in C (`_whole`)."""
        out: list[bytes] = []
        while data:
            if self.done:
                self._ending += data
                break
            usage = data.count(b'"usage"')
            found = None
            if usage and data.count(b'"usage":null') != usage:
                found = _USAGE_OBJECT.search(data)
            if found is None:
                out.append(self._whole(data, usage > 0))
                break
            start = data.rfind(b"\n\n", 0, found.start())
            start = 0 if start < 0 else start + 2
            stop = data.find(b"\n\n", found.end())  # found: `data` ends with a blank line
            if start:
                out.append(self._whole(data[:start], True))
            if self.done:  # `[DONE]` came before it: the rest is held with it
                self._ending += data[start:]
                break
            kept = self._event(data[start:stop])
            if kept is not None:
                out.append(kept + b"\n\n")
            data = data[stop + 2 :]
        return b"".join(out)

    def _whole(self, chunk: bytes, named_usage: bool) -> bytes:
        """The common case, whole events without a usage object: a few scans in C (byte
        counts, not regular expressions, for the compact JSON upstream sends), no split.
        `named_usage`: the chunk may hold a `"usage"` key (a `null` to strip). From `[DONE]` on,
        the chunk is held back."""
        if chunk.startswith(_DONE):
            self.done, self._ending, chunk = True, self._ending + chunk, b""
        elif (at := chunk.find(_LINE_DONE)) >= 0:  # a raw newline: never in a string
            self.done, self._ending, chunk = True, self._ending + chunk[at + 1 :], chunk[: at + 1]
        self.content_chunks += _text_deltas(chunk)
        if self.strip_usage and named_usage:
            return _strip_usage_nulls(chunk)
        return chunk

    def flush(self) -> bytes:
        """At the end: the `[DONE]` held back (the proxy charges the request before the client
        has it), or what is left of an unterminated last event. A `[DONE]` missing only its
        blank line still counts; any other fragment is dropped, since glued to the error event
        that follows it would make that unreadable."""
        rest, self._buf = self._buf, b""
        if self.done:
            ending, self._ending = self._ending, b""
            return ending
        if rest.startswith(_DONE):
            self.done = True
            return rest.rstrip(b"\n") + b"\n\n"
        return b""

    def _event(self, event: bytes) -> bytes | None:
        """The event as the client should get it, or None to drop it."""
        if event.lstrip(b"\n").startswith(_DONE):
            self.done, self._ending = True, event + b"\n\n"
            return None
        self.content_chunks += _text_deltas(event)
        named = event.count(b'"usage"')
        if named and event.count(b'"usage":null') != named and _USAGE_OBJECT.search(event):
            payload = _payload(event)
            usage = payload.get("usage") if isinstance(payload, dict) else None
            if isinstance(usage, dict):
                self.usage = usage_from(usage)
                if self.strip_usage and isinstance(payload, dict) and not payload.get("choices"):
                    return None
        if self.strip_usage and named:
            return _strip_usage_nulls(event)
        return event


def _strip_usage_nulls(data: bytes) -> bytes:
    """`data` without its `"usage":null` fields: a byte replace for the compact spelling, the
    exact pattern when another one is left."""
    kept = data.replace(b',"usage":null', b"")
    if b'"usage"' in kept:
        return _USAGE_NULL.sub(b"", data)
    return kept


def _text_deltas(data: bytes) -> int:
    """How many tokens of text the content, reasoning and tool-call argument deltas in `data`
    hold, one a delta.
    A server that sends its reasoning as both `reasoning` and `reasoning_content` (vLLM, for a
    while) sends the same token twice: the larger of the two counts is taken.

    `content"` and `reasoning"` end only a key or a string (a quote inside a string is
    escaped): when every one is a compact `"<key>":"`, counting them is exact."""
    calls = data.count(b'"arguments":"') - data.count(b'"arguments":""')  # tool call fragments
    named = data.count(b'content"') + data.count(b'reasoning"')
    if not named:
        return calls
    content = data.count(b'"content":"')
    both = data.count(b'"reasoning_content":"')
    plain = data.count(b'"reasoning":"')
    if content + both + plain != named:
        found = [m.group(1) for m in _TEXT_DELTA.finditer(data)]
        both, plain = found.count(b"reasoning_content"), found.count(b"reasoning")
        return found.count(b"content") + max(both, plain) + calls
    content -= data.count(b'"content":""')
    both -= data.count(b'_content":""')
    plain -= data.count(b'"reasoning":""')
    return content + max(both, plain) + calls


def _payload(event: bytes) -> object:
    lines = [line[5:].strip() for line in event.split(b"\n") if line.startswith(b"data:")]
    try:
        return orjson.loads(b"\n".join(lines))
    except orjson.JSONDecodeError:
        return None

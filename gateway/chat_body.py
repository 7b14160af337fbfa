"""The top level of a chat completion's body, read exactly once and exactly as sent.

`read(body)` walks the top-level object member by member and keeps only what the gateway
needs: the values of `model`, `stream` and `stream_options`, where in the bytes `model` and
`stream_options` sit (so a rewrite is one splice), whether `messages` is a list, and an estimate
of the prompt's tokens. Every other value is parsed, to know the body is JSON, and dropped.

It refuses what two parsers could read differently, so the gateway and W&B always see one
request: a body that is not UTF-8 (UTF-16 and UTF-32 included), a top-level key given twice
(`{"model": "allowed", "model": "other"}`), `NaN`/`Infinity`, data after the object. Numbers
are read by the stdlib, exactly (an integer past 64 bits is an integer, in one pass). Escapes in
strings the gateway only passes on, a lone surrogate among them, stay untouched in the bytes.

The module imports little (the stdlib, and the error tree), so that `BodyReader` can run it in
a child process for big bodies: parsing 8 MiB takes 20 to 160 ms, which would stall every other
request on the event loop (a thread would not help: the parser holds the GIL).
"""

from __future__ import annotations

import asyncio
import json
import math
import multiprocessing
import os
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, TypeVar

from gateway.errors import BadRequest

T = TypeVar("T")

# Bodies at least this big are read in the child process; below it, on the loop (1.4 ms for
# 240 KiB of messages, measured; the child's round trip adds about 3 ms of latency).
OFFLOAD_BYTES = 256 * 1024
SAMPLING: tuple[str, ...] = ("temperature", "top_p", "seed", "max_tokens")
SAMPLING += ("max_completion_tokens", "frequency_penalty", "presence_penalty")

# What the gateway reads of the top level: the first four for the request, the rest for its
# trace span (they are parsed all the same; kept, they cost a dict entry).
_READ = frozenset({"model", "stream", "stream_options", "cache_salt", *SAMPLING})
# What a body may hold, counted by the characters that start or separate JSON values (in strings
# too): a parser builds an object of 30 to 100 bytes for each, so 30 MiB of `[{},{},...]` took
# 858 MiB. Prose has a comma in 50 characters, a base64 image none.
MAX_VALUES = 2_000_000
_WRONG = ()  # what a read field holds when it is nested: no string, bool or object, so refused
_WS = re.compile(r"[ \t\n\r]*")
_OPEN = re.compile(r"[ \t\n\r]*\{[ \t\n\r]*")
_CLOSE = re.compile(r"\}")
_PLAIN_KEY = re.compile(r'"([^"\\\x00-\x1f]*)"[ \t\n\r]*:[ \t\n\r]*')  # no escape in it
_COLON = re.compile(r"[ \t\n\r]*:[ \t\n\r]*")
_NEXT = re.compile(r"[ \t\n\r]*([,}])[ \t\n\r]*")


class BodyError(BadRequest):
    """The body cannot be read as one JSON object: a 400, picklable (it comes back from the
    child process)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message, param=param)

    def __reduce__(self) -> tuple[type[BodyError], tuple[str, str | None]]:
        return BodyError, (self.message, self.param)


def _constant(name: str) -> Any:
    raise BodyError(f"`{name}` is not JSON: send numbers only.")


_DECODER = json.JSONDecoder(parse_constant=_constant)


@dataclass(frozen=True, slots=True)
class ChatBody:
    """What the gateway reads of a body; spans are byte offsets `[start, end)` of the values."""

    fields: dict[str, Any]  # model, stream, stream_options, cache_salt, SAMPLING, as present
    spans: dict[str, tuple[int, int]]  # model, stream_options, as present
    messages_is_list: bool | None  # None: no `messages` key
    prompt_tokens: int  # an estimate, for a stream cut before upstream's usage came
    open_at: int  # the byte after the object's `{`: where a new first member can go


def read(body: bytes) -> ChatBody:
    """The body's top level, or BodyError saying what is wrong with it."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise BodyError(
            "The request body is not UTF-8 text: send JSON encoded as UTF-8 "
            "(`Content-Type: application/json`)."
        ) from None
    values = sum(body.count(c) for c in (b",", b":", b"[", b"{"))
    if values > MAX_VALUES:
        raise BodyError(
            f"The request body holds more than {MAX_VALUES:,} JSON values (counting the commas, "
            "colons and brackets in its strings too): send fewer, or longer ones."
        )
    try:
        return _walk(text, len(text) == len(body))
    except json.JSONDecodeError as exc:
        raise BodyError(
            f"We could not parse the JSON body of your request ({exc.msg} at character "
            f"{exc.pos}). Send a JSON object with `Content-Type: application/json`."
        ) from None
    except ValueError:  # the stdlib's bound on an integer's digits (4,300)
        raise BodyError("The request body holds a number too long to read.") from None
    except (RecursionError, MemoryError):
        raise BodyError("The request body is nested too deeply.") from None


def _walk(text: str, ascii_only: bool) -> ChatBody:
    opened = _OPEN.match(text)
    if opened is None:
        raise BodyError("The request body must be a JSON object.")
    i = open_at = opened.end()
    fields: dict[str, Any] = {}
    spans: dict[str, tuple[int, int]] = {}
    seen: set[str] = set()
    messages: bool | None = None
    prompt_tokens = 0
    if (empty := _CLOSE.match(text, i)) is not None:
        i = empty.end()
    else:
        while True:
            key, i = _key(text, i)
            if key in seen:
                raise BodyError(
                    f"The request body has the key {json.dumps(key)} more than once: "
                    "send each top-level field once.",
                    param=key if key.isascii() else None,
                )
            seen.add(key)
            value, end = _DECODER.raw_decode(text, i)
            if key in _READ:
                fields[key] = value if _flat(value) else _WRONG  # a small, picklable value
                spans[key] = (i, end)
            elif key == "messages":
                messages = isinstance(value, list)
                prompt_tokens = estimate_prompt_tokens(value)
            del value
            after = _NEXT.match(text, end)
            if after is None:
                raise json.JSONDecodeError("Expecting ',' delimiter", text, end)
            i = after.end()
            if after.group(1) == "}":
                break
    if _WS.match(text, i).end() != len(text):  # type: ignore[union-attr]  # matches ""
        raise json.JSONDecodeError("Extra data", text, i)
    if not ascii_only:  # character offsets to byte offsets, for the few spans kept
        spans = {k: (_bytes_at(text, a), _bytes_at(text, b)) for k, (a, b) in spans.items()}
        open_at = _bytes_at(text, open_at)
    return ChatBody(fields, spans, messages, prompt_tokens, open_at)


def _flat(value: Any) -> bool:
    """A scalar, or an object of scalars: what `model`, `stream` and `stream_options` hold."""
    if isinstance(value, dict):
        return all(not isinstance(v, dict | list) for v in value.values())
    return not isinstance(value, list)


def _key(text: str, i: int) -> tuple[str, int]:
    """A member's key at `i`, and where its value starts."""
    plain = _PLAIN_KEY.match(text, i)
    if plain is not None:
        return plain.group(1), plain.end()
    i = _WS.match(text, i).end()  # type: ignore[union-attr]
    if text[i : i + 1] != '"':
        raise json.JSONDecodeError("Expecting property name enclosed in double quotes", text, i)
    key, i = json.decoder.scanstring(text, i + 1)  # type: ignore[attr-defined]  # escapes
    colon = _COLON.match(text, i)
    if colon is None:
        raise json.JSONDecodeError("Expecting ':' delimiter", text, i)
    return key, colon.end()


def _bytes_at(text: str, index: int) -> int:
    return len(text[:index].encode("utf-8", "surrogatepass"))


def estimate_prompt_tokens(messages: Any) -> int:
    """About four characters a token, over every text part of every message."""
    chars = 0
    if isinstance(messages, list):
        for message in messages:
            content = message.get("content") if isinstance(message, dict) else None
            if isinstance(content, str):
                chars += len(content)
            elif isinstance(content, list):
                chars += sum(
                    len(part.get("text") or "")
                    for part in content
                    if isinstance(part, dict) and isinstance(part.get("text"), str)
                )
    return math.ceil(chars / 4)


def splice(body: bytes, changes: list[tuple[int, int, bytes]]) -> bytes:
    """The body with each `[start, end)` replaced: one new bytes object, no other copy."""
    view = memoryview(body)
    parts: list[bytes | memoryview] = []
    at = 0
    for start, end, new in sorted(changes):
        parts += (view[at:start], new)
        at = end
    parts.append(view[at:])
    return b"".join(parts)


class BodyReader:
    """`read()` on the loop for small bodies, in one child process for big ones.

    The child is started on the first big body and stopped with the app. Its queue needs no
    bound of its own: the bytes of every body held are bounded already (`Admission`). A child
    that dies (killed for memory, say) is replaced, and the body it held is refused as
    BodyReaderGone (the caller answers 503).
    """

    def __init__(self, offload_bytes: int = OFFLOAD_BYTES) -> None:
        self.offload_bytes = offload_bytes
        self._pool: ProcessPoolExecutor | None = None

    async def read(self, body: bytes) -> ChatBody:
        return await self.offload(len(body), read, body)

    async def offload(self, size: int, work: Callable[..., T], *args: Any) -> T:
        """`work(*args)`, on the loop when `size` (bytes it reads) is below `offload_bytes`,
        else in the child process (`work` and its arguments pickled: a module's function)."""
        if size < self.offload_bytes:
            return work(*args)
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                1,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_follow_parent,
                initargs=(os.getpid(),),
            )
        pool = self._pool
        try:
            return await asyncio.get_running_loop().run_in_executor(pool, work, *args)
        except BrokenProcessPool:
            if self._pool is pool:
                self._pool = None
            pool.shutdown(wait=False, cancel_futures=True)
            raise BodyReaderGone from None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


def _follow_parent(parent: int) -> None:
    """In the child: exit when the gateway is gone, even if it was killed and could not say so."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1)
        os._exit(0)

    threading.Thread(target=watch, daemon=True).start()


class BodyReaderGone(Exception):
    """The child process reading a big body died before it answered."""

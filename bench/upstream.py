"""A fast fake OpenAI upstream for benchmarks: raw asyncio HTTP/1.1, minimal work per request.

Not the test fake (`gateway.testing.fake_upstream`), which checks keys, keeps statistics and
injects faults: this one only answers, so that it is never the bottleneck of a benchmark. Any
`Authorization` is accepted. `POST /v1/chat/completions` answers after `--delay-ms` (plus up to
`--jitter-ms`) with a fixed completion (with `usage`), or, for `"stream": true`, with `--chunks`
SSE content chunks `--chunk-delay-ms` apart (the first after the delay: the time to first token),
then the finish chunk, a usage chunk when `stream_options.include_usage` is true, and
`data: [DONE]`. Each content chunk is one write and one HTTP chunk (chunked transfer encoding);
the tail is one write. `GET /v1/models` lists one model. Connections are kept alive; pipelined
requests are answered in order.

    python bench/upstream.py --port 9100 --delay-ms 50 --chunks 20 --chunk-delay-ms 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import time
from collections.abc import Callable
from typing import Any, cast

try:
    import orjson

    def _loads(body: bytes) -> Any:
        return orjson.loads(body)

    def _dumps(obj: Any) -> bytes:
        return orjson.dumps(obj)

except ImportError:  # the bench runs from the project's venv, which has orjson; stay usable

    def _loads(body: bytes) -> Any:
        return json.loads(body)

    def _dumps(obj: Any) -> bytes:
        return json.dumps(obj, separators=(",", ":")).encode()


MODEL = "meta-llama/Llama-3.1-8B-Instruct"
PROMPT_TOKENS = 12
WORDS = ("The", "quick", "brown", "fox", "jumps", "over", "the", "lazy", "dog.")
MAX_HEAD = 64 * 1024
MAX_BODY = 32 * 1024 * 1024


class Answers:
    """The response bytes, built once per (model, include_usage) and reused."""

    def __init__(self, chunks: int) -> None:
        self.chunks = chunks
        self._plain: dict[str, bytes] = {}
        self._stream: dict[tuple[str, bool], tuple[list[bytes], bytes]] = {}

    def plain(self, model: str) -> bytes:
        cached = self._plain.get(model)
        if cached is None:
            text = " ".join(WORDS[i % len(WORDS)] for i in range(self.chunks))
            body = _dumps(
                {
                    "id": "chatcmpl-bench",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": text},
                            "logprobs": None,
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": _usage(self.chunks),
                }
            )
            cached = (
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                b"content-length: %d\r\n\r\n" % len(body) + body
            )
            if len(self._plain) < 64:  # the bench sends one model; stay bounded anyway
                self._plain[model] = cached
        return cached

    def stream(self, model: str, include_usage: bool) -> tuple[list[bytes], bytes]:
        """(one HTTP chunk per content event, the tail: finish, usage, [DONE], last chunk)."""
        cached = self._stream.get((model, include_usage))
        if cached is not None:
            return cached
        head: dict[str, Any] = {
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
        }
        extra: dict[str, Any] = {"usage": None} if include_usage else {}

        def event(delta: dict[str, str], finish: str | None) -> bytes:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            return _chunk(b"data: " + _dumps({**head, "choices": [choice], **extra}) + b"\n\n")

        content = []
        for i in range(self.chunks):
            delta = {"content": WORDS[i % len(WORDS)] + " "}
            if i == 0:
                delta = {"role": "assistant", **delta}
            content.append(event(delta, None))
        tail = event({}, "stop")
        if include_usage:
            usage = {**head, "choices": [], "usage": _usage(self.chunks)}
            tail += _chunk(b"data: " + _dumps(usage) + b"\n\n")
        tail += _chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n"
        start = (
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n"
        )
        cached = ([start + content[0], *content[1:]], tail)
        if len(self._stream) < 64:
            self._stream[(model, include_usage)] = cached
        return cached

    def models(self) -> bytes:
        body = _dumps(
            {
                "object": "list",
                "data": [{"id": MODEL, "object": "model", "created": 0, "owned_by": "bench"}],
            }
        )
        return (
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n\r\n" % len(body) + body
        )


def _usage(completion: int) -> dict[str, int]:
    return {
        "prompt_tokens": PROMPT_TOKENS,
        "completion_tokens": completion,
        "total_tokens": PROMPT_TOKENS + completion,
    }


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n" % len(data) + data + b"\r\n"


def _error(status: int, message: str) -> bytes:
    body = _dumps({"error": {"message": message, "type": "invalid_request_error"}})
    reason = {400: "Bad Request", 404: "Not Found", 411: "Length Required", 413: "Too Large"}
    return (
        b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
        % (status, reason.get(status, "Error").encode(), len(body))
        + body
    )


class Connection(asyncio.Protocol):
    """One client connection: parse a request, answer it (maybe later), then the next one."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.busy = False  # answering a request; later ones wait in the buffer
        self.close_after = False
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass of it

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.busy:
            self.next_request()

    def next_request(self) -> None:
        transport = self.transport
        if transport is None:
            return
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buf) > MAX_HEAD:
                self.fail(400, "request head too large")
            return
        head = bytes(self.buf[:end]).lower()
        request_line, _, headers = head.partition(b"\r\n")
        method, _, rest = request_line.partition(b" ")
        path = rest.partition(b" ")[0].partition(b"?")[0]
        headers = b"\r\n" + headers + b"\r\n"
        length = 0
        at = headers.find(b"\r\ncontent-length:")
        if at >= 0:
            value = headers[at + 17 : headers.find(b"\r\n", at + 17)]
            try:
                length = int(value.strip())
            except ValueError:
                self.fail(400, "bad content-length")
                return
        elif b"\r\ntransfer-encoding:" in headers:
            self.fail(411, "send a content-length")
            return
        if length > MAX_BODY:
            self.fail(413, "body too large")
            return
        if len(self.buf) < end + 4 + length:
            return  # the rest of the body is still on its way
        body = bytes(self.buf[end + 4 : end + 4 + length])
        del self.buf[: end + 4 + length]
        self.close_after = b"\r\nconnection: close\r\n" in headers
        self.busy = True
        self.handle(method, path, body)

    def handle(self, method: bytes, path: bytes, body: bytes) -> None:
        answers = self.server.answers
        if path == b"/v1/chat/completions" and method == b"post":
            try:
                data = _loads(body)
                model = str(data.get("model") or MODEL)
                stream = data.get("stream") is True
                options = data.get("stream_options")
                usage = isinstance(options, dict) and options.get("include_usage") is True
            except (ValueError, AttributeError):
                self.finish(_error(400, "body must be a JSON object"))
                return
            delay = self.server.delay()
            if stream:
                parts, tail = answers.stream(model, usage)
                self.later(delay, lambda: self.send_stream(parts, 0, tail))
            else:
                self.later(delay, lambda: self.finish(answers.plain(model)))
        elif path == b"/v1/models" and method == b"get":
            self.finish(answers.models())
        else:
            self.finish(_error(404, "unknown path"))

    def later(self, delay_s: float, then: Callable[[], None]) -> None:
        if delay_s > 0:
            self.timer = self.loop.call_later(delay_s, then)
        else:
            then()

    def send_stream(self, parts: list[bytes], index: int, tail: bytes) -> None:
        self.timer = None
        if self.transport is None:
            return
        self.transport.write(parts[index])
        if index + 1 < len(parts):
            self.later(self.server.chunk_delay_s, lambda: self.send_stream(parts, index + 1, tail))
        else:
            self.finish(tail)

    def finish(self, data: bytes) -> None:
        self.timer = None
        if self.transport is None:
            return
        self.transport.write(data)
        self.busy = False
        if self.close_after:
            self.transport.close()
        elif self.buf:
            self.next_request()

    def fail(self, status: int, message: str) -> None:
        if self.transport is not None:
            self.transport.write(_error(status, message))
            self.transport.close()


class Server:
    def __init__(
        self, delay_s: float, chunks: int, chunk_delay_s: float, jitter_s: float = 0.0
    ) -> None:
        self.delay_s = delay_s
        self.jitter_s = jitter_s
        self.chunk_delay_s = chunk_delay_s
        self.answers = Answers(chunks)

    def delay(self) -> float:
        """Time to the answer (to the first chunk of a stream): fixed, or spread by the jitter.
        A fixed delay makes a closed-loop load move in waves (every connection's next request
        arrives together); jitter spreads them out, as a real model's varying latency does."""
        if self.jitter_s:
            return self.delay_s + random.uniform(0, self.jitter_s)
        return self.delay_s


async def serve(host: str, port: int, server: Server) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    listener = await loop.create_server(
        lambda: Connection(server), host, port, backlog=4096, reuse_address=True
    )
    bound = listener.sockets[0].getsockname()[1]
    print(f"bench upstream on http://{host}:{bound}", flush=True)
    async with listener:
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--delay-ms", type=float, default=50.0, help="before the answer")
    parser.add_argument("--chunks", type=int, default=20, help="content chunks per stream")
    parser.add_argument("--chunk-delay-ms", type=float, default=5.0, help="between chunks")
    parser.add_argument(
        "--jitter-ms", type=float, default=0.0, help="add 0..J ms (uniform) to each --delay-ms"
    )
    args = parser.parse_args(argv)
    if args.chunks < 1:
        parser.error("--chunks must be at least 1")
    server = Server(
        args.delay_ms / 1000, args.chunks, args.chunk_delay_ms / 1000, args.jitter_ms / 1000
    )
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(args.host, args.port, server))
    else:
        uvloop.run(serve(args.host, args.port, server))


if __name__ == "__main__":
    main()

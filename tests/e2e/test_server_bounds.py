"""What one connection may cost before any key is checked, over raw sockets against a real
`serve` (issue #11, finding 1): head size and header count, the header and body timeouts, idle
keep-alive, open connections per process; with one worker and with `--workers 2`.

The gateways here run with small timeouts (1 s) and 20 connections, so the suite stays fast.
"""

from __future__ import annotations

import contextlib
import json
import re
import select
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.poll import until_sync
from tests.procs import SEARCH_KEY, Proc, base_config, start_gateway

TIMEOUT_S = 1.0  # header, body and keep-alive timeouts of the gateways below
SLACK_S = 1.0  # how late past a timeout the close may come (timer, scheduling, a loaded box)
MAX_CONNECTIONS = 20
MAX_HEADERS = 100  # the default
MAX_HEAD = 16 * 1024  # the default
MIB = 1024 * 1024


def bounded_config(fake: Proc) -> dict[str, object]:
    return base_config(
        fake.url,
        server__header_timeout_s=TIMEOUT_S,
        server__body_timeout_s=TIMEOUT_S,
        server__keepalive_timeout_s=TIMEOUT_S,
        server__max_connections=MAX_CONNECTIONS,
    )


@pytest.fixture(scope="module")
def gw(fake: Proc) -> Iterator[Proc]:
    proc = start_gateway(bounded_config(fake))
    yield proc
    proc.stop()


@dataclass
class Answer:
    """What the server wrote before it closed (or before the read gave up)."""

    raw: bytes = b""
    closed: bool = False
    at: float = 0.0  # time.monotonic() of the close
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    def parse(self) -> Answer:
        head, _, rest = self.raw.partition(b"\r\n\r\n")
        if head:
            lines = head.decode("latin-1").split("\r\n")
            self.status = int(lines[0].split()[1])
            for line in lines[1:]:
                name, _, value = line.partition(":")
                self.headers[name.strip().lower()] = value.strip()
            self.body = rest[: int(self.headers.get("content-length", len(rest)))]
        return self

    def error(self) -> dict[str, object]:
        assert self.headers.get("content-type") == "application/json", self.raw[:300]
        envelope = json.loads(self.body)
        assert set(envelope) == {"error"}
        assert set(envelope["error"]) == {"message", "type", "param", "code"}
        error: dict[str, object] = envelope["error"]
        return error


def connect(proc: Proc) -> socket.socket:
    host, port = proc.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_until_closed(sock: socket.socket, timeout_s: float = 10.0) -> Answer:
    answer = Answer()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            data = sock.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:
            data = b""
        if not data:
            answer.closed, answer.at = True, time.monotonic()
            break
        answer.raw += data
    return answer.parse()


def read_responses(sock: socket.socket, count: int) -> list[Answer]:
    """`count` whole responses (each with a Content-Length), the connection left open."""
    raw, answers = b"", list[Answer]()
    while len(answers) < count:
        head, sep, rest = raw.partition(b"\r\n\r\n")
        if sep and len(rest) >= _length(head):
            answers.append(Answer(head + sep + rest[: _length(head)]).parse())
            raw = rest[_length(head) :]
            continue
        data = sock.recv(65536)
        assert data, f"closed after {raw!r}"
        raw += data
    return answers


def read_one(sock: socket.socket) -> Answer:
    return read_responses(sock, 1)[0]


def _length(head: bytes) -> int:
    found = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
    return int(found.group(1)) if found else 0


def send_until_refused(sock: socket.socket, chunks: Iterable[bytes], limit_s: float = 10) -> int:
    """Send as fast as the socket takes it, until the server answers or closes; bytes sent."""
    sent = 0
    deadline = time.monotonic() + limit_s
    for chunk in chunks:
        if select.select([sock], [], [], 0)[0] or time.monotonic() > deadline:
            break
        try:
            sock.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            break
        sent += len(chunk)
    return sent


def filler(total: int, size: int = 64 * 1024) -> Iterator[bytes]:
    chunk = b"a" * size
    for _ in range(total // size):
        yield chunk


def refused(proc: Proc) -> dict[str, float]:
    """gateway_connections_refused_total by reason."""
    text = httpx.get(proc.url + "/metrics").text
    found = re.findall(r'gateway_connections_refused_total\{reason="(\w+)"\} (\S+)', text)
    return {reason: float(value) for reason, value in found}


def healthz(proc: Proc) -> int:
    return httpx.get(proc.url + "/healthz", timeout=5).status_code


# First in the module: the count is exact only while no other test's connection is open.
def test_past_max_connections_a_new_connection_gets_503_and_is_closed(gw: Proc) -> None:
    held = [connect(gw) for _ in range(MAX_CONNECTIONS)]
    try:
        for sock in held:  # each one served, so each one is surely counted
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n")
            assert read_one(sock).status == 200
        with connect(gw) as extra:
            answer = read_until_closed(extra, timeout_s=5)
        assert answer.closed
        assert answer.status == 503
        assert answer.headers["retry-after"] == "1"
        assert answer.headers["connection"] == "close"
        assert answer.error()["code"] == "overloaded"
        for sock in held[:5]:
            sock.close()
        # Well before the keep-alive timeout: freed by the closes, not by timeouts.
        assert until_sync(lambda: healthz(gw) == 200, timeout_s=TIMEOUT_S / 2, what="a new one")
    finally:
        for sock in held:
            sock.close()


def test_a_32_mib_header_is_431_and_closed(gw: Proc) -> None:
    before = refused(gw).get("header_too_large", 0)
    with connect(gw) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: gw\r\nX-Big: ")
        send_until_refused(sock, filler(32 * MIB))
        answer = read_until_closed(sock)
    assert answer.closed
    assert answer.status == 431
    assert answer.headers["connection"] == "close"
    error = answer.error()
    assert error["type"] == "invalid_request_error"
    assert error["code"] == "request_header_too_large"
    assert str(MAX_HEAD) in str(error["message"])
    assert refused(gw).get("header_too_large", 0) == before + 1


def vm(pid: int, field_name: str) -> int:
    """A /proc/PID/status figure, in bytes."""
    status = Path(f"/proc/{pid}/status").read_text()
    found = re.search(rf"^{field_name}:\s+(\d+) kB", status, re.M)
    assert found, status
    return int(found.group(1)) * 1024


def test_an_unfinished_200_mb_header_grows_rss_by_at_most_16_mib(gw: Proc) -> None:
    pid = gw.proc.pid
    with contextlib.suppress(OSError):  # reset VmHWM, the peak, to today's RSS
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    start = vm(pid, "VmRSS")
    peak = [start]
    streaming = threading.Event()
    streaming.set()

    def sample() -> None:
        while streaming.is_set():
            peak[0] = max(peak[0], vm(pid, "VmRSS"))
            time.sleep(0.005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        with connect(gw) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: gw\r\nX-Big: ")
            sent = send_until_refused(sock, filler(200 * MIB))
            answer = read_until_closed(sock)
    finally:
        streaming.clear()
        sampler.join()
    grown = max(peak[0], vm(pid, "VmHWM")) - start
    assert sent > MAX_HEAD  # the client did stream past the bound
    assert grown <= 16 * MIB, f"RSS grew by {grown / MIB:.1f} MiB ({sent / MIB:.0f} MiB sent)"
    assert answer.status == 431 and answer.closed


def test_20000_headers_are_431(gw: Proc) -> None:
    head = b"".join(b"X-H%d: v\r\n" % i for i in range(20_000)) + b"\r\n"
    with connect(gw) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: gw\r\n")
        send_until_refused(sock, (head[i : i + 4096] for i in range(0, len(head), 4096)))
        answer = read_until_closed(sock)
    assert answer.status == 431 and answer.closed


def headers_request(count: int) -> bytes:
    """GET /healthz with `count` header lines in all (Host included), a few bytes each."""
    lines = [b"Host: gw", *(b"X-%d: v" % i for i in range(count - 1))]
    return b"GET /healthz HTTP/1.1\r\n" + b"\r\n".join(lines) + b"\r\n\r\n"


def test_max_headers_small_headers_pass_and_one_more_is_431(gw: Proc) -> None:
    assert len(headers_request(MAX_HEADERS + 1)) < MAX_HEAD  # the count is what refuses
    with connect(gw) as sock:
        sock.sendall(headers_request(MAX_HEADERS))
        assert read_one(sock).status == 200
    with connect(gw) as sock:
        sock.sendall(headers_request(MAX_HEADERS + 1))
        answer = read_until_closed(sock)
    assert answer.status == 431 and answer.closed
    assert str(MAX_HEADERS) in str(answer.error()["message"])


def test_big_bodies_keepalive_and_pipelining_pass_untouched(gw: Proc) -> None:
    content = "word " * 60_000  # a 300 kB body: its first read crosses the head's bound
    body = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}]})
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {SEARCH_KEY}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    get = b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n"
    with connect(gw) as sock:
        for _ in range(2):  # the second on the same connection, after the first one's body
            sock.sendall(head.encode() + body.encode())
            answer = read_one(sock)
            assert answer.status == 200, answer.body[:300]
            assert json.loads(answer.body)["usage"]["prompt_tokens"] > 60_000
        sock.sendall(get * 3)  # pipelined, in one write
        assert [a.status for a in read_responses(sock, 3)] == [200, 200, 200]


def test_a_request_that_is_not_http_gets_the_400_envelope(gw: Proc) -> None:
    with connect(gw) as sock:
        sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        answer = read_until_closed(sock)
    assert answer.closed and answer.status == 400
    assert answer.error()["type"] == "invalid_request_error"


def dribble(sock: socket.socket, data: bytes, every_s: float = 0.2) -> Answer:
    """Send one byte every `every_s` until the server answers or closes (or the data ends)."""
    for i in range(len(data)):
        if select.select([sock], [], [], every_s)[0]:
            break
        try:
            sock.sendall(data[i : i + 1])
        except (BrokenPipeError, ConnectionResetError):
            break
    return read_until_closed(sock)


def test_slowloris_headers_get_408_at_the_header_timeout_and_others_are_served(gw: Proc) -> None:
    statuses: list[int] = []
    helper = threading.Timer(TIMEOUT_S / 2, lambda: statuses.append(healthz(gw)))
    with connect(gw) as sock:
        began = time.monotonic()
        helper.start()
        answer = dribble(sock, b"GET /healthz HTTP/1.1\r\nHost: gw\r\nX-Slow: " + b"a" * 100)
    helper.join()
    assert statuses == [200]  # a normal request meanwhile
    assert answer.closed and answer.status == 408
    assert answer.error()["code"] == "request_timeout"
    assert answer.headers["connection"] == "close"
    assert TIMEOUT_S * 0.9 <= answer.at - began <= TIMEOUT_S + SLACK_S


def test_a_connection_that_sends_nothing_is_closed_at_the_header_timeout(gw: Proc) -> None:
    with connect(gw) as sock:
        began = time.monotonic()
        answer = read_until_closed(sock)
    assert answer.closed
    assert answer.raw == b""  # nothing to answer: it asked nothing
    assert TIMEOUT_S * 0.9 <= answer.at - began <= TIMEOUT_S + SLACK_S


def test_a_body_at_one_byte_per_200_ms_gets_408_at_the_body_timeout(gw: Proc) -> None:
    body = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]})
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {SEARCH_KEY}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    with connect(gw) as sock:
        sock.sendall(head.encode())
        began = time.monotonic()
        answer = dribble(sock, body.encode())
    assert answer.closed and answer.status == 408
    assert answer.error()["code"] == "request_timeout"
    assert "body" in str(answer.error()["message"])
    assert TIMEOUT_S * 0.9 <= answer.at - began <= TIMEOUT_S + SLACK_S


def test_an_idle_keepalive_connection_is_closed_after_the_keepalive_timeout(gw: Proc) -> None:
    with connect(gw) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n")
        assert read_one(sock).status == 200
        served = time.monotonic()
        answer = read_until_closed(sock)
    assert answer.closed and answer.raw == b""
    assert TIMEOUT_S * 0.9 <= answer.at - served <= TIMEOUT_S + SLACK_S


def test_the_bounds_hold_with_two_workers(fake: Proc) -> None:
    proc = start_gateway(bounded_config(fake), "--workers", "2")
    try:
        silent = connect(proc)
        began = time.monotonic()
        for _ in range(8):  # each accepted by either worker
            with connect(proc) as sock:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: gw\r\nX-Big: ")
                send_until_refused(sock, filler(MAX_HEAD * 4, 4096))
                assert read_until_closed(sock).status == 431
        with silent:
            answer = read_until_closed(silent)
        assert answer.closed and answer.at - began <= TIMEOUT_S + SLACK_S
        assert refused(proc).get("header_too_large") == 8  # summed over the workers
    finally:
        proc.stop()


CHUNKED_HEAD = (
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
    b"Authorization: Bearer " + SEARCH_KEY.encode() + b"\r\nTransfer-Encoding: chunked\r\n\r\n"
)


def test_an_endless_trailer_is_refused_like_a_head_and_rss_stays_flat(gw: Proc) -> None:
    """After a chunked body's last chunk, httptools reads trailers as headers: it built one's
    value in memory for as long as the client sent it (126 MiB in 30 s)."""
    pid = gw.proc.pid
    start, before = vm(pid, "VmRSS"), refused(gw).get("invalid_http", 0)
    with connect(gw) as sock:
        sock.sendall(CHUNKED_HEAD + b"0\r\nX-Trailer: ")
        sent = send_until_refused(sock, filler(200 * MIB))
        answer = read_until_closed(sock)
    assert sent > MAX_HEAD
    assert vm(pid, "VmRSS") - start <= 16 * MIB
    assert answer.closed and answer.status == 400
    with connect(gw) as sock:  # a short trailer is refused too: it would join the headers
        sock.sendall(CHUNKED_HEAD + b"2\r\n{}\r\n0\r\nX-Late: 1\r\n\r\n")
        assert read_until_closed(sock).status == 400
    assert refused(gw)["invalid_http"] == before + 2


def _chunked(body: bytes, size: int) -> bytes:
    pieces = [body[i : i + size] for i in range(0, len(body), size)]
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


def test_chunk_framing_is_bounded_like_a_head(gw: Proc) -> None:
    def body(content: str) -> bytes:
        return json.dumps(
            {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}]}
        ).encode()

    with connect(gw) as sock:  # a chunk a character, framing 5 times the body: under 16 KiB
        sock.sendall(CHUNKED_HEAD + _chunked(body("hi"), 1))
        assert read_one(sock).status == 200
        sock.sendall(CHUNKED_HEAD + _chunked(body("x" * 300_000), 4096))  # as clients send it
        assert read_one(sock).status == 200
    with connect(gw) as sock:  # 20 kB a byte a chunk: 100 kB of framing, past the bound
        framed = _chunked(body("x" * 20_000), 1)
        # Counted per read, between the head's and the one that ends the body (a read is at
        # most 256 KiB): what matters is framing that keeps coming, so it comes in several reads.
        sock.sendall(CHUNKED_HEAD)
        time.sleep(0.2)  # the head in a read of its own, then framing in reads of their own
        sock.sendall(framed[:60_000])
        time.sleep(0.2)
        with contextlib.suppress(OSError):
            sock.sendall(framed[60_000:])
        answer = read_until_closed(sock)
    assert answer.closed and answer.status == 400


def test_a_431_behind_pipelined_requests_closes_without_a_stray_answer(gw: Proc) -> None:
    get = b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n"
    big = b"GET /healthz HTTP/1.1\r\nHost: gw\r\nX-Big: " + b"a" * 40_000 + b"\r\n\r\n"
    with connect(gw) as sock:  # one write: the 431 is decided while /healthz still runs
        sock.sendall(get + get + big)
        answer = read_until_closed(sock)
    assert answer.closed
    # No 431 inside or before a running request's answer, and no write after the close.
    assert set(re.findall(rb"HTTP/1.1 (\d{3})", answer.raw)) <= {b"200"}, answer.raw[:300]
    assert "unhandled error" not in gw.logs() and "write_eof" not in gw.logs()

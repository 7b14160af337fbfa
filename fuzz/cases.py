"""Hand-made bad requests that schemathesis does not generate, sent over raw sockets.

Each case is sent as exact bytes (so duplicate keys, encodings and escapes reach the gateway as
written) with `Connection: close`, and its answer read to the end. What each case *should* get
is being decided elsewhere (issue #11); this only reports the status it gets today, and fails on
a 5xx, on no answer within the time limit, and on a secret of the run in the answer.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import shlex
import socket
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from answers import error_problem, leak_problem
from procs import LLAMA, PHI

TIMEOUT_S = 30.0
MIB = 1024 * 1024
CHAT = "/v1/chat/completions"
HI = [{"role": "user", "content": "hi"}]


@dataclass(frozen=True)
class Case:
    name: str
    method: str
    path: str
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = (("Content-Type", "application/json"),)
    key: str = "tenant"  # which key of the run is the bearer: tenant, restricted, admin, none
    pipe: str = ""  # a shell command making the body, for the reproducer (when not inline)


@dataclass(frozen=True)
class Answer:
    status: int  # 0: no answer
    headers: list[tuple[str, str]]
    body: bytes
    seconds: float
    failure: str = ""  # why no answer

    def header(self, name: str) -> str:
        return next((v for k, v in self.headers if k.lower() == name), "")


def _chat(model: str, content: str = "hi", **extra: object) -> str:
    fields = {"model": model, "messages": [{"role": "user", "content": content}], **extra}
    return json.dumps(fields)


def _surrogate(body: str) -> bytes:
    """The body with its message content as a lone UTF-16 surrogate escape, `"\\ud800"`."""
    return body.replace('"hi"', '"\\ud800"').encode()


def _surrogates() -> list[Case]:
    in_model = '{"model":"\\ud800","messages":[{"role":"user","content":"hi"}]}'
    unknown = '{"model":"nope-\\ud800","messages":[{"role":"user","content":"hi"}]}'
    return [
        Case("lone surrogate in model", "POST", CHAT, in_model.encode()),
        Case("lone surrogate in a message", "POST", CHAT, _surrogate(_chat(LLAMA))),
        Case("lone surrogate, alias rewrite", "POST", CHAT, _surrogate(_chat("gpt-4o-mini"))),
        Case(
            "lone surrogate, stream_options rewrite",
            "POST",
            CHAT,
            _surrogate(_chat(LLAMA, stream=True, stream_options={})),
        ),
        Case("lone surrogate in an unknown model's name", "POST", CHAT, unknown.encode()),
    ]


def _bodies() -> list[Case]:
    big_int = ',"max_tokens":36893488147419103232}'  # 2**65
    dup_denied = f'{{"model":"{LLAMA}","model":"{PHI}","messages":{json.dumps(HI)}}}'
    dup_allowed = f'{{"model":"{PHI}","model":"{LLAMA}","messages":{json.dumps(HI)}}}'
    plain, streamed = _chat(LLAMA), _chat(LLAMA, stream=True)
    utf16 = (("Content-Type", "application/json; charset=utf-16"),)
    gzipped = (("Content-Type", "application/json"), ("Content-Encoding", "gzip"))
    big = _chat(LLAMA, "a" * (30 * MIB))
    return [
        Case("65-bit integer", "POST", CHAT, (plain[:-1] + big_int).encode()),
        Case(
            "65-bit integer, alias rewrite",
            "POST",
            CHAT,
            (_chat("gpt-4o-mini")[:-1] + big_int).encode(),
        ),
        Case(
            "duplicate model: allowed, then not",
            "POST",
            CHAT,
            dup_denied.encode(),
            key="restricted",
        ),
        Case(
            "duplicate model: not allowed, then allowed",
            "POST",
            CHAT,
            dup_allowed.encode(),
            key="restricted",
        ),
        Case("UTF-16 body", "POST", CHAT, plain.encode("utf-16"), utf16, pipe=_iconv(plain)),
        Case(
            "UTF-16 body, streamed", "POST", CHAT, streamed.encode("utf-16"), pipe=_iconv(streamed)
        ),
        Case(
            "Content-Encoding: gzip",
            "POST",
            CHAT,
            gzip.compress(plain.encode(), mtime=0),
            gzipped,
            pipe=f"printf '%s' {shlex.quote(plain)} | gzip",
        ),
        Case("30 MiB body", "POST", CHAT, big.encode(), pipe=_big_pipe()),
    ]


def _big_pipe() -> str:
    message = '{"role": "user", "content": "a" * 30 * 1024 * 1024}'
    script = f'import json; print(json.dumps({{"model": "{LLAMA}", "messages": [{message}]}}))'
    return f"python3 -c {shlex.quote(script)}"


def _iconv(text: str) -> str:
    return f"printf '%s' {shlex.quote(text)} | iconv -f UTF-8 -t UTF-16"


def _trailing_slashes() -> list[Case]:
    evil = (("Host", "evil.example"),)
    json_evil = (("Content-Type", "application/json"), *evil)
    return [
        Case("trailing slash: POST chat", "POST", CHAT + "/", _chat(LLAMA).encode(), json_evil),
        Case("trailing slash: GET /v1/models/", "GET", "/v1/models/", headers=evil),
        Case("trailing slash: GET /v1/usage/", "GET", "/v1/usage/", headers=evil),
        Case("trailing slash: GET /healthz/", "GET", "/healthz/", headers=evil, key="none"),
        Case(
            "trailing slash: GET /admin/usage/", "GET", "/admin/usage/", headers=evil, key="admin"
        ),
    ]


def cases() -> list[Case]:
    return [*_surrogates(), *_bodies(), *_trailing_slashes()]


def _request(case: Case, host: str, bearer: str | None) -> bytes:
    headers = dict(case.headers)
    headers.setdefault("Host", host)
    if bearer is not None:
        headers["Authorization"] = f"Bearer {bearer}"
    if case.body or case.method == "POST":
        headers["Content-Length"] = str(len(case.body))
    headers["Connection"] = "close"
    head = f"{case.method} {case.path} HTTP/1.1\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return head.encode("latin-1") + b"\r\n" + case.body


def _dechunk(body: bytes) -> bytes:
    out, rest = b"", body
    while rest:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out, rest = out + rest[:size], rest[size + 2 :]
    return out


def _parse(raw: bytes, started: float) -> Answer:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = [(k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in lines[1:])]
    answer = Answer(status, headers, body, time.monotonic() - started)
    if answer.header("transfer-encoding").lower() == "chunked":
        body = _dechunk(body)
    return Answer(status, headers, body, answer.seconds)


def send(base: str, case: Case, bearer: str | None) -> Answer:
    """The case over one fresh connection; its answer, or status 0 and why there is none."""
    url = urlsplit(base)
    started = time.monotonic()
    raw = b""
    try:
        with socket.create_connection((url.hostname, url.port or 80), timeout=TIMEOUT_S) as sock:
            # The server may answer (413) before it has read everything: read that answer.
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                sock.sendall(_request(case, url.netloc, bearer))
            while chunk := sock.recv(65536):
                raw += chunk
                if time.monotonic() - started > TIMEOUT_S:
                    raise TimeoutError
    except TimeoutError:
        return Answer(0, [], raw, time.monotonic() - started, f"no answer in {TIMEOUT_S:g} s")
    except ConnectionResetError:
        if not raw:
            return Answer(0, [], b"", time.monotonic() - started, "connection reset, no answer")
    if not raw.startswith(b"HTTP/"):
        return Answer(0, [], raw, time.monotonic() - started, "closed with no HTTP answer")
    return _parse(raw, started)


def reproducer(case: Case) -> str:
    """A one-line curl for the case ($GATEWAY and $KEY stand for a gateway and its key)."""
    key = {"none": "", "admin": "$ADMIN_KEY", "restricted": "$RESTRICTED_KEY"}.get(case.key, "$KEY")
    parts = ["curl", "-sS", "-i", "-X", case.method, f'"$GATEWAY{case.path}"']
    if key:
        parts += ["-H", f'"Authorization: Bearer {key}"']
    parts += ["-H " + shlex.quote(f"{k}: {v}") for k, v in case.headers]
    if case.pipe:
        return f"{case.pipe} | {' '.join(parts)} --data-binary @-"
    if case.body:
        parts.append("--data-binary " + shlex.quote(case.body.decode()))
    return " ".join(parts)


def verdict(answer: Answer, secrets: list[str]) -> tuple[str, str]:
    """(failure, note): a failure fails the run; a note is reported only."""
    if answer.status == 0:
        return answer.failure, ""
    leak = leak_problem(answer.headers, answer.body, secrets)
    if leak is not None:
        return leak, ""
    if answer.status >= 500:
        return f"{answer.status} (a server error)", ""
    note = error_problem(answer.status, answer.header("content-type"), answer.body) or ""
    if answer.header("location"):
        note = f"Location: {answer.header('location')}"
    return "", note

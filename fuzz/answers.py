"""What every answer of the gateway must be, as plain functions over status, headers and body.

Two rules, shared by the schemathesis checks (`fuzz/hooks.py`) and the hand-made cases
(`fuzz/cases.py`):

- an error answer (4xx, 5xx) is OpenAI's envelope `{"error": {"message", "type", "param",
  "code"}}` with a JSON content type, and so is an error event inside an SSE stream;
- no answer carries a secret of the run (the W&B key, a gateway key), in a header or the body,
  whole or in part.

Each returns the problem in words, or None.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from typing import Any

SECRETS_ENV = "FUZZ_SECRETS"  # the run's secrets, one a line, handed to schemathesis's process


def envelope_problem(data: Any) -> str | None:
    """Why `data` (a parsed body) is not OpenAI's error envelope, or None."""
    if not isinstance(data, dict) or set(data) != {"error"}:
        keys = sorted(data) if isinstance(data, dict) else type(data).__name__
        return f"the body is not {{'error': {{...}}}} alone (got {keys})"
    error = data["error"]
    if not isinstance(error, dict):
        return f"`error` is not an object (got {type(error).__name__})"
    missing = {"message", "type", "param", "code"} - set(error)
    if missing:
        return f"`error` lacks {sorted(missing)}"
    if not isinstance(error["message"], str) or not isinstance(error["type"], str):
        return "`error.message` and `error.type` must be strings"
    for field in ("param", "code"):
        if error[field] is not None and not isinstance(error[field], str):
            return f"`error.{field}` must be a string or null (got {error[field]!r})"
    return None


def error_problem(status: int, content_type: str, body: bytes) -> str | None:
    """Why an answer with this status is not a proper error answer, or None."""
    if status < 400:
        return _stream_problem(body) if content_type.startswith("text/event-stream") else None
    if content_type.split(";")[0].strip().lower() != "application/json":
        return f"{status} with content type {content_type!r}, not application/json"
    try:
        data = json.loads(body)
    except ValueError:
        return f"{status} with a body that is not JSON: {body[:200]!r}"
    problem = envelope_problem(data)
    return None if problem is None else f"{status}: {problem}"


def _stream_problem(body: bytes) -> str | None:
    """An SSE stream's error event (`data: {"error": ...}`) must hold the envelope too."""
    for line in body.splitlines():
        if not line.startswith(b"data:") or b'"error"' not in line:
            continue
        try:
            data = json.loads(line[5:])
        except ValueError:
            continue  # not JSON: an SDK sees no error event there, nothing to judge
        if isinstance(data, dict) and "error" in data:
            problem = envelope_problem(data)
            if problem is not None:
                return f"an SSE error event: {problem}"
    return None


def secrets_from_env() -> list[str]:
    return [line for line in os.environ.get(SECRETS_ENV, "").splitlines() if line]


def fragments(secrets: Iterable[str]) -> list[str]:
    """What to look for: each secret whole, and each half of it (a truncated key is still a
    leak). The run's secrets are 40 characters or more, so a half is never a chance match."""
    found = []
    for secret in secrets:
        half = len(secret) // 2
        found += [secret, secret[:half], secret[half:]]
    return found


def leak_problem(
    headers: Iterable[tuple[str, str]], body: bytes, secrets: Iterable[str]
) -> str | None:
    """Which secret-looking fragment of the run appears in the answer, or None."""
    wanted = fragments(secrets)
    for name, value in headers:
        for fragment in wanted:
            if fragment in value:
                return f"header {name} holds a secret of the run ({fragment[:6]}...)"
    for fragment in wanted:
        if fragment.encode() in body:
            return f"the body holds a secret of the run ({fragment[:6]}...)"
    return None


def selftest(secrets: list[str]) -> list[str]:
    """The rules that fail to refuse a made-up bad answer (none, or the run cannot trust them)."""
    good = b'{"error":{"message":"m","type":"t","param":null,"code":null}}'
    refused = {
        "plain-text error": error_problem(400, "text/plain", good),
        "FastAPI's own 404": error_problem(404, "application/json", b'{"detail":"Not Found"}'),
        "envelope without code": error_problem(
            500, "application/json", b'{"error":{"message":"m"}}'
        ),
        "SSE error event": error_problem(200, "text/event-stream", b'data: {"error":"x"}\n\n'),
        "key in a header": leak_problem([("x-debug", secrets[0])], b"", secrets),
        "half a key in a body": leak_problem([], secrets[-1][:-5].encode(), secrets),
    }
    broken = [name for name, problem in refused.items() if problem is None]
    if error_problem(400, "application/json; charset=utf-8", good) is not None:
        broken.append("a good envelope")
    return broken

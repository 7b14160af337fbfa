"""One-line curl reproducers for the requests the fuzz run found at fault.

The run's gateway and keys are gone when the run ends, so a reproducer names them as shell
variables: `$GATEWAY` (e.g. http://127.0.0.1:8080 of `make demo`) and `$KEY` (a tenant key, or
an admin key for /admin/...). A body too long for a command line, or not UTF-8, is written
beside the findings and sent with `--data-binary @file`.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

BASE_ENV = "FUZZ_BASE"  # the run's gateway URL, replaced by $GATEWAY
BODIES_ENV = "FUZZ_BODIES"  # where long bodies go
# What every HTTP client adds by itself: left out, to keep the line short.
_NOISE = {
    "accept",
    "accept-encoding",
    "connection",
    "content-length",
    "host",
    "user-agent",
    "x-schemathesis-testcaseid",
}
_INLINE_MAX = 2000


def _url(url: str) -> str:
    base = os.environ.get(BASE_ENV, "")
    return "$GATEWAY" + url[len(base) :] if base and url.startswith(base) else url


def _body_argument(body: bytes) -> str:
    try:
        text = body.decode()
    except UnicodeDecodeError:
        text = None
    if text is not None and len(text) <= _INLINE_MAX and "\x00" not in text:
        return "--data-binary " + shlex.quote(text)
    folder = Path(os.environ.get(BODIES_ENV) or tempfile.gettempdir())
    folder.mkdir(parents=True, exist_ok=True)
    file = folder / f"body-{hashlib.sha256(body).hexdigest()[:12]}.bin"
    file.write_bytes(body)
    return f"--data-binary @{shlex.quote(str(file))}"


def curl_line(
    method: str | None,
    url: str | None,
    headers: Mapping[str, str],
    body: bytes,
    keys: Iterable[str] = (),
) -> str:
    """The request as a curl command; an `Authorization: Bearer <one of keys>` reads `$KEY`."""
    bearers = {f"Bearer {key}" for key in keys}
    parts = ["curl", "-sS", "-i", "-X", method or "GET", f'"{_url(url or "")}"']
    for name, value in headers.items():
        if name.lower() in _NOISE:
            continue
        if name.lower() == "authorization" and value in bearers:
            parts += ["-H", '"Authorization: Bearer $KEY"']
        else:
            parts += ["-H", shlex.quote(f"{name}: {value}")]
    if body:
        parts.append(_body_argument(body))
    return " ".join(parts)

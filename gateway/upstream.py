"""The wire to W&B: one shared aiohttp session, error classification, and what of W&B's error
messages a client may read. Which headers go up and come back is `gateway.headers`'.

aiohttp rather than httpx's default transport on this path: httpx's pool scans every pooled
connection per request and collapses under concurrency (+378 ms p50 at 64 connections, measured).
Redirects are never followed (`allow_redirects=False` on every request: aiohttp would resend the
body and `OpenAI-Project` wherever a `Location` points); a 3xx is a 502.

`classify()` (an upstream answer) and `wire_failure()` (an exception on the way) both return a
`Verdict`: pass the answer through, retry, or replace it with a gateway error that says whose
problem it is. They never raise. An upstream 401/403 is about the gateway's own W&B key or
location, never the caller's key, so the caller gets a 502.

W&B's own words reach a client only through `client_message()`: cut to `MESSAGE_CHARS`, without
control characters, and without what names the account rather than the tenant (its key or
anything key-like, another entity/project than the tenant's, a named user, team or entity, an
e-mail address, a URL's path).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import aiohttp
import orjson

from gateway.config import Account, UpstreamSettings
from gateway.errors import (
    GatewayError,
    InsufficientQuota,
    RequestRefused,
    UpstreamAuthError,
    UpstreamConcurrency,
    UpstreamConnectError,
    UpstreamError,
    UpstreamOverloaded,
    UpstreamTimeout,
)

MESSAGE_CHARS = 300  # of a W&B error message, what a client may read
_SCAN_CHARS = 4000  # of a longer one, what is scrubbed before it is cut
REDACTED = "[redacted]"
# control, format and bidi characters, and runs of white space: one space each
_CONTROL = re.compile(r"[\s\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]+")
_KEY_LIKE = re.compile(r"(?i)\b(?:bearer|basic)\s+\S+|\b[A-Za-z0-9_]{32,}\b")
_EMAIL = re.compile(r"(?<![\w.+-])[\w.+-]+@[\w-]+(?:\.[\w-]+)+")  # from a word's start: linear
_URL_PATH = re.compile(r"(?i)\b(https?://[^/\s?#]+)[/?#]\S*")
_NAMED = re.compile(
    r"(?i)\b(entity|team|user|username|org|organi[sz]ation|account)"
    r"(?:(\s*[:=]\s*|\s+)(['\"`])(.{1,200}?)\3|(\s*[:=]\s*)([\w.@-]{1,200}))"
)
# entity/project, not inside a path or a URL; a model id has this shape too, and so do these
_PROJECT = re.compile(r"(?<![\w/:.@-])([A-Za-z0-9][\w.-]*)/[\w.-]*\w(?![\w/])")
_NOT_ENTITIES = frozenset(
    {"application", "text", "image", "audio", "video", "multipart", "http", "and"}
)


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the gateway does with an attempt that did not bring a 200: pass the answer through
    (`error` None: the caller's own business, a 400 about its request, a 404 for a model), fail
    with `error`, or, when `retry` names a cause (a bounded label), try again and answer `error`
    only if no attempt is left."""

    error: GatewayError | None
    retry: str | None = None


PASS = Verdict(None)


def _error(body: bytes) -> tuple[str, dict[str, object]]:
    """W&B's message, as it wrote it (not yet fit for a client: see `client_message`), and its
    error object when it sent OpenAI's envelope."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body[:_SCAN_CHARS].decode("utf-8", "replace"), {}
    if isinstance(data, dict):
        err = data.get("error", data)
        if isinstance(err, dict):
            return str(err.get("message", "")), err
        if isinstance(err, str):
            return err, {}
    return "", {}


def client_message(message: str, account: Account, project: str, model: str = "") -> str:
    """W&B's `message` as a client of `project` may read it: nothing that names the account
    (see the module docstring), no control characters, at most MESSAGE_CHARS characters.
    `project` (the one the request used) and `model` (its upstream id) stay."""
    text = message[:_SCAN_CHARS]
    if account.api_key:
        text = text.replace(account.api_key, REDACTED)
    text = _KEY_LIKE.sub(REDACTED, text)
    text = _EMAIL.sub(REDACTED, text)
    text = _URL_PATH.sub(r"\1/...", text)
    entity = project.partition("/")[0]

    def named(match: re.Match[str]) -> str:
        value = match.group(4) or match.group(6)
        if value == entity:
            return match.group(0)
        if match.group(3):
            quote = match.group(3)
            return f"{match.group(1)}{match.group(2)}{quote}{REDACTED}{quote}"
        return f"{match.group(1)}{match.group(5)}{REDACTED}"

    text = _NAMED.sub(named, text)
    text = _PROJECT.sub(lambda m: m.group(0) if _kept(m, project, model) else "[project]", text)
    text = _CONTROL.sub(" ", text).strip()
    if len(text) > MESSAGE_CHARS:
        text = text[: MESSAGE_CHARS - 3].rstrip() + "..."
    return text


def _kept(match: re.Match[str], project: str, model: str) -> bool:
    return match.group(0) in (project, model) or match.group(1).lower() in _NOT_ENTITIES


def refused(status: int, body: bytes, account: Account, project: str, model: str) -> GatewayError:
    """An upstream 4xx about the caller's own request, as the caller gets it: W&B's status, and
    its message (through `client_message`), `param` and `code` in OpenAI's envelope."""
    message, fields = _error(body)
    text = client_message(message, account, project, model)
    error = RequestRefused(text or f"W&B refused the request ({status}).", status)
    for name in ("param", "code"):
        value = fields.get(name)
        if isinstance(value, str) and value:
            setattr(error, name, client_message(value, account, project, model)[:64])
    return error


def classify(status: int, body: bytes, account: Account, project: str, model: str = "") -> Verdict:
    """What an upstream non-200 answer means for the caller. Retried: W&B's concurrency 429,
    503 and every other 5xx. Never retried: quota (402, or a 429 that says quota), 401/403
    (the gateway's own key or location: another attempt gets the same), a redirect, and the 4xx
    that pass through (`refused`). `project` and `model` are the request's, which W&B's message
    may name (`client_message`)."""
    raw = _error(body)[0]

    def said(otherwise: str) -> str:  # scrubbed only for the answers that quote W&B
        return client_message(raw, account, project, model) or otherwise

    if status == 402 or (status == 429 and "quota" in raw.lower()):
        return Verdict(
            InsufficientQuota(
                "W&B says the account's credits or spending limit are exhausted "
                f"(account {account.name!r}): {said('quota exceeded')}. "
                "Retrying will not help; ask the gateway's operators."
            )
        )
    if status == 401:
        return Verdict(
            UpstreamAuthError(
                f"W&B rejected the gateway's credentials for account {account.name!r} "
                f"(its API key, or the project {project!r}). This is the gateway's "
                "configuration, not your key: tell the gateway's operators."
            )
        )
    if status == 403:
        return Verdict(
            UpstreamAuthError(
                "W&B refused the gateway's requests: country, region, or territory not "
                "supported. This is where the gateway runs, not your key: tell the gateway's "
                "operators."
            )
        )
    if status == 429:
        concurrency = UpstreamConcurrency(
            "W&B's concurrency limit was reached for the gateway's account even after "
            "retries; another client may share its key. Retry later.",
            headers={"retry-after": "1", "retry-after-ms": "1000"},
        )
        return Verdict(concurrency, retry="upstream_concurrency")
    if status == 503:
        overloaded = UpstreamOverloaded(f"W&B is overloaded (503): {said('try again later')}")
        return Verdict(overloaded, retry="upstream_5xx")
    if status >= 500:
        failed = UpstreamError(f"W&B failed with {status}: {said('server error')}")
        return Verdict(failed, retry="upstream_5xx")
    if 300 <= status < 400:  # its Location is W&B's business with the account: never relayed
        return Verdict(
            UpstreamError(
                f"W&B answered with a redirect ({status}), which the gateway does not follow: "
                "tell the gateway's operators (upstream.base_url)."
            )
        )
    if status < 400:  # W&B never answers 1xx/204 here: nothing a caller can use
        return Verdict(UpstreamError(f"W&B answered with an unexpected status {status}"))
    return PASS


WireError = TimeoutError | aiohttp.ClientError
# Caught around every upstream call; what each means is `wire_failure`'s to say.
WIRE_ERRORS = (TimeoutError, aiohttp.ClientError)


def wire_failure(exc: WireError, waiting_for: str, read_timeout_s: float) -> Verdict:
    """What an exception on the wire to W&B means; `waiting_for` completes "W&B sent no ..."
    for the timeout's message.

    The order of the checks carries meaning. aiohttp's timeouts are both `TimeoutError` and
    `aiohttp.ClientError`: a *connect* timeout means W&B never got the request, so it is
    retried like any connection failure; any other timeout means W&B has the request and is
    silent: it may still be working (and billing), so it is never retried. Only then is a
    `ClientError` (refused, reset, DNS, a cut body) a connection failure.
    """
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return _unreachable(exc)
    if isinstance(exc, TimeoutError):
        return Verdict(
            UpstreamTimeout(
                f"W&B sent no {waiting_for} within upstream.read_timeout_s ({read_timeout_s:g}s)"
            )
        )
    return _unreachable(exc)


def never_sent(exc: WireError) -> bool:
    """W&B did not work on the request: the connection to it was never made, or it was closed
    before any answer (mostly a pooled keep-alive connection W&B had just closed as idle).
    After any other failure (a timeout, a connection reset) it may have, and may bill it."""
    return isinstance(
        exc,
        aiohttp.ClientConnectorError
        | aiohttp.ConnectionTimeoutError
        | aiohttp.ServerDisconnectedError,
    )


def _unreachable(exc: BaseException) -> Verdict:
    error = UpstreamConnectError(f"Cannot reach W&B ({type(exc).__name__}).")
    return Verdict(error, retry="upstream_connect")


@dataclass(frozen=True)
class UpstreamClient:
    """The shared session and where it points."""

    session: aiohttp.ClientSession
    settings: UpstreamSettings

    @classmethod
    def create(cls, settings: UpstreamSettings) -> UpstreamClient:
        timeout = aiohttp.ClientTimeout(
            total=None,
            connect=settings.connect_timeout_s,
            sock_connect=settings.connect_timeout_s,
            sock_read=settings.read_timeout_s,
        )
        connector = aiohttp.TCPConnector(
            limit=settings.max_connections, ttl_dns_cache=300, keepalive_timeout=30
        )
        session = aiohttp.ClientSession(
            connector=connector,
            timeout=timeout,
            auto_decompress=True,
            skip_auto_headers=("User-Agent",),
            cookie_jar=aiohttp.DummyCookieJar(),  # upstream cookies are nobody's business here
            raise_for_status=False,
        )
        return cls(session, settings)

    def url(self, path: str) -> str:
        return self.settings.base_url + path

    async def close(self) -> None:
        await self.session.close()

"""Which headers cross the gateway, each way: allow-lists, never deny-lists.

Up, to W&B: what OpenAI's SDKs send (`UP`, and every `x-stainless-*`), the tenant's own
`tenants.NAME.forward_headers`, then the gateway's own: the account's `Authorization`,
`OpenAI-Project`, `X-Request-Id` and `Content-Type`. A header the request names in its
`Connection:` is hop-by-hop and dropped, allowed or not. Some names may never be forwarded,
whatever a tenant's config asks (`never_forwarded`: checked when the config loads, and here).

Down, to the client: of W&B's headers only `content-type` and `openai-processing-ms`. The rest
(the account's organisation and rate limits, cookies, HSTS, CORS, `alt-svc`, W&B's request id)
is between W&B and the account, not the tenant's business. The gateway's own headers
(`x-request-id`, `x-gateway-queue-ms`, `x-ratelimit-*`, a `Retry-After` it decides) are added
where its responses start.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.config import Account

# What openai-python, openai-node and the other OpenAI SDKs send besides credentials. The
# gateway sets Content-Type itself (every body it sends is JSON).
UP = frozenset({b"accept", b"user-agent", b"openai-beta", b"traceparent", b"tracestate"})
_TRACE_CONTEXT = (b"traceparent", b"tracestate")
UP_PREFIX = b"x-stainless-"  # the SDKs' own: language, version, retry count, timeout

# W&B's headers a client still gets: (as aiohttp names them, as ASGI sends them).
_DOWN = (("content-type", b"content-type"), ("openai-processing-ms", b"openai-processing-ms"))

NEVER_FORWARDED = frozenset(
    {
        # credentials, and what the gateway sets itself
        "authorization",
        "proxy-authorization",
        "api-key",
        "x-api-key",
        "wandb-api-key",
        "cookie",
        "openai-organization",
        "openai-project",
        "x-request-id",
        "content-type",
        # hop-by-hop and framing: aiohttp writes its own
        "host",
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "expect",
        "content-length",
        "content-encoding",
        "accept-encoding",
        # who the client is and how it got here: W&B may read these (its location check)
        "forwarded",
        "via",
        "x-real-ip",
        "x-client-ip",
        "x-cluster-client-ip",
        "true-client-ip",
        "cf-connecting-ip",
        "fastly-client-ip",
        "client-ip",
        "x-original-url",
        "x-rewrite-url",
        "x-original-host",
        "x-host",
        # another method or path than the gateway sends
        "x-http-method-override",
        "x-http-method",
        "x-method-override",
    }
)
NEVER_FORWARDED_PREFIXES = ("x-forwarded-", "proxy-")
NEVER_FORWARDED_WHY = (
    "may never be forwarded upstream: credentials and the headers the gateway sets itself, "
    "hop-by-hop and framing headers, and forwarding or identity headers (x-forwarded-*, "
    "forwarded, x-real-ip, via, method and URL overrides)"
)


def never_forwarded(name: str) -> bool:
    """Whether a lower-case header name may never go upstream, whoever asks."""
    return name in NEVER_FORWARDED or name.startswith(NEVER_FORWARDED_PREFIXES)


def upstream_headers(
    raw: list[tuple[bytes, bytes]],
    account: Account,
    project: str,
    request_id: str,
    forward: frozenset[str] = frozenset(),
    trace: tuple[str, str | None] | None = None,
) -> dict[str, str]:
    """The caller's headers that may go up (`forward`: the tenant's own names), then the
    gateway's, with the account's key. `trace`, the gateway's span as `traceparent` and
    `tracestate`, replaces the caller's: its parent's state when the caller's `traceparent`
    was valid, none when the gateway began a trace of its own (W3C: a new trace drops it)."""
    kept: list[tuple[bytes, bytes]] = []
    hop: set[bytes] = set()
    for name, value in raw:
        name = name.lower()
        if trace is not None and name in _TRACE_CONTEXT:
            continue
        if name in UP or name.startswith(UP_PREFIX):
            kept.append((name, value))
        elif name == b"connection":
            hop.update(token.strip() for token in value.lower().split(b","))
        elif forward and (text := name.decode("latin-1")) in forward and not never_forwarded(text):
            kept.append((name, value))
    headers = {
        name.decode("latin-1"): value.decode("latin-1") for name, value in kept if name not in hop
    }
    headers["Authorization"] = f"Bearer {account.api_key}"
    headers["OpenAI-Project"] = project
    headers["X-Request-Id"] = request_id
    headers["Content-Type"] = "application/json"
    if trace is not None:
        headers["traceparent"] = trace[0]
        if trace[1]:
            headers["tracestate"] = trace[1]
    return headers


def response_headers(
    upstream: Mapping[str, str], *, stream: bool = False
) -> list[tuple[bytes, bytes]]:
    """W&B's headers that the client gets (a stream's content type is the gateway's own)."""
    relayed: list[tuple[bytes, bytes]] = []
    for name, raw in _DOWN[1:] if stream else _DOWN:
        value = upstream.get(name)
        if value is not None and (name != "openai-processing-ms" or value.isdigit()):
            relayed.append((raw, value.encode("latin-1", "replace")))
    return relayed

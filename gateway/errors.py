"""One error tree, rendered in one place.

Everything the gateway refuses or fails at is a `GatewayError`. Each class fixes the status,
OpenAI's `type` and `code`, and a bounded `reason` for metrics and the access log; an instance
adds the message, the `param` at fault and the headers SDKs act on (`Retry-After`,
`retry-after-ms`, `x-should-retry`). Messages never carry a key.

    GatewayError                  500 server_error        internal   a bug (`internal_error`)
    ├── RequestRefused            4xx invalid_request_error bad_request  the framework's own 4xx
    ├── BadRequest                400 invalid_request_error bad_request  the body, a field
    │   ├── PayloadTooLarge       413 payload_too_large
    │   ├── BodyError             400 invalid_request_error bad_request  no one JSON object
    │   ├── UnsupportedEncoding   415 unsupported_content_encoding  a Content-Encoding
    │   ├── HeaderTooLarge        431 request_header_too_large  head over the server's bounds
    │   └── RequestTimeout        408 request_timeout  headers or body too slow to arrive
    ├── NotFound                  404 invalid_request_error bad_request  unknown path
    │   └── ModelNotFound         404 model_not_found
    ├── MethodNotAllowed          405 invalid_request_error bad_request
    ├── AuthenticationError       401 invalid_api_key     auth       no key, unknown key
    │   └── KeyRefused            401 key_expired, key_revoked, tenant_unknown  a known key
    ├── PermissionDenied          403 permission_error    auth       admin route, project, price
    ├── RateLimited               429 rate_limit_exceeded (a base: retry after the headers' wait)
    │   ├── QueueTimeout          429 rate_limit_exceeded queue_timeout  no slot in time
    │   ├── TenantQueueFull       429 rate_limit_exceeded tenant_queue_full  max_queue, bodies
    │   └── UpstreamConcurrency   429 rate_limit_exceeded upstream_concurrency  W&B's 429
    ├── InsufficientQuota         429 insufficient_quota  upstream_quota  W&B credits gone
    │   └── BudgetExceeded        429 insufficient_quota  budget_exceeded the tenant's budget
    ├── Unavailable               503 unavailable         unavailable  draining, Redis down
    │   └── Overloaded            503 overloaded          overloaded   bodies held past the cap
    └── UpstreamError             502 upstream_error      upstream_5xx  W&B failed
        ├── UpstreamAuthError     502 upstream_auth_error upstream_auth  W&B refused our key
        ├── UpstreamOverloaded    503 upstream_overloaded upstream_5xx
        ├── UpstreamConnectError  502 upstream_unreachable upstream_connect
        ├── UpstreamTimeout       504 upstream_timeout    upstream_timeout
        └── StreamInterrupted     (200 sent) stream_interrupted stream_cut  cut mid-stream
            ├── StreamStalled     (200 sent) stream_interrupted upstream_timeout
            └── StreamShutDown    (200 sent) shutting_down  shutting_down

Two renderings, and every path goes through them: `render(error)` before a response started
(status, headers and the JSON envelope `{"error": {"message", "type", "param", "code"}}`), and
`sse_event(error)` once a stream is under way (a `data:` event with the same envelope).
"""

from __future__ import annotations

import math
from typing import ClassVar

import orjson

RawHeaders = list[tuple[bytes, bytes]]

NO_RETRY = {"x-should-retry": "false"}


class GatewayError(Exception):
    status: int = 500
    type: ClassVar[str] = "server_error"
    code: str | None = None
    reason: ClassVar[str] = "internal"  # bounded: a metric label

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.headers = dict(headers or {})

    def body(self) -> bytes:
        """OpenAI's error body."""
        error = {"message": self.message, "type": self.type, "param": self.param, "code": self.code}
        return orjson.dumps({"error": error})


def render(error: GatewayError) -> tuple[int, RawHeaders, bytes]:
    """The whole response for an error: status, headers, body."""
    body = error.body()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", b"%d" % len(body)),
        *((k.encode("latin-1"), v.encode("latin-1")) for k, v in error.headers.items()),
    ]
    return error.status, headers, body


def sse_event(error: GatewayError) -> bytes:
    """The error as the last event of a stream whose 200 is already sent."""
    return b"data: " + error.body() + b"\n\n"


def retry_headers(seconds: float) -> dict[str, str]:
    """What openai-python reads for its wait: `retry-after-ms` first, then `Retry-After`."""
    return {
        "retry-after": str(max(1, math.ceil(seconds))),
        "retry-after-ms": str(max(1, round(seconds * 1000))),
    }


def internal_error(request_id: str) -> GatewayError:
    """A bug's answer: the request id to quote, never the traceback."""
    return GatewayError(f"The gateway had an internal error (request id {request_id}).")


class RequestRefused(GatewayError):
    """A 4xx decided elsewhere (the framework's router, or W&B about the request itself): the
    status is the instance's, the type always the client's fault."""

    type = "invalid_request_error"
    reason = "bad_request"

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class BadRequest(GatewayError):
    status = 400
    type = "invalid_request_error"
    reason = "bad_request"


class PayloadTooLarge(BadRequest):
    status = 413
    code = "payload_too_large"


class UnsupportedEncoding(BadRequest):
    status = 415
    code = "unsupported_content_encoding"


class HeaderTooLarge(BadRequest):
    """The request line and headers past `server.max_header_bytes`, or more header lines than
    `server.max_headers`: answered by the HTTP server (`gateway.http_guard`), the app never sees
    the request."""

    status = 431
    code = "request_header_too_large"


class RequestTimeout(BadRequest):
    """The headers not in within `server.header_timeout_s`, or the body within
    `server.body_timeout_s`: answered by the HTTP server, then the connection is closed."""

    status = 408
    code = "request_timeout"


class NotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    reason = "bad_request"


class ModelNotFound(NotFound):
    code = "model_not_found"

    def __init__(self, model: str) -> None:
        super().__init__(
            f"The model `{model}` does not exist or you do not have access to it.", param="model"
        )


class MethodNotAllowed(GatewayError):
    status = 405
    type = "invalid_request_error"
    reason = "bad_request"


class AuthenticationError(GatewayError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"
    reason = "auth"


class KeyRefused(AuthenticationError):
    """A key the gateway knows, no longer accepted; its id goes to the access log."""

    def __init__(self, message: str, *, key_id: str = "-", code: str = "key_revoked") -> None:
        super().__init__(message, code=code)
        self.key_id = key_id


class PermissionDenied(GatewayError):
    status = 403
    type = "permission_error"
    reason = "auth"


class RateLimited(GatewayError):
    """Too many at once: SDKs retry these, after the wait the headers say."""

    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"
    reason = "rate_limited"


class QueueTimeout(RateLimited):
    """No slot within limiter.queue_timeout_s: retryable, with an honest Retry-After."""

    reason = "queue_timeout"

    def __init__(self, message: str, *, waited_s: float, retry_after_s: float) -> None:
        super().__init__(message, headers=retry_headers(retry_after_s))
        self.waited_s = waited_s


class TenantQueueFull(RateLimited):
    """The tenant already has `max_queue` requests (or half the body budget) in this process:
    refused before its body is read."""

    reason = "tenant_queue_full"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers=retry_headers(1))


class InsufficientQuota(GatewayError):
    """Out of credits or over a budget: retrying cannot help, so tell SDKs not to."""

    status = 429
    type = "insufficient_quota"
    code = "insufficient_quota"
    reason = "upstream_quota"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers=NO_RETRY)


class BudgetExceeded(InsufficientQuota):
    reason = "budget_exceeded"


class UpstreamConcurrency(RateLimited):
    """W&B's own concurrency 429, still there after every retry."""

    reason = "upstream_concurrency"


class Unavailable(GatewayError):
    status = 503
    code = "unavailable"
    reason = "unavailable"


class Overloaded(Unavailable):
    """The process holds `server.max_buffered_body_bytes` of request bodies: come back soon."""

    code = "overloaded"
    reason = "overloaded"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers=retry_headers(1))


class UpstreamError(GatewayError):
    """Upstream failed in a way that is not the caller's fault."""

    status = 502
    code = "upstream_error"
    reason = "upstream_5xx"


class UpstreamAuthError(UpstreamError):
    """W&B refused the gateway's own credentials or location: the operator's problem."""

    code = "upstream_auth_error"
    reason = "upstream_auth"


class UpstreamOverloaded(UpstreamError):
    status = 503
    code = "upstream_overloaded"


class UpstreamConnectError(UpstreamError):
    code = "upstream_unreachable"
    reason = "upstream_connect"


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "upstream_timeout"
    reason = "upstream_timeout"


class StreamInterrupted(UpstreamError):
    """A stream that had started ended early: only ever an SSE event, its 200 is sent."""

    code = "stream_interrupted"
    reason = "stream_cut"


class StreamStalled(StreamInterrupted):
    """W&B went silent mid-stream for upstream.read_timeout_s."""

    reason = "upstream_timeout"


class StreamShutDown(StreamInterrupted):
    """The shutdown grace ended with the stream still running."""

    code = "shutting_down"
    reason = "shutting_down"

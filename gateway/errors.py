"""One error tree, one envelope.

Everything the gateway refuses is a `GatewayError` subclass, rendered once as OpenAI's
`{"error": {"message", "type", "param", "code"}}`, with the status and headers SDKs act on
(`Retry-After`, `retry-after-ms`, `x-should-retry`). Messages never carry a key.
"""

from __future__ import annotations

import math

import orjson


class GatewayError(Exception):
    status = 500
    type = "server_error"
    code: str | None = None
    # Gateway-internal cause, used for metrics; bounded set of strings.
    reason = "internal"

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
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type_: str, param: str | None, code: str | None) -> bytes:
    return orjson.dumps(
        {"error": {"message": message, "type": type_, "param": param, "code": code}}
    )


def retry_headers(seconds: float) -> dict[str, str]:
    """What openai-python reads for its wait: `retry-after-ms` first, then `Retry-After`."""
    return {
        "retry-after": str(max(1, math.ceil(seconds))),
        "retry-after-ms": str(max(1, round(seconds * 1000))),
    }


NO_RETRY = {"x-should-retry": "false"}


class BadRequest(GatewayError):
    status = 400
    type = "invalid_request_error"
    reason = "bad_request"


class PayloadTooLarge(BadRequest):
    status = 413
    code = "payload_too_large"


class NotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    reason = "bad_request"


class ModelNotFound(NotFound):
    code = "model_not_found"


class MethodNotAllowed(GatewayError):
    status = 405
    type = "invalid_request_error"
    reason = "bad_request"


class AuthenticationError(GatewayError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"
    reason = "auth"


class PermissionDenied(GatewayError):
    status = 403
    type = "permission_error"
    reason = "auth"


class QueueTimeout(GatewayError):
    """No slot within limiter.queue_timeout_s: retryable, with an honest Retry-After."""

    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"
    reason = "queue_timeout"
    waited_s = 0.0


class InsufficientQuota(GatewayError):
    """Out of credits or over a budget: retrying cannot help, so tell SDKs not to."""

    status = 429
    type = "insufficient_quota"
    code = "insufficient_quota"
    reason = "upstream_quota"

    def __init__(self, message: str, **kw: object) -> None:
        super().__init__(message, headers=dict(NO_RETRY), **kw)  # type: ignore[arg-type]


class BudgetExceeded(InsufficientQuota):
    reason = "budget_exceeded"


class UpstreamError(GatewayError):
    """Upstream failed in a way that is not the caller's fault."""

    status = 502
    type = "server_error"
    code = "upstream_error"
    reason = "upstream_5xx"


class UpstreamAuthError(UpstreamError):
    """W&B refused the gateway's own credentials or location: the operator's problem."""

    code = "upstream_auth_error"
    reason = "upstream_auth"


class UpstreamOverloaded(UpstreamError):
    status = 503
    code = "upstream_overloaded"


class UpstreamConcurrency(GatewayError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"
    reason = "upstream_concurrency"


class UpstreamConnectError(UpstreamError):
    code = "upstream_unreachable"
    reason = "upstream_connect"


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "upstream_timeout"
    reason = "upstream_timeout"


class Unavailable(GatewayError):
    status = 503
    code = "unavailable"
    reason = "unavailable"

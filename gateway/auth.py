"""Who is calling: gateway key -> tenant. Refuses by default.

Every path needs a tenant key except the explicit `PUBLIC_PATHS`, each with its reason, and
`/admin/...`, which needs an admin key (`server.admin_keys`) and refuses tenant keys. Keys are
compared by their SHA-256 hash, the only form the config and the key store hold (see
gateway.keyring); no key is ever logged or echoed, only its id.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.errors import AuthenticationError, GatewayError, KeyRefused
from gateway.keyring import Grant, Keyring
from gateway.metrics import UNKNOWN_TENANT
from gateway.record import RequestRecord
from gateway.responses import send_error

PUBLIC_PATHS = {
    "/healthz": "liveness probe: must answer without credentials",
    "/readyz": "readiness probe: must answer without credentials",
    "/metrics": "Prometheus scrapes without credentials; labels hold no keys",
    "/openapi.json": "the API's shape, the same for everyone; holds no tenant's data",
    "/ui": "the console's page, the same for everyone; holds no data (it reads the JSON APIs "
    "with the key its user types)",
}
# The console's other files (routers/ui.py serves an allow-list, any other path is a 404): the
# same for everyone, code and styles only.
PUBLIC_PREFIX = "/ui/"


def public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIX)


def bearer_key(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            text: str = value.decode("latin-1")
            scheme, _, key = text.partition(" ")
            if scheme.lower() == "bearer" and key.strip():
                return key.strip()
            return None
    return None


ADMIN_PREFIX = "/admin/"
NO_KEY = "You didn't provide an API key. Send your gateway key as `Authorization: Bearer <key>`."


def authenticate_admin(ring: Keyring, scope: Scope) -> str:
    """The admin key's id, or the refusal."""
    key = bearer_key(scope)
    if key is None:
        raise AuthenticationError("Admin routes need an admin key as `Authorization: Bearer`.")
    return ring.admin(key)


def authenticate(ring: Keyring, scope: Scope) -> Grant:
    key = bearer_key(scope)
    if key is None:
        raise AuthenticationError(NO_KEY)
    return ring.grant(key)


class AuthMiddleware:
    """Says who calls in the request's record, or answers 401/403 itself. A refusal counts in
    `gateway_requests_total` and `gateway_errors_total` (tenant and model `-`), whatever the
    path, so that an error ratio divides matching sets."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or public(scope["path"]):
            await self.app(scope, receive, send)
            return
        runtime = scope["app"].state.runtime
        ring = runtime.keys.ring  # one snapshot per request, even across a reload
        record: RequestRecord = scope["state"]["record"]
        try:
            if scope["path"].startswith(ADMIN_PREFIX):
                record.key_id = authenticate_admin(ring, scope)
            else:
                grant = authenticate(ring, scope)
                record.authenticated(grant.tenant, ring.settings, grant.key_id)
        except GatewayError as exc:
            if isinstance(exc, KeyRefused):
                record.key_id = exc.key_id  # who is still calling with an ended key
            record.refused(exc)
            metrics = runtime.metrics
            metrics.child(metrics.requests, UNKNOWN_TENANT, "-", str(exc.status)).inc()
            metrics.child(metrics.errors, UNKNOWN_TENANT, "-", exc.reason).inc()
            await send_error(send, exc)
            return
        await self.app(scope, receive, send)

"""`RequestRecord`: one request as its access-log line tells it, a typed value in
`scope["state"]["record"]`.

The request-context middleware makes it and writes the status the client got; auth says who
called (and the settings snapshot the request runs under); the handler that answers says what
happened (`finished` for a chat completion, `refused` for an error). Each writes only its own
fields, through these methods.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway.config import Settings, Tenant

if TYPE_CHECKING:
    from gateway.errors import GatewayError
    from gateway.exchange import Result
    from gateway.tracing.notes import Trace


@dataclass(slots=True)
class RequestRecord:
    request_id: str
    status: int = 0  # the response's status, 0 until it starts
    tenant: Tenant | None = None
    key_id: str | None = None  # the caller's key (a tenant's or an admin's), never the key
    settings: Settings | None = None  # the snapshot auth used; a reload does not change it
    model: str = "-"  # the bounded metric label, once the body named one
    queue_ms: int | None = None
    attempts: int | None = None
    reason: str | None = None  # the bounded error cause, as in gateway_errors_total
    trace: Trace | None = None  # a chat request's span, when tracing is on (not in the line)

    def authenticated(self, tenant: Tenant, settings: Settings, key_id: str) -> None:
        self.tenant = tenant
        self.settings = settings
        self.key_id = key_id

    def refused(self, error: GatewayError) -> None:
        self.reason = error.reason

    def finished(self, result: Result) -> None:
        self.queue_ms = round(result.queue_s * 1000)
        self.attempts = result.attempts
        self.reason = result.reason

    def line(self, method: str, path: str, elapsed_ms: float) -> str:
        """The access-log line: `path` as the client sent it, already made safe to log."""
        tenant = self.tenant.name if self.tenant is not None else "-"
        queue = "-" if self.queue_ms is None else self.queue_ms
        attempts = "-" if self.attempts is None else self.attempts
        return (
            f"{self.request_id} {method} {path} {self.status} {elapsed_ms:.1f}ms "
            f"tenant={tenant} key={self.key_id or '-'} model={self.model} queue_ms={queue} "
            f"attempts={attempts} "
            f"reason={self.reason or '-'}"
        )

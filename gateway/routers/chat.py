"""`POST /v1/chat/completions`, the hot path, as plain ASGI: a thin handler over values.

    body --chat_request()--> Call --Budgets.check()--> Proxy.chat() --> Result --settle()
                                                         (slot, Budgets.admit(), charge)

The handler reads the body, turns it into a `Call` (or refuses it), checks the budget, hands the
exchange to the proxy, and settles what came back. Whatever the client sees is written by the
`Responder`; whatever the access log says comes from the `Result`.
"""

from __future__ import annotations

import time
from typing import Any

from starlette.types import Receive, Scope, Send

from gateway.admission import Ticket
from gateway.chat_body import BodyReaderGone, ChatBody
from gateway.chat_request import chat_request, request_project
from gateway.config import Tenant
from gateway.errors import GatewayError, Overloaded
from gateway.exchange import CLIENT_CLOSED, Call, Result
from gateway.record import RequestRecord
from gateway.responses import ClientGone, Responder, content_length
from gateway.runtime import Runtime

PATH = "/v1/chat/completions"

_ERROR = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorEnvelope"}}}


def openapi_post(
    operation: str, summary: str, body: dict[str, Any], ok: dict[str, Any], errors: dict[int, str]
) -> dict[str, Any]:
    """The /openapi.json entry of a path dispatched before FastAPI (see app.py)."""
    return {
        "post": {
            "tags": ["openai"],
            "summary": summary,
            "operationId": operation,
            "requestBody": {"required": True, "content": {"application/json": {"schema": body}}},
            "responses": {
                "200": ok,
                **{
                    str(status): {"description": what, "content": _ERROR}
                    for status, what in errors.items()
                },
            },
        }
    }


# The body is OpenAI's; the gateway reads only the fields named, and passes the rest on.
OPENAPI = openapi_post(
    "create_chat_completion",
    "Chat completions (OpenAI's API), streamed with `stream: true`",
    {
        "type": "object",
        "required": ["model", "messages"],
        "properties": {
            "model": {"type": "string"},
            "messages": {"type": "array", "items": {"type": "object"}},
            "stream": {"type": "boolean"},
            "stream_options": {"type": "object"},
        },
        "additionalProperties": True,
    },
    {
        "description": "A chat completion, or its SSE stream",
        "headers": {
            **{
                name: {"schema": {"type": "integer"}}
                for name in (
                    "x-gateway-queue-ms",
                    "x-ratelimit-limit-requests",
                    "x-ratelimit-remaining-requests",
                )
            },
            "x-gateway-cost-usd": {
                "description": "what the answer cost, added to the tenant's spend "
                "(whole answers of priced models)",
                "schema": {"type": "string", "pattern": r"^\d+\.\d+$"},
            },
        },
        "content": {"application/json": {}, "text/event-stream": {}},
    },
    {
        400: "the body or a field is invalid",
        401: "no gateway key, or an unknown one",
        403: "a project or model the tenant may not use",
        404: "a model the tenant may not use, or unknown upstream",
        405: "another method than POST",
        413: "the body is over server.max_body_bytes",
        415: "a Content-Encoding other than identity",
        429: "no slot in time, the tenant's max_queue, W&B's limit, quota, budget",
        502: "W&B failed, refused the gateway's key, or cannot be reached",
        503: "shutting down, too many request bodies held, or W&B overloaded",
        504: "W&B was silent for upstream.read_timeout_s",
    },
)


class ChatCompletions:
    """The handler; `ResponsesCreate` (routers/responses.py) is the same exchange with another
    way of reading the request (`call`) and of writing the answer (`responder`)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        runtime: Runtime = scope["app"].state.runtime
        record: RequestRecord = scope["state"]["record"]
        tenant, settings = record.tenant, record.settings
        assert tenant is not None and settings is not None  # auth let it through
        start = time.monotonic()
        client = self.responder(send, receive, runtime, tenant)
        call: Call | None = None
        if runtime.tracing is not None:
            account = settings.accounts[tenant.account]
            project = _project(scope, tenant)
            record.trace = runtime.tracing.start(scope["headers"], account, tenant, project)
        try:
            headers = scope["headers"]
            limit = settings.server.max_body_bytes
            declared = content_length(headers, limit)
            # Admitted before a byte of the body is read: a tenant past its bounds costs only
            # this answer, its body stays on the socket.
            with runtime.admission.enter(tenant, declared) as ticket:
                body = await client.read_body(declared, limit, ticket)
                call = await self.call(runtime, body, headers, record, start, client, ticket)
                del body  # the call holds the one body sent upstream
                record.model = call.label
                runtime.budgets.check(tenant)  # the exact check comes with the slot
                result = await runtime.proxy.chat(call, client)
        except GatewayError as exc:
            await client.error(exc)
            result = Result(client.status, exc.reason, time.monotonic() - start)
        except ClientGone:
            result = Result(CLIENT_CLOSED, "client_disconnect", time.monotonic() - start)
        record.finished(result)
        runtime.recent.add(record, call, result)
        trace = record.trace
        ended_ns = 0 if trace is None else time.time_ns()  # the span ends with the answer
        await runtime.accounting.settle(tenant, call, result)
        if trace is not None:
            assert runtime.tracing is not None
            await runtime.tracing.finish(trace, ended_ns, record.key_id or "-", call, result)

    def responder(
        self, send: Send, receive: Receive, runtime: Runtime, tenant: Tenant
    ) -> Responder:
        return Responder(send, receive)

    async def call(
        self,
        runtime: Runtime,
        body: bytes,
        headers: list[tuple[bytes, bytes]],
        record: RequestRecord,
        start: float,
        client: Responder,
        ticket: Ticket,
    ) -> Call:
        """The request as the `Call` the proxy runs, or the GatewayError refusing it; what it
        holds beyond the body it read goes on `ticket`."""
        return await chat_call(runtime, body, headers, record, start)


async def chat_call(
    runtime: Runtime,
    body: bytes,
    headers: list[tuple[bytes, bytes]],
    record: RequestRecord,
    start: float,
) -> Call:
    """`chat_request` for a chat completions body, its top level read off the event loop."""
    assert record.tenant is not None and record.settings is not None
    return chat_request(
        body,
        headers,
        record.tenant,
        record.settings,
        request_id=record.request_id,
        key_id=record.key_id or "-",
        start=start,
        label=runtime.catalog.label,
        parsed=await read_body(runtime, body),
        trace=record.trace,
    )


def _project(scope: Scope, tenant: Tenant) -> str:
    """The W&B project a request names, for its span's route: the tenant's own when it names
    one it may not use (it is refused, and traced, there)."""
    try:
        return request_project(scope["headers"], tenant)
    except GatewayError:
        return tenant.project


async def read_body(runtime: Runtime, body: bytes) -> ChatBody:
    """The body's top level, read strictly (off the event loop when it is big)."""
    try:
        return await runtime.body_reader.read(body)  # a BodyError is a 400 of its own
    except BodyReaderGone:
        raise Overloaded("The gateway could not read the request body: retry it.") from None

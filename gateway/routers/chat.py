"""`POST /v1/chat/completions` as plain ASGI: the hot path, kept free of framework layers.

The body is read once, parsed only for `model`, `messages` and `stream`, and forwarded as sent
(re-encoded only when an alias changed `model`). While the request queues or streams, a watcher
listens for the client going away and cancels the work, which closes the upstream request and
releases the slot at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable
from typing import Any

import orjson
from starlette.types import Receive, Scope, Send

from gateway.accounting import settle
from gateway.catalog import Catalog, model_not_found
from gateway.config import Tenant
from gateway.errors import (
    BadRequest,
    BudgetExceeded,
    GatewayError,
    PayloadTooLarge,
    PermissionDenied,
    QueueTimeout,
)
from gateway.proxy import Call, ClientStalled, Outcome
from gateway.responses import send_error
from gateway.runtime import Runtime
from gateway.upstream import upstream_headers
from gateway.usage import Usage, spend_usd

logger = logging.getLogger(__name__)

CLIENT_CLOSED = 499
BUDGET_READ_TIMEOUT_S = 0.5  # nginx's status for "client closed the request", for logs and metrics


class ClientGone(Exception):
    """The client disconnected before the response was complete."""


class ChatCompletions:
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        runtime: Runtime = scope["app"].state.runtime
        state = scope["state"]
        tenant: Tenant = state["tenant"]
        start = time.monotonic()
        out = Outcome()
        label = "-"
        call: Call | None = None
        try:
            body = await read_body(scope, receive, runtime.settings.server.max_body_bytes)
            call = prepare(runtime, scope, tenant, body, start)
            label = state["model"] = call.label
            if tenant.monthly_budget_usd is not None:
                await check_budget(runtime, tenant)
            await until_disconnect(runtime.proxy.chat(call, send, out), receive, out)
        except GatewayError as exc:
            out.reason = exc.reason
            if isinstance(exc, QueueTimeout):
                out.queue_s = exc.waited_s
            if not out.committed:
                out.status = exc.status
                await send_error(send, exc)
        except (ClientGone, ClientStalled):
            out.reason = "client_disconnect"
            out.status = CLIENT_CLOSED
        finally:
            state["queue_ms"] = round(out.queue_s * 1000)
            state["attempts"] = out.attempts
            state["error_reason"] = out.reason
            await settle(runtime, tenant, call, label, out, time.monotonic() - start)


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    for name, value in scope["headers"]:
        if name == b"content-length" and value.isdigit() and int(value) > limit:
            raise _too_large(limit)
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        parts.append(chunk)
        if not message.get("more_body", False):
            return b"".join(parts)


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"Request body is larger than the gateway accepts ({limit} bytes, server.max_body_bytes)."
    )


def _parse(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    try:  # orjson refuses some valid JSON (integers past 64 bits): the exact, slower parser
        return json.loads(body)
    except (ValueError, RecursionError):
        raise BadRequest(
            "We could not parse the JSON body of your request. Send a JSON object "
            "with `Content-Type: application/json`."
        ) from None


def _rewrite(body: bytes, changes: dict[str, Any]) -> bytes:
    """The body with only these top-level fields changed. The stdlib keeps every number exactly
    as sent (orjson would turn integers past 64 bits into floats); this runs only for aliases
    and for streams whose `stream_options` must be edited."""
    try:
        data = json.loads(body)
        data.update(changes)
        return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()
    except RecursionError:
        raise BadRequest("The request body is nested too deeply.") from None


_ONE = Usage(1, 1)
_ASK_USAGE = b'"stream_options":{"include_usage":true},'


def _usage_changes(data: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """How to make a stream carry usage: (top-level changes, whether to hide it from the client).

    The gateway always asks upstream for the final usage chunk, so that every stream is counted;
    when the client did not ask for it, the relay removes it again.
    """
    options = data.get("stream_options")
    if not data.get("stream") or not isinstance(options, dict | None):
        return {}, False
    if options is None:
        return {"stream_options": {"include_usage": True}}, True
    if options.get("include_usage") is True:
        return {}, False
    return {"stream_options": {**options, "include_usage": True}}, True


async def check_budget(runtime: Runtime, tenant: Tenant) -> None:
    budget = tenant.monthly_budget_usd
    store = runtime.usage
    spent = store.known_spent(tenant.name)  # usually; the first read of a month goes to Redis
    if spent is None:
        try:
            async with asyncio.timeout(BUDGET_READ_TIMEOUT_S):
                spent = await store.spent(tenant.name)
        except Exception:  # fail open: an unreachable store must not stop every request
            store.failures += 1
            if store.failures == 1 or store.failures % 1000 == 0:
                logger.warning("cannot read spend (%d times); budgets not enforced", store.failures)
            return
    if budget is not None and spent >= budget:
        raise BudgetExceeded(
            f"Tenant {tenant.name!r} has reached its monthly budget of ${budget:.2f} "
            f"(spent ${spent:.2f} this month, UTC). Ask your platform team to raise it."
        )


def prepare(runtime: Runtime, scope: Scope, tenant: Tenant, body: bytes, start: float) -> Call:
    """Check the few fields the gateway needs and build the upstream call."""
    settings = scope["state"].get("settings") or runtime.settings  # the one auth used
    data = _parse(body)
    if not isinstance(data, dict):
        raise BadRequest("The request body must be a JSON object.")
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("You must provide a model parameter (a string).", param="model")
    messages = data.get("messages")
    if not isinstance(messages, list):
        raise BadRequest("`messages` must be a list of message objects.", param="messages")
    stream = data.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise BadRequest("`stream` must be true or false.", param="stream")

    resolved = settings.resolve_model(model)
    if not Catalog.allowed(tenant, resolved):
        raise model_not_found(model)
    if (
        tenant.monthly_budget_usd is not None
        and spend_usd(settings.models.get(resolved), _ONE) is None
    ):
        raise PermissionDenied(
            f"The model `{model}` has no price in the gateway's config, so tenant "
            f"{tenant.name!r}, which has a monthly budget, may not use it.",
            param="model",
            code="model_not_priced",
        )
    changes, strip_usage = _usage_changes(data)
    if resolved != model:
        changes["model"] = resolved
    if changes.keys() == {"stream_options"} and "stream_options" not in data:
        start_at = body.index(b"{") + 1  # cheap: insert the field, leave every byte else as sent
        body = body[:start_at] + _ASK_USAGE + body[start_at:]
    elif changes:
        body = _rewrite(body, changes)

    project = tenant.project
    for name, value in scope["headers"]:
        if name == b"openai-project":
            wanted = value.decode("latin-1").strip()
            if wanted != tenant.project:
                if wanted not in tenant.projects:
                    raise PermissionDenied(
                        f"Tenant {tenant.name!r} may not use project {wanted!r}.",
                        code="project_not_allowed",
                    )
                project = wanted
            break

    account = settings.accounts[tenant.account]
    request_id: str = scope["state"]["request_id"]
    return Call(
        request_id=request_id,
        tenant=tenant,
        account=account,
        model=resolved,
        label=runtime.catalog.label(resolved),
        stream=bool(stream),
        body=body,
        headers=upstream_headers(scope["headers"], account, project, request_id),
        deadline=start + settings.limiter.queue_timeout_s,
        start=start,
        strip_usage=strip_usage,
        messages=messages,
    )


async def until_disconnect(work: Awaitable[None], receive: Receive, out: Outcome) -> None:
    """Run `work` in this task; if the client disconnects first, cancel it and raise ClientGone.

    One watcher task per request, no second task for the work: the watcher cancels this task,
    and only while the work is still running (a flag set with no await in between).
    """
    task = asyncio.current_task()
    assert task is not None
    running = True
    gone = False

    async def watch() -> None:
        nonlocal gone
        await _disconnect(receive)
        if running and not out.complete:
            gone = True
            task.cancel()

    watcher = asyncio.ensure_future(watch())
    try:
        await work
    except asyncio.CancelledError:
        if gone:
            task.uncancel()
            raise ClientGone from None
        raise
    finally:
        running = False
        watcher.cancel()


async def _disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass

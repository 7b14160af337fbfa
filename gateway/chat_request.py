"""`chat_request()`: a chat completion's body and headers in, the upstream `Call` out, or a
`GatewayError` raised. Pure: no I/O, no clock, nothing kept.

Only the fields the gateway needs are read (`model`, `messages`, `stream`, `stream_options`);
the body goes upstream as sent, but for `model` (an alias resolved) and `stream_options` (the
gateway always asks for a stream's usage, so every stream is counted; when the client did not
ask for it, the relay removes it again).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import orjson

from gateway.catalog import Catalog
from gateway.config import Settings, Tenant
from gateway.errors import BadRequest, ModelNotFound, PermissionDenied
from gateway.exchange import Call
from gateway.upstream import upstream_headers
from gateway.usage import Usage, spend_usd

_ONE = Usage(1, 1)
_ASK_USAGE = b'"stream_options":{"include_usage":true},'


def chat_request(
    body: bytes,
    headers: list[tuple[bytes, bytes]],
    tenant: Tenant,
    settings: Settings,
    *,
    request_id: str,
    start: float,
    label: Callable[[str], str],
) -> Call:
    """Check the request against the tenant's rights and build the upstream call.

    `settings` is the snapshot the request was authenticated under (a reload does not change a
    request under way); `label` bounds the model name for metrics (`Catalog.label`).
    """
    data = _parse(body)
    model, messages, stream = _fields(data)
    resolved = settings.resolve_model(model)
    if not Catalog.allowed(tenant, resolved):
        raise ModelNotFound(model)
    price = settings.models.get(resolved)
    if tenant.monthly_budget_usd is not None and spend_usd(price, _ONE) is None:
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
        at = body.index(b"{") + 1  # cheap: insert the field, leave every other byte as sent
        body = body[:at] + _ASK_USAGE + body[at:]
    elif changes:
        body = _rewrite(body, changes)
    account = settings.accounts[tenant.account]
    project = _project(headers, tenant)
    return Call(
        request_id=request_id,
        tenant=tenant,
        account=account,
        model=resolved,
        label=label(resolved),
        price=price,
        stream=stream,
        body=body,
        headers=upstream_headers(headers, account, project, request_id, tenant.forward_headers),
        start=start,
        deadline=start + settings.limiter.queue_timeout_s,
        strip_usage=strip_usage,
        messages=messages,
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


def _fields(data: Any) -> tuple[str, list[Any], bool]:
    """`model`, `messages` and `stream`, or the BadRequest naming the field at fault."""
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
    return model, messages, bool(stream)


def _usage_changes(data: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """How to make a stream carry usage: (top-level changes, whether to hide it from the client)."""
    options = data.get("stream_options")
    if not data.get("stream") or not isinstance(options, dict | None):
        return {}, False
    if options is None:
        return {"stream_options": {"include_usage": True}}, True
    if options.get("include_usage") is True:
        return {}, False
    return {"stream_options": {**options, "include_usage": True}}, True


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


def _project(headers: list[tuple[bytes, bytes]], tenant: Tenant) -> str:
    """The W&B project: the tenant's own, or another it may use, chosen by `OpenAI-Project`."""
    for name, value in headers:
        if name == b"openai-project":
            wanted = value.decode("latin-1").strip()
            if wanted == tenant.project or wanted in tenant.projects:
                return wanted
            raise PermissionDenied(
                f"Tenant {tenant.name!r} may not use project {wanted!r}.",
                code="project_not_allowed",
            )
    return tenant.project

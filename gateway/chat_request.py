"""`chat_request()`: a chat completion's body and headers in, the upstream `Call` out, or a
`GatewayError` raised. Pure: no I/O, no clock, nothing kept.

Only the fields the gateway needs are read (`model`, `messages`, `stream`, `stream_options`;
see `chat_body`); the body goes upstream as sent, but for `model` (an alias resolved) and
`stream_options` (the gateway always asks for a stream's usage, so every stream is counted;
when the client did not ask for it, the relay removes it again) and `cache_salt` (added, the
tenant's own, unless the client sent one or the tenant's `cache_salt` is false), each
changed by one splice.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
from collections.abc import Callable
from typing import TYPE_CHECKING

import orjson

from gateway.catalog import Catalog
from gateway.chat_body import ChatBody, read, splice
from gateway.config import Model, Settings, Tenant
from gateway.cost import priced
from gateway.errors import BadRequest, ModelNotFound, PermissionDenied
from gateway.exchange import Call
from gateway.headers import upstream_headers

if TYPE_CHECKING:
    from gateway.tracing.notes import Trace

_ASK_USAGE = b'"stream_options":{"include_usage":true},'
_SALT_INFO = b"inference-gateway cache_salt\0"


def chat_request(
    body: bytes,
    headers: list[tuple[bytes, bytes]],
    tenant: Tenant,
    settings: Settings,
    *,
    request_id: str,
    key_id: str,
    start: float,
    label: Callable[[str], str],
    parsed: ChatBody | None = None,
    trace: Trace | None = None,
) -> Call:
    """Check the request against the tenant's rights and build the upstream call.

    `settings` is the snapshot the request was authenticated under (a reload does not change a
    request under way); `label` bounds the model name for metrics (`Catalog.label`); `parsed`
    is `chat_body.read(body)` when the caller read it already (off the loop, for a big body);
    `trace` is the request's span, when tracing is on.
    """
    if parsed is None:
        parsed = read(body)
    model, stream = _fields(parsed)
    resolved = settings.resolve_model(model)
    if not Catalog.allowed(tenant, resolved):
        raise ModelNotFound(model)
    price = settings.models.get(resolved)
    _check_priced(tenant, model, price)
    changes, strip_usage = _usage_changes(parsed) if stream else ([], False)
    if resolved != model:
        changes.append((*parsed.spans["model"], orjson.dumps(resolved)))
    account = settings.accounts[tenant.account]
    if tenant.cache_salt and "cache_salt" not in parsed.fields:
        salt = b'"cache_salt":"%s",' % cache_salt(account.api_key, tenant.name).encode()
        changes.append((parsed.open_at, parsed.open_at, salt))
    if changes:
        body = splice(body, changes)
    project = request_project(headers, tenant)
    context = (trace.traceparent, trace.tracestate) if trace is not None else None
    return Call(
        request_id=request_id,
        tenant=tenant,
        key_id=key_id,
        account=account,
        project=project,
        model=resolved,
        label=label(resolved),
        price=price,
        stream=stream,
        body=body,
        headers=upstream_headers(
            headers, account, project, request_id, tenant.forward_headers, context
        ),
        start=start,
        deadline=start + settings.limiter.queue_timeout_s,
        strip_usage=strip_usage,
        prompt_tokens=parsed.prompt_tokens,
        read_fields=parsed.fields,
        trace=trace,
    )


def _check_priced(tenant: Tenant, model: str, price: Model | None) -> None:
    """A tenant with a budget may use only priced models: its spend must be counted."""
    if tenant.monthly_budget_usd is not None and not priced(price):
        raise PermissionDenied(
            f"The model `{model}` has no price in the gateway's config, so tenant "
            f"{tenant.name!r}, which has a monthly budget, may not use it.",
            param="model",
            code="model_not_priced",
        )


@functools.lru_cache(maxsize=1024)
def cache_salt(secret: str, tenant: str) -> str:
    """The tenant's `cache_salt`: W&B shares cached prompt prefixes only between requests with
    the same salt, so tenants on one account cannot time each other's prompts. Stable (the
    cache keeps working), secret (a tenant cannot make another's), and not the tenant's name:
    an HMAC of the name under the account's W&B key."""
    return hmac.new(secret.encode(), _SALT_INFO + tenant.encode(), hashlib.sha256).hexdigest()[:32]


def _fields(parsed: ChatBody) -> tuple[str, bool]:
    """`model` and `stream`, or the BadRequest naming the field at fault."""
    model = parsed.fields.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("You must provide a model parameter (a string).", param="model")
    if not _is_text(model):
        raise BadRequest("`model` must be valid Unicode text.", param="model")
    if parsed.messages_is_list is not True:
        raise BadRequest("`messages` must be a list of message objects.", param="messages")
    stream = parsed.fields.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise BadRequest("`stream` must be true or false.", param="stream")
    return model, bool(stream)


def _is_text(value: str) -> bool:
    """No lone surrogate (which `"\\ud800"` in JSON gives): it can be written back as UTF-8."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _usage_changes(parsed: ChatBody) -> tuple[list[tuple[int, int, bytes]], bool]:
    """How to make a stream carry usage: (splices, whether to hide usage from the client).

    The client's own `stream_options` object is written anew, as the gateway read it: a key it
    gave twice then reaches W&B once, as the gateway understood it."""
    if "stream_options" not in parsed.fields:  # the first member, every other byte as sent
        return [(parsed.open_at, parsed.open_at, _ASK_USAGE)], True
    options = parsed.fields["stream_options"]
    if options is None:
        options = {}
    elif not isinstance(options, dict):
        return [], False  # upstream refuses a bad one as it would without the gateway
    try:
        value = orjson.dumps({**options, "include_usage": True})
    except orjson.JSONEncodeError:  # a lone surrogate, an integer past 64 bits
        raise BadRequest(
            "`stream_options` holds a value the gateway cannot pass on.", param="stream_options"
        ) from None
    return [(*parsed.spans["stream_options"], value)], options.get("include_usage") is not True


def request_project(headers: list[tuple[bytes, bytes]], tenant: Tenant) -> str:
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

"""The key admin API (admin keys only): create, list, show, revoke and rotate tenant keys.

    POST   /admin/keys                {tenant, name, expires_at | expires_in_s}  -> 201 + the key
    GET    /admin/keys[?tenant=NAME]  every key, config keys included (`source: config`)
    GET    /admin/keys/{id}           one, with its spend and tokens this month
    DELETE /admin/keys/{id}           revoke now
    POST   /admin/keys/{id}/rotate    {grace_s, expires_at | expires_in_s} -> 201 + a new key

A key is shown only in the answer that made it. Config keys are listed but read-only: they are
revoked by editing the config. Every change is one audit line (`admin action=... key=...
tenant=... by=<admin key id>`) and counts in `gateway_admin_actions_total{action}`.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Awaitable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Query, Request

from gateway.errors import BadRequest, Unavailable, retry_headers
from gateway.key_service import not_found
from gateway.key_store import KeyStoreError
from gateway.keys import KEY_ID_RE, ApiKey, rfc3339
from gateway.logs import AUDIT_LOGGER
from gateway.routers import admin_input as read
from gateway.routers.deps import RuntimeDep
from gateway.routers.schemas import (
    CreateKeyBody,
    KeyDetail,
    KeyList,
    NewKey,
    RevokedKey,
    RotatedKey,
    RotateKeyBody,
    errors,
    json_body,
)
from gateway.runtime import Runtime
from gateway.usage import empty_key_usage, month

audit = logging.getLogger(AUDIT_LOGGER)
T = TypeVar("T")
router = APIRouter(tags=["keys"], responses=errors(400, 401, 403, 503))

CREATE_FIELDS = {"tenant", "name", "expires_at", "expires_in_s"}
ROTATE_FIELDS = {"grace_s", "expires_at", "expires_in_s"}


@router.post(
    "/admin/keys",
    status_code=201,
    response_model=NewKey,
    responses=errors(413),
    openapi_extra=json_body(CreateKeyBody),
)
async def create_key(request: Request, runtime: RuntimeDep) -> dict[str, Any]:
    """A new key for a tenant; the key is in this answer only."""
    body = await read.read_object(request, CREATE_FIELDS)
    tenant = read.text(body, "tenant", "the tenant the key is for")
    if tenant not in runtime.settings.tenants:
        raise _unknown_tenant(runtime, tenant)
    name = read.name(body)
    expires_at = read.expiry(body, time.time())
    record, secret = await _store(runtime.keys.create(tenant, name, expires_at))
    _audit(request, runtime, "create", record)
    return _made(record, secret)


@router.get("/admin/keys", response_model=KeyList)
async def list_keys(
    runtime: RuntimeDep,
    tenant: Annotated[str | None, Query(description="only this tenant's keys")] = None,
) -> dict[str, Any]:
    """Every key, newest first; config keys (no dates) last."""
    await _fresh(runtime)
    ring = runtime.keys.ring
    held = tenant in ring.settings.tenants or any(r.tenant == tenant for r in ring.records.values())
    if tenant is not None and not held:
        raise _unknown_tenant(runtime, tenant)
    used = await runtime.keys.last_used()
    api = sorted(ring.records.values(), key=lambda r: -r.created_at)
    data = [_api_info(r, used) for r in api if tenant in (None, r.tenant)]
    data += [
        _config_info(key_id, name, used)
        for key_id, name in sorted(ring.config_keys().items(), key=lambda kv: (kv[1], kv[0]))
        if tenant in (None, name)
    ]
    return {"object": "list", "data": data}


@router.get("/admin/keys/{key_id}", response_model=KeyDetail, responses=errors(404))
async def get_key(key_id: str, runtime: RuntimeDep) -> dict[str, Any]:
    """One key, with what it spent this month."""
    await _fresh(runtime)
    ring = runtime.keys.ring
    used = await runtime.keys.last_used()
    record = ring.records.get(key_id)
    if record is not None:
        info, tenant = _api_info(record, used), record.tenant
    elif (config_tenant := ring.config_keys().get(key_id)) is not None:
        info, tenant = _config_info(key_id, config_tenant, used), config_tenant
    else:
        raise not_found(key_id)
    of = month()
    spent = (await runtime.usage.by_key(tenant, of)).get(key_id, {})
    return {**info, "usage": {"month": of, **empty_key_usage(), **spent}}


@router.delete("/admin/keys/{key_id}", response_model=RevokedKey, responses=errors(404))
async def revoke_key(key_id: str, request: Request, runtime: RuntimeDep) -> dict[str, Any]:
    """Refused from now on, on every replica within seconds."""
    _api_key_id(key_id)
    record = await _store(runtime.keys.revoke(key_id))
    _audit(request, runtime, "revoke", record)
    return {"object": "gateway.key", "id": key_id, "revoked": True, "revoked_at": _at(record)}


@router.post(
    "/admin/keys/{key_id}/rotate",
    status_code=201,
    response_model=RotatedKey,
    responses=errors(404, 413),
    openapi_extra=json_body(RotateKeyBody, required=False),
)
async def rotate_key(key_id: str, request: Request, runtime: RuntimeDep) -> dict[str, Any]:
    """A new key for the same tenant and name; the old one works `grace_s` more (default 0).
    The new key lives as long as the old one did, unless `expires_at`/`expires_in_s` say."""
    _api_key_id(key_id)
    body = await read.read_object(request, ROTATE_FIELDS, required=False)
    grace_s = read.grace(body)
    explicit = "expires_at" in body or "expires_in_s" in body
    expires_at = read.expiry(body, time.time())
    new, secret, old = await _store(
        runtime.keys.rotate(key_id, grace_s, expires_at, inherit=not explicit)
    )
    _audit(request, runtime, "rotate", new, f" replaces={old.id} grace_s={grace_s:g}")
    return {**_made(new, secret), "replaces": old.id, "replaced_until": rfc3339(old.ends_at)}


async def _store(operation: Awaitable[T]) -> T:
    try:
        return await operation
    except KeyStoreError as exc:
        raise _unavailable(exc) from None


async def _fresh(runtime: Runtime) -> None:
    """Reads see what any replica changed up to now (the store reached if it can be)."""
    with contextlib.suppress(KeyStoreError):  # else the view as last read: better than a 503
        await runtime.keys.refresh()


def _unavailable(exc: KeyStoreError) -> Unavailable:
    return Unavailable(
        f"The key store cannot be reached ({exc}): the change may not have been made; "
        "list the keys to see, then retry.",
        headers=retry_headers(1),
    )


def _api_key_id(key_id: str) -> None:
    """Refuse a config key, which only the config can change; an unknown id is the store's
    404 (it may be younger than this replica's view)."""
    if not KEY_ID_RE.fullmatch(key_id):
        raise not_found(key_id)
    if key_id.startswith(("cfg_", "adm_")):
        where = "server.admin_keys" if key_id.startswith("adm_") else "its tenant's `keys`"
        raise BadRequest(
            f"The key {key_id} is listed in the config file ({where}): change it there, "
            "and every gateway picks it up on reload.",
            param="id",
            code="config_key",
        )


def _unknown_tenant(runtime: Runtime, tenant: str) -> BadRequest:
    known = ", ".join(sorted(runtime.settings.tenants))
    return BadRequest(f"Unknown tenant {tenant[:64]!r} (known: {known}).", param="tenant")


def _made(record: ApiKey, secret: str) -> dict[str, Any]:
    return {
        "object": "gateway.key",
        "id": record.id,
        "key": secret,
        "tenant": record.tenant,
        "name": record.name,
        "created_at": rfc3339(record.created_at),
        "expires_at": rfc3339(record.expires_at),
    }


def _api_info(record: ApiKey, used: dict[str, float]) -> dict[str, Any]:
    return {
        "object": "gateway.key",
        "id": record.id,
        "tenant": record.tenant,
        "name": record.name,
        "source": "api",
        "status": record.ended_by(time.time()) or "active",
        "created_at": rfc3339(record.created_at),
        "expires_at": rfc3339(record.expires_at),
        "revoked_at": rfc3339(record.revoked_at),
        "replaced_by": record.replaced_by,
        "last_used_at": rfc3339(used.get(record.id)),
    }


def _config_info(key_id: str, tenant: str, used: dict[str, float]) -> dict[str, Any]:
    return {
        "object": "gateway.key",
        "id": key_id,
        "tenant": tenant,
        "name": None,
        "source": "config",
        "status": "active",
        "created_at": None,
        "expires_at": None,
        "revoked_at": None,
        "replaced_by": None,
        "last_used_at": rfc3339(used.get(key_id)),
    }


def _at(record: ApiKey) -> str:
    at = rfc3339(record.revoked_at)
    assert at is not None
    return at


def _audit(request: Request, runtime: Runtime, action: str, key: ApiKey, more: str = "") -> None:
    by = request.state.record.key_id
    audit.info("admin action=%s key=%s tenant=%s by=%s%s", action, key.id, key.tenant, by, more)
    runtime.metrics.child(runtime.metrics.admin_actions, action).inc()

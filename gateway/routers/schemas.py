"""The shapes of the gateway's own JSON answers, for the OpenAPI document (`/openapi.json`) and
for FastAPI to check what the routes return."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorEnvelope(BaseModel):
    """Every error the gateway answers, in OpenAI's shape."""

    error: ErrorDetail


class ModelObject(BaseModel):
    """A model as upstream lists it (every field upstream sends is kept); an alias also names
    its target in `root`."""

    model_config = ConfigDict(extra="allow")

    id: str
    object: str = "model"


class StoredResponse(BaseModel):
    """A Responses API `response` object as it was answered (every field kept)."""

    model_config = ConfigDict(extra="allow")

    id: str
    object: Literal["response"]


class DeletedResponse(BaseModel):
    id: str
    object: Literal["response"]
    deleted: Literal[True]


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelObject]


class ModelUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    cached_prompt_tokens: int  # a part of prompt_tokens
    reasoning_tokens: int  # a part of completion_tokens
    estimated_tokens: int  # a part of both, counted by the gateway (upstream told none)
    spend_usd: float


class Pool(BaseModel):
    limit: int
    inflight: int
    queued: int


class KeyUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    requests: int
    spend_usd: float


class TenantUsage(BaseModel):
    tenant: str
    month: str  # YYYY-MM, UTC
    spend_usd: float
    budget_usd: float | None
    remaining_usd: float | None  # this month only
    models: dict[str, ModelUsage]
    keys: dict[str, KeyUsage]  # by key id
    concurrency: Pool


class OwnUsage(TenantUsage):
    object: Literal["usage"]


class AccountPool(Pool):
    max_concurrency: int  # configured; `limit` is lower while the account is backed off


class AdminUsage(BaseModel):
    object: Literal["usage.admin"]
    month: str
    tenants: dict[str, TenantUsage]
    accounts: dict[str, AccountPool]


class RecentRequest(BaseModel):
    """A finished chat completion (or response) as this replica's ring keeps it."""

    object: Literal["gateway.request"]
    id: str  # its x-request-id
    finished_at: float  # unix seconds
    tenant: str
    key_id: str
    model: str  # the model label, as in /v1/usage ("-": the body was never understood)
    stream: bool | None
    status: int  # what the client got; 499 when it went away
    reason: str | None  # the error cause, as in gateway_errors_total
    attempts: int  # sent upstream, retries included
    queue_ms: int
    latency_ms: int  # arrival to last byte
    first_byte_ms: int | None  # streams
    prompt_tokens: int | None  # None: no usage (never reached W&B)
    completion_tokens: int | None
    estimated_tokens: int | None  # of those, counted by the gateway
    cost_usd: float | None  # added to the tenant's spend; None: no usage or no price


class RecentErrors(BaseModel):
    window_s: int  # the counts cover about this long, up to now
    tenants: dict[str, dict[str, int]]  # tenant -> reason -> count


class RecentList(BaseModel):
    object: Literal["list"]
    data: list[RecentRequest]  # newest first
    errors: RecentErrors


class CreateKeyBody(BaseModel):
    """What `POST /admin/keys` reads (for the document: the route reads the body strictly
    itself, see routers/admin_input.py)."""

    model_config = ConfigDict(extra="forbid")

    tenant: str
    name: str = Field(min_length=1, max_length=64)
    expires_at: str | float | None = Field(None, description="RFC 3339, or unix seconds")
    expires_in_s: float | None = Field(None, gt=0)


class RotateKeyBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    grace_s: float = Field(0, ge=0, le=30 * 24 * 3600)
    expires_at: str | float | None = None
    expires_in_s: float | None = Field(None, gt=0)


def json_body(model: type[BaseModel], required: bool = True) -> dict[str, Any]:
    """`openapi_extra` for a route that reads its JSON body itself."""
    schema = {"application/json": {"schema": model.model_json_schema()}}
    return {"requestBody": {"required": required, "content": schema}}


class NewKey(BaseModel):
    """A key just made: the only answer that holds the key itself."""

    object: Literal["gateway.key"]
    id: str
    key: str
    tenant: str
    name: str
    created_at: str  # RFC 3339, UTC
    expires_at: str | None


class RotatedKey(NewKey):
    replaces: str  # the old key's id
    replaced_until: str  # when the old key stops being accepted


class KeyInfo(BaseModel):
    object: Literal["gateway.key"]
    id: str
    tenant: str
    name: str | None  # config keys have none
    source: Literal["api", "config"]
    status: Literal["active", "expired", "revoked"]
    created_at: str | None
    expires_at: str | None
    revoked_at: str | None  # may lie ahead: the end of a rotation's grace
    replaced_by: str | None
    last_used_at: str | None  # to within a few seconds


class MonthKeyUsage(KeyUsage):
    month: str


class KeyDetail(KeyInfo):
    usage: MonthKeyUsage  # this month's


class KeyList(BaseModel):
    object: Literal["list"]
    data: list[KeyInfo]


class RevokedKey(BaseModel):
    object: Literal["gateway.key"]
    id: str
    revoked: Literal[True]
    revoked_at: str


class Health(BaseModel):
    status: Literal["ok"]


class LimiterState(BaseModel):
    backend: str
    detail: str


class Readiness(BaseModel):
    status: Literal["ready", "unready", "draining"]
    config: str
    limiter: LimiterState


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The error answers a route may give, for its `responses=`."""
    return {status: {"model": ErrorEnvelope} for status in statuses}

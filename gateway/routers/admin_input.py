"""The admin API's request bodies, read strictly: one JSON object of at most `MAX_BODY_BYTES`,
no duplicate names, no lone surrogates, no unknown fields, every field checked, each refusal a
400 naming its `param` (a body too big: 413)."""

from __future__ import annotations

import datetime
import json
import math
import re
import unicodedata
from typing import Any

import orjson
from fastapi import Request

from gateway.errors import BadRequest, PayloadTooLarge

MAX_BODY_BYTES = 64 * 1024
MAX_LIFETIME_S = 10 * 365 * 24 * 3600  # how far ahead a key may expire
MAX_GRACE_S = 30 * 24 * 3600
MAX_NAME_CHARS = 64
# RFC 3339's date-time (section 5.6); its offset is checked apart, for a clearer message.
_RFC3339 = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?([Zz]|[+-][0-9]{2}:[0-9]{2})?"
)


async def read_object(request: Request, allowed: set[str], required: bool = True) -> dict[str, Any]:
    """The body as a dict with only `allowed` names; an empty body is `{}` unless `required`."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise PayloadTooLarge(f"An admin request body may hold at most {MAX_BODY_BYTES} bytes.")
    if not body.strip() and not required:
        return {}
    try:
        orjson.loads(body)  # UTF-8, lone surrogates, NaN, numbers out of range: all refused
        found = json.loads(body, object_pairs_hook=_no_duplicates)
    except (orjson.JSONDecodeError, json.JSONDecodeError, ValueError) as exc:
        raise BadRequest(f"The body is not valid JSON ({exc}): send one JSON object.") from None
    except RecursionError:
        raise BadRequest("The body is nested too deeply: send one flat JSON object.") from None
    if not isinstance(found, dict):
        raise BadRequest("The body must be one JSON object.")
    for name in found:
        if name not in allowed:
            known = ", ".join(sorted(allowed))
            raise BadRequest(f"Unknown field {name[:64]!r} (known: {known}).", param=name[:64])
    return found


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for name, value in pairs:
        if name in found:
            raise ValueError(f"the name {name[:64]!r} appears twice in one object")
        found[name] = value
    return found


def text(body: dict[str, Any], field: str, what: str) -> str:
    value = body.get(field)
    if not isinstance(value, str) or not value.strip():
        raise BadRequest(f"`{field}` must be a non-empty string: {what}.", param=field)
    return value


def name(body: dict[str, Any]) -> str:
    value = text(body, "name", "what the key is for, e.g. ci-bot")
    if len(value) > MAX_NAME_CHARS:
        raise BadRequest(f"`name` may hold at most {MAX_NAME_CHARS} characters.", param="name")
    if any(unicodedata.category(c).startswith("C") for c in value):
        raise BadRequest("`name` may not hold control or format characters.", param="name")
    return value


def expiry(body: dict[str, Any], now: float) -> float | None:
    """`expires_at` (RFC 3339 with its offset, or unix seconds; null: never) or `expires_in_s`
    (seconds from now); neither: never."""
    if "expires_at" in body and "expires_in_s" in body:
        raise BadRequest("Give `expires_at` or `expires_in_s`, not both.", param="expires_in_s")
    if "expires_in_s" in body:
        seconds = number(body, "expires_in_s", 1e-3, MAX_LIFETIME_S)
        return now + seconds
    value = body.get("expires_at")
    if value is None:
        return None
    if isinstance(value, str):
        at = _rfc3339(value)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        at = float(value)
    else:
        raise BadRequest(
            "`expires_at` must be an RFC 3339 time (2027-01-31T00:00:00Z) or unix seconds.",
            param="expires_at",
        )
    if not math.isfinite(at) or at <= now:
        raise BadRequest("`expires_at` must be in the future.", param="expires_at")
    if at > now + MAX_LIFETIME_S:
        raise BadRequest("`expires_at` may be at most 10 years ahead.", param="expires_at")
    return at


def _rfc3339(value: str) -> float:
    parsed = None
    if _RFC3339.fullmatch(value):
        try:
            parsed = datetime.datetime.fromisoformat(value.upper().replace("Z", "+00:00"))
        except ValueError:
            parsed = None
    if parsed is None:
        raise BadRequest(
            f"`expires_at` {value[:64]!r} is not an RFC 3339 time, e.g. 2027-01-31T00:00:00Z.",
            param="expires_at",
        )
    if parsed.tzinfo is None:
        raise BadRequest(
            "`expires_at` needs its UTC offset (`Z` or `+01:00`), e.g. 2027-01-31T00:00:00Z.",
            param="expires_at",
        )
    return parsed.timestamp()


def number(body: dict[str, Any], field: str, low: float, high: float) -> float:
    value = body.get(field)
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise BadRequest(
            f"`{field}` must be a number of seconds from {low:g} to {high:g}.", param=field
        )
    return float(value)


def grace(body: dict[str, Any]) -> float:
    return number(body, "grace_s", 0, MAX_GRACE_S) if "grace_s" in body else 0.0

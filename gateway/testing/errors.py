"""The fake's error envelope, W&B's documented error table, and the 400 a bad body gets.

Every error the fake sends is OpenAI's ``{"error": {"message", "type", "param", "code"}}``.
``BadRequest`` is what parsing a body raises; the handler renders it as a 400 naming ``param``.
``ERRORS`` holds the answers W&B documents, by the name faults use for them; the fake also sends
``"401"`` for a bad key or project and ``"429"`` past a concurrency limit.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Final

from aiohttp import web

# kind -> (status, message, type, code), messages verbatim from W&B's error table.
_QUOTA: Final = "You exceeded your current quota, please check your plan and billing details"
_CONCURRENCY: Final = "Concurrency limit reached for requests"
_REGION: Final = "Country, region, or territory not supported"
_INTERNAL: Final = "The server had an error while processing your request"
_OVERLOADED: Final = "The engine is currently overloaded, please try again later"
ERRORS: Final = MappingProxyType(
    {
        "401": (401, "Invalid Authentication", "invalid_authentication_error", "invalid_api_key"),
        "403": (403, _REGION, "permission_error", "unsupported_country_region_territory"),
        "429": (429, _CONCURRENCY, "rate_limit_error", "concurrency_limit"),
        "quota": (429, _QUOTA, "insufficient_quota", "insufficient_quota"),
        "quota402": (402, _QUOTA, "insufficient_quota", "insufficient_quota"),
        "500": (500, _INTERNAL, "server_error", None),
        "503": (503, _OVERLOADED, "server_error", None),
    }
)


class BadRequest(Exception):
    """A body the fake refuses with a 400, naming the offending ``param``."""

    def __init__(self, message: str, param: str | None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


def error(
    status: int, message: str, type_: str, code: str | None, param: str | None = None
) -> web.Response:
    """An OpenAI error envelope with ``status``."""
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return web.json_response(body, status=status)


def known_error(kind: str) -> web.Response:
    """W&B's documented answer for ``kind``, a key of ``ERRORS``."""
    return error(*ERRORS[kind])

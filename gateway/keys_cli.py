"""`inference-gateway keys create|list|show|revoke|rotate`: the key admin API from a shell.

Each command is one request to a running gateway's `/admin/keys` routes (see
gateway.routers.keys), at `--url`, else `$GATEWAY_URL`, else http://127.0.0.1:8080. The admin
key comes from `$GATEWAY_ADMIN_KEY` only, never from argv (which `ps` shows to every user), and
is never printed. Output is for people unless `--json`, which prints the API's answer as it came.

Exit codes: 0 done; 1 the gateway refused (its message and HTTP status on stderr) or could not be
reached; 2 a usage error (a bad duration, no admin key). Only the standard library speaks HTTP:
the CLI adds no dependency to the gateway.
"""

from __future__ import annotations

import argparse
import functools
import http.client
import json
import math
import os
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from email.message import Message
from typing import Any

from gateway.redact import masked_url

ADMIN_KEY_ENV = "GATEWAY_ADMIN_KEY"
URL_ENV = "GATEWAY_URL"
DEFAULT_URL = "http://127.0.0.1:8080"  # server.host and server.port's defaults
TIMEOUT_S = 10.0
MAX_ANSWER_BYTES = 64 * 1024 * 1024
EXIT_REFUSED = 1
EXIT_USAGE = 2
SHOWN_ONCE = "The key is shown only now: keep it."

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)([smhdw]?)")


def parse_duration(text: str) -> float:
    """Seconds in `90s`, `15m`, `1h`, `30d`, `2w` or a plain number of seconds; ValueError else."""
    match = _DURATION_RE.fullmatch(text.strip())
    seconds = float(match[1]) * UNITS[match[2] or "s"] if match else math.nan
    if not math.isfinite(seconds):
        raise ValueError(
            f"{text!r} is not a duration: give a number with s, m, h, d or w (90s, 15m, 1h, "
            "30d, 2w), or a plain number of seconds"
        )
    return seconds


def _grace(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _lifetime(text: str) -> float:
    seconds = _grace(text)
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a key must live more than 0 seconds")
    return seconds


def _key_id(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("a key id is not empty (e.g. key_8f3a...)")
    return text.strip()


class CliError(Exception):
    """What to print after `keys <command>: `, and the exit code."""

    def __init__(self, message: str, code: int = EXIT_REFUSED) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Answer:
    status: int
    text: str  # the body as it came, for --json
    body: dict[str, Any]


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is refused, not followed: urllib would send the admin key along to wherever
    it points, another host included."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


@dataclass(frozen=True)
class Admin:
    """The admin API of one gateway, called with one admin key."""

    given: str  # as the user wrote it, for messages (masked)
    url: str  # what is called
    key: str

    @property
    def shown_url(self) -> str:
        return masked_url(self.given)

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Answer:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("Authorization", f"Bearer {self.key}")
        request.add_header("Accept", "application/json")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        opener = urllib.request.build_opener(_NoRedirect())
        try:
            with opener.open(request, timeout=TIMEOUT_S) as resp:
                return self._answer(resp.status, resp.headers, resp.read(MAX_ANSWER_BYTES))
        except urllib.error.HTTPError as exc:  # a 3xx, 4xx or 5xx: its body says why
            with exc:
                raw = _read_error(exc)
            return self._answer(exc.code, exc.headers, raw)
        except urllib.error.URLError as exc:
            raise self._unreachable(exc.reason) from None
        except (OSError, http.client.HTTPException) as exc:
            raise self._unreachable(exc) from None

    def _unreachable(self, reason: object) -> CliError:
        if isinstance(reason, TimeoutError):
            why = f"no answer within {TIMEOUT_S:g} s"
        elif isinstance(reason, OSError) and reason.strerror:
            why = reason.strerror
        else:
            why = str(reason) or type(reason).__name__
        return CliError(f"cannot reach the gateway at {self.shown_url} ({_printable(why)})")

    def _answer(self, status: int, headers: Message, raw: bytes) -> Answer:
        if 300 <= status < 400:
            where = _printable(masked_url(str(headers.get("Location") or "?")))
            raise CliError(
                f"{self.shown_url} answers with a redirect to {where} (HTTP {status}), which is "
                "not followed: give the gateway's own address"
            )
        text = raw.decode("utf-8", errors="replace")
        try:
            body = json.loads(text)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            kind = _printable(str(headers.get("Content-Type") or "no content type"))
            raise CliError(
                f"the answer from {self.shown_url} is not the gateway's JSON (HTTP {status}, "
                f"{kind}): is that the gateway's address? (--url or ${URL_ENV})"
            )
        if status >= 400:
            raise CliError(f"{_error_message(body)} (HTTP {status})")
        return Answer(status, text, body)


def _read_error(exc: urllib.error.HTTPError) -> bytes:
    try:
        return exc.read(MAX_ANSWER_BYTES)
    except (OSError, http.client.HTTPException):
        return b""


def _error_message(body: dict[str, Any]) -> str:
    error = body.get("error")
    message = error.get("message") if isinstance(error, dict) else None
    return _printable(message) if isinstance(message, str) else "an error without a message"


def _printable(text: str) -> str:
    """Text from the network, fit for a terminal: no control characters (escape sequences)."""
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


def add_parsers(keys_sub: Any) -> None:
    """The admin API's commands, under `inference-gateway keys` (`keys_sub` is its
    subparsers object)."""
    create = _command(keys_sub, "create", "make a key for a tenant", cmd_create)
    create.add_argument("--tenant", required=True, help="the tenant the key is for")
    create.add_argument("--name", required=True, help="what the key is for, e.g. ci-bot")
    _expiry_arguments(create)

    listing = _command(keys_sub, "list", "every key, or one tenant's", cmd_list)
    listing.add_argument("--tenant", help="only this tenant's keys")

    show = _command(keys_sub, "show", "one key and its usage this month", cmd_show)
    show.add_argument("id", type=_key_id, help="the key's id (key_...)")

    revoke = _command(keys_sub, "revoke", "refuse a key from now on", cmd_revoke)
    revoke.add_argument("id", type=_key_id, help="the key's id (key_...)")

    rotate = _command(keys_sub, "rotate", "a new key in place of an old one", cmd_rotate)
    rotate.add_argument("id", type=_key_id, help="the old key's id (key_...)")
    rotate.add_argument(
        "--grace",
        type=_grace,
        metavar="DURATION",
        help="how long the old key still works (90s, 15m, 1h, 30d, 2w; default 0: none)",
    )
    _expiry_arguments(rotate, default="as long as the old key")


def _command(
    keys_sub: Any, name: str, what: str, func: Callable[[Admin, argparse.Namespace], None]
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = keys_sub.add_parser(
        name, help=f"{what} (admin API; admin key in ${ADMIN_KEY_ENV})"
    )
    parser.add_argument(
        "--url", help=f"the gateway (default: ${URL_ENV}, else {DEFAULT_URL})", default=None
    )
    parser.add_argument("--json", action="store_true", help="print the API's JSON answer as is")
    parser.set_defaults(func=functools.partial(run, func))
    return parser


def _expiry_arguments(parser: argparse.ArgumentParser, default: str = "never") -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--expires-in",
        type=_lifetime,
        metavar="DURATION",
        help=f"the key expires after this long (90s, 15m, 1h, 30d, 2w; default: {default})",
    )
    group.add_argument(
        "--expires-at", metavar="TIME", help="the key expires then (RFC 3339: 2027-01-31T00:00:00Z)"
    )


def run(func: Callable[[Admin, argparse.Namespace], None], args: argparse.Namespace) -> None:
    """One command: its errors as one line on stderr, `keys <command>: ...`, and an exit code."""
    try:
        func(_admin(args), args)
    except CliError as exc:
        print(f"keys {args.keys_command}: {exc}", file=sys.stderr)
        raise SystemExit(exc.code) from None


def _admin(args: argparse.Namespace) -> Admin:
    key = os.environ.get(ADMIN_KEY_ENV, "").strip()
    if not key:
        raise CliError(
            f"set {ADMIN_KEY_ENV} to an admin key (one whose hash is in server.admin_keys); "
            "it is read from the environment only, never from the command line",
            EXIT_USAGE,
        )
    if not key.isascii() or not key.isprintable():
        raise CliError(f"{ADMIN_KEY_ENV} holds characters a key cannot have", EXIT_USAGE)
    url = (args.url or os.environ.get(URL_ENV) or DEFAULT_URL).strip().rstrip("/")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise CliError(
            f"the gateway's URL must look like http://host:port, not {masked_url(url)!r}",
            EXIT_USAGE,
        )
    # Any `user:password@` is dropped: the admin key is the credential, in its own header.
    host = parts.netloc.rpartition("@")[2]
    return Admin(url, parts._replace(netloc=host).geturl(), key)


def _expiry(args: argparse.Namespace) -> dict[str, Any]:
    if args.expires_in is not None:
        return {"expires_in_s": args.expires_in}
    if args.expires_at is not None:
        return {"expires_at": args.expires_at}
    return {}


def _id_path(key_id: str) -> str:
    return "/admin/keys/" + urllib.parse.quote(key_id, safe="")


def cmd_create(admin: Admin, args: argparse.Namespace) -> None:
    body = {"tenant": args.tenant, "name": args.name, **_expiry(args)}
    answer = admin.call("POST", "/admin/keys", body)
    _render(admin, args, answer, _print_new_key)


def cmd_rotate(admin: Admin, args: argparse.Namespace) -> None:
    body = _expiry(args)
    if args.grace is not None:
        body["grace_s"] = args.grace
    answer = admin.call("POST", _id_path(args.id) + "/rotate", body)
    _render(admin, args, answer, _print_new_key)


def cmd_list(admin: Admin, args: argparse.Namespace) -> None:
    query = "" if args.tenant is None else "?" + urllib.parse.urlencode({"tenant": args.tenant})
    answer = admin.call("GET", "/admin/keys" + query)
    _render(admin, args, answer, _print_table)


def cmd_show(admin: Admin, args: argparse.Namespace) -> None:
    answer = admin.call("GET", _id_path(args.id))
    _render(admin, args, answer, _print_key)


def cmd_revoke(admin: Admin, args: argparse.Namespace) -> None:
    answer = admin.call("DELETE", _id_path(args.id))
    _render(admin, args, answer, _print_revoked)


def _render(
    admin: Admin,
    args: argparse.Namespace,
    answer: Answer,
    show: Callable[[dict[str, Any]], list[str]],
) -> None:
    if args.json:
        print(answer.text)
        return
    try:
        lines = show(answer.body)
    except (KeyError, TypeError, AttributeError, ValueError):
        raise CliError(
            f"the answer from {admin.shown_url} is not shaped as the key admin API's: "
            "is that the gateway's address, and as new as this command?"
        ) from None
    print("\n".join(lines))


def _cell(value: Any, none: str = "-") -> str:
    return none if value is None else _printable(str(value))


def _print_new_key(body: dict[str, Any]) -> list[str]:
    lines = [
        f"key:      {_cell(body['key'])}",
        f"id:       {_cell(body['id'])}",
        f"tenant:   {_cell(body['tenant'])}",
        f"name:     {_cell(body['name'])}",
        f"expires:  {_cell(body['expires_at'], 'never')}",
    ]
    if "replaces" in body:
        lines.append(
            f"replaces: {_cell(body['replaces'])} "
            f"(which works until {_cell(body.get('replaced_until'))})"
        )
    return [*lines, SHOWN_ONCE]


TABLE = [
    ("ID", "id", "-"),
    ("TENANT", "tenant", "-"),
    ("NAME", "name", "-"),
    ("SOURCE", "source", "-"),
    ("STATUS", "status", "-"),
    ("EXPIRES", "expires_at", "never"),
    ("LAST USED", "last_used_at", "never"),
]


def _print_table(body: dict[str, Any]) -> list[str]:
    data = body["data"]
    if not isinstance(data, list):
        raise TypeError("data is not a list")
    if not data:
        return ["No keys."]
    rows = [[title for title, _, _ in TABLE]]
    rows += [[_cell(item[field], none) for _, field, none in TABLE] for item in data]
    widths = [max(len(row[i]) for row in rows) for i in range(len(TABLE))]
    return [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]


def _print_key(body: dict[str, Any]) -> list[str]:
    usage = body["usage"]
    tokens = f"{int(usage['prompt_tokens'])} prompt + {int(usage['completion_tokens'])} completion"
    lines = [
        f"id:           {_cell(body['id'])}",
        f"tenant:       {_cell(body['tenant'])}",
        f"name:         {_cell(body['name'])}",
        f"source:       {_cell(body['source'])}",
        f"status:       {_cell(body['status'])}",
        f"created:      {_cell(body['created_at'])}",
        f"expires:      {_cell(body['expires_at'], 'never')}",
        f"revoked:      {_cell(body['revoked_at'])}",
        f"replaced by:  {_cell(body['replaced_by'])}",
        f"last used:    {_cell(body['last_used_at'], 'never')}",
        f"usage {_cell(usage['month'])}: {int(usage['requests'])} requests, {tokens} tokens, "
        f"${float(usage['spend_usd']):.6f}",
    ]
    return lines


def _print_revoked(body: dict[str, Any]) -> list[str]:
    return [f"Revoked {_cell(body['id'])} at {_cell(body['revoked_at'])}."]

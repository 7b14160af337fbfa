"""`GET /ui` and its files: the operator console and the playground, plain HTML, CSS and
JavaScript shipped in the package (`gateway/ui/`), with no build step and nothing fetched from
elsewhere, so the page works air-gapped.

The files are public (auth.PUBLIC_PATHS, PUBLIC_PREFIX): they hold no data and no secret;
the page reads the JSON APIs everyone else reads (`/admin/usage`, `/v1/usage`, `/v1/models`,
`/admin/keys`, `/admin/requests`, `/v1/requests`) with the key the user typed, kept in the
tab's `sessionStorage` and sent as `Authorization: Bearer`. Only the files named in `FILES` are
served, by exact path: no directory is ever mapped, so no path can reach another file; any
other `/ui...` path is the usual 404 envelope. Every file goes with a strict
Content-Security-Policy (scripts, styles and connections from this origin only; no inline
script or style, no frames, no form submission, no `<base>`), `X-Frame-Options: DENY`,
`nosniff` and no referrer, and with an ETag, revalidated on each load (`no-cache`).
"""

from __future__ import annotations

import functools
import hashlib
from importlib import resources

from fastapi import APIRouter, Request
from fastapi.responses import Response

from gateway.errors import NotFound

PREFIX = "/ui"

_HTML = "text/html; charset=utf-8"
_JS = "text/javascript; charset=utf-8"
FILES: dict[str, tuple[str, str]] = {  # path -> (file in gateway/ui/, content type)
    PREFIX: ("index.html", _HTML),
    f"{PREFIX}/style.css": ("style.css", "text/css; charset=utf-8"),
    f"{PREFIX}/favicon.svg": ("favicon.svg", "image/svg+xml"),
    **{
        f"{PREFIX}/{name}": (name, _JS)
        for name in (
            "app.js",
            "api.js",
            "dom.js",
            "console.js",
            "keys.js",
            "tenant.js",
            "playground.js",
            "sse.js",
        )
    },
}

CSP = (
    "default-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'; "
    "object-src 'none'"
)
HEADERS = {
    "content-security-policy": CSP,
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cross-origin-opener-policy": "same-origin",
    "cache-control": "no-cache",
}

router = APIRouter(include_in_schema=False)


@functools.cache
def _read(name: str) -> tuple[bytes, str]:
    """A file's bytes and ETag: read once per process, they never change while it runs."""
    body = resources.files("gateway").joinpath("ui", name).read_bytes()
    return body, '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


@router.get(PREFIX)
@router.get(PREFIX + "/{rest:path}")
async def ui_file(request: Request) -> Response:
    path: str = request.scope["path"]  # decoded: `%2e%2e` is `..`, and matches no file
    entry = FILES.get(path)
    if entry is None:
        raise NotFound(f"Invalid URL (GET {path[:200]}).")
    name, content_type = entry
    body, etag = _read(name)
    headers = {**HEADERS, "etag": etag}
    if etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    return Response(body, media_type=content_type, headers=headers)

"""`/ui` in-process: an allow-list of files, public, each with its strict headers; any other
path under it the 404 envelope (traversal included); the files themselves hold no inline script
or style, no secret, and touch no cookie or localStorage."""

from __future__ import annotations

import json
import re
from importlib import resources
from typing import Any

import pytest

from gateway.routers.ui import CSP, FILES
from tests.api.conftest import InProcess

UI_DIR = resources.files("gateway").joinpath("ui")
STRICT = {
    "content-security-policy": CSP,
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-cache",
}


def test_every_shipped_file_is_served_and_nothing_else() -> None:
    shipped = {p.name for p in UI_DIR.iterdir() if p.is_file()}
    assert {name for name, _ in FILES.values()} == shipped


def test_the_policy_allows_this_origin_only_and_no_frames_forms_or_base() -> None:
    directives = dict(d.strip().split(" ", 1) for d in CSP.split(";"))
    assert directives == {
        "default-src": "'self'",
        "base-uri": "'none'",
        "form-action": "'none'",
        "frame-ancestors": "'none'",
        "object-src": "'none'",
    }


@pytest.mark.parametrize("path", sorted(FILES))
async def test_each_file_is_public_with_strict_headers_and_its_type(
    gw: InProcess, path: str
) -> None:
    r = await gw.client.get(path)  # no key: the files hold no data
    assert r.status_code == 200
    assert {k: r.headers[k] for k in STRICT} == STRICT
    assert r.headers["content-type"] == FILES[path][1]
    assert r.content == UI_DIR.joinpath(FILES[path][0]).read_bytes()
    again = await gw.client.get(path, headers={"If-None-Match": r.headers["etag"]})
    assert again.status_code == 304 and again.content == b""
    assert again.headers["content-security-policy"] == CSP


@pytest.mark.parametrize(
    "path",
    [
        "/ui/",
        "/ui/index.html",  # the page is /ui only
        "/ui/nope.js",
        "/ui/APP.JS",
        "/ui/app.js/",
        "/ui/%2e%2e/app.py",
        "/ui/..%2fapp.py",
        "/ui/%2e%2e%2f%2e%2e%2fpyproject.toml",
        "/ui//etc/passwd",
        "/ui/ui/app.js",
        "/ui/app.js%00.html",
    ],
)
async def test_any_other_path_under_ui_is_the_404_envelope(gw: InProcess, path: str) -> None:
    r = await gw.client.get(path)
    assert r.status_code == 404, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"].startswith("Invalid URL")
    assert "import" not in r.text  # no file's content


@pytest.mark.parametrize("path", ["/ui/../gateway/app.py", "/ui/./app.js", "/ui/../../etc/passwd"])
async def test_dot_segments_as_sent_on_the_wire_are_404s(gw: InProcess, path: str) -> None:
    """httpx removes dot segments before sending; a raw client does not: the app gets them."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"gateway")],
        "client": ("127.0.0.1", 1),
        "server": ("gateway", 80),
        "state": {},
    }
    await gw.app(scope, receive, send)  # type: ignore[arg-type]
    assert sent[0]["status"] == 404
    body = b"".join(m.get("body", b"") for m in sent[1:])
    assert json.loads(body)["error"]["message"] == f"Invalid URL (GET {path})."


async def test_the_files_take_get_only(gw: InProcess) -> None:
    r = await gw.client.post("/ui")
    assert r.status_code == 405 and r.json()["error"]["type"] == "invalid_request_error"


async def test_a_path_that_only_starts_like_ui_still_needs_a_key(gw: InProcess) -> None:
    for path in ("/uix", "/ui.js", "/uiapp.js"):
        r = await gw.client.get(path)
        assert r.status_code == 401, path


async def test_the_ui_is_not_in_the_openapi_document(gw: InProcess) -> None:
    paths = (await gw.client.get("/openapi.json")).json()["paths"]
    assert not [p for p in paths if p.startswith("/ui")]


def test_no_inline_script_style_or_handler_in_the_page() -> None:
    html = UI_DIR.joinpath("index.html").read_text()
    scripts = re.findall(r"<script\b([^>]*)>(.*?)</script>", html, re.S)
    assert scripts and all('src="/ui/' in attrs and not body.strip() for attrs, body in scripts)
    assert "<style" not in html
    assert not re.search(r"\sstyle\s*=", html)
    assert not re.search(r"\son[a-z]+\s*=", html)
    assert not re.search(r"(src|href)=\"(?!/ui/)", html)  # nothing from another origin


@pytest.mark.parametrize("name", sorted(n for n, t in FILES.values() if "javascript" in t))
def test_the_scripts_build_no_markup_and_keep_no_key_beyond_the_session(name: str) -> None:
    js = UI_DIR.joinpath(name).read_text()
    for risky in (
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
        "eval(",
        "new Function",
        "localStorage",
        "document.cookie",
        'setAttribute("style',
    ):
        assert risky not in js, (name, risky)
    assert "http://" not in js and "https://" not in js  # same origin only
    assert not re.search(r"sk-gw-[A-Za-z0-9_-]{8,}", js)  # no key, not even an example one
    assert not re.search(r"[?&](key|api_key|token)=", js)  # a key never goes in a URL

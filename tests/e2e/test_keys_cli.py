"""`inference-gateway keys create|list|show|revoke|rotate` run as users run it, a subprocess,
against a real gateway with an admin key; the keys it prints are used with the openai SDK."""

from __future__ import annotations

import datetime
import http.server
import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from gateway.keys import hash_key
from tests.poll import until_sync
from tests.procs import (
    LLAMA,
    ROOT,
    SEARCH_KEY,
    Proc,
    base_config,
    free_port,
    start_fake,
    start_gateway,
)

ADMIN = "sk-gw-test-admin-for-the-keys-cli"
HI = [{"role": "user", "content": "hi"}]
WORDS = "Hello from the fake W&B upstream for testing"


@pytest.fixture(scope="module")
def gw() -> Iterator[Proc]:
    upstream = start_fake()
    gateway = start_gateway(base_config(upstream.url, server__admin_keys=[hash_key(ADMIN)]))
    yield gateway
    gateway.stop()
    upstream.stop()


def keys(
    url: str | None, *args: str, admin: str | None = ADMIN
) -> subprocess.CompletedProcess[str]:
    """`python -m gateway keys ARGS` with the gateway in $GATEWAY_URL (None: unset); never a
    traceback, never the admin key in what it prints."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env.update({} if url is None else {"GATEWAY_URL": url})
    env.update({} if admin is None else {"GATEWAY_ADMIN_KEY": admin})
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "keys", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert "Traceback" not in done.stderr, done.stderr
    for secret in {ADMIN, admin or ADMIN}:
        assert secret not in done.stdout + done.stderr
    return done


def ok(gw: Proc, *args: str) -> subprocess.CompletedProcess[str]:
    done = keys(gw.url, *args)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    return done


def created(gw: Proc, tenant: str, name: str, *extra: str) -> dict[str, Any]:
    answer: dict[str, Any] = json.loads(
        ok(gw, "create", "--tenant", tenant, "--name", name, "--json", *extra).stdout
    )
    return answer


def chat(gw: Proc, key: str) -> str | None:
    with openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0) as client:
        resp = client.chat.completions.create(model=LLAMA, messages=HI)  # type: ignore[arg-type]
    return resp.choices[0].message.content


def refusal(gw: Proc, key: str) -> openai.AuthenticationError | None:
    """The 401 the key gets now, or None while it still works."""
    try:
        chat(gw, key)
    except openai.AuthenticationError as exc:
        return exc
    return None


def field(text: str, name: str) -> str:
    match = re.search(rf"^{name}:\s+(\S+)", text, re.MULTILINE)
    assert match, text
    return match[1]


def at(rfc3339: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(rfc3339)


def test_create_prints_a_key_that_works(gw: Proc) -> None:
    out = ok(gw, "create", "--tenant", "search", "--name", "ci-bot").stdout
    key, key_id = field(out, "key"), field(out, "id")
    assert key.startswith("sk-gw-")
    assert re.fullmatch(r"key_[0-9a-f]+", key_id)
    assert field(out, "tenant") == "search"
    assert field(out, "name") == "ci-bot"
    assert field(out, "expires") == "never"
    assert "The key is shown only now: keep it." in out
    assert chat(gw, key) == WORDS


@pytest.mark.parametrize(
    ("given", "seconds"), [("30d", 30 * 86400), ("2w", 14 * 86400), ("90", 90), ("1.5h", 5400)]
)
def test_expires_in(gw: Proc, given: str, seconds: int) -> None:
    made = created(gw, "search", "short-lived", "--expires-in", given)
    assert made["object"] == "gateway.key"
    assert (at(made["expires_at"]) - at(made["created_at"])).total_seconds() == pytest.approx(
        seconds, abs=1
    )


def test_expires_at(gw: Proc) -> None:
    when = (datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=60)).replace(
        microsecond=0
    )
    stamp = when.strftime("%Y-%m-%dT%H:%M:%SZ")
    made = created(gw, "ads", "dated", "--expires-at", stamp)
    assert made["expires_at"] == stamp
    done = keys(gw.url, "create", "--tenant", "ads", "--name", "x", "--expires-at", "tomorrow")
    assert done.returncode == 1
    assert "is not an RFC 3339 time" in done.stderr and "(HTTP 400)" in done.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["create", "--tenant", "search", "--name", "x", "--expires-in", "5x"],
        ["create", "--tenant", "search", "--name", "x", "--expires-in", "1h30m"],
        ["create", "--tenant", "search", "--name", "x", "--expires-in", "-1s"],
        ["create", "--tenant", "search", "--name", "x", "--expires-in", "0"],
        ["rotate", "key_0123456789abcdef01234567", "--grace", "soon"],
    ],
)
def test_bad_durations_are_usage_errors(gw: Proc, args: list[str]) -> None:
    done = keys(gw.url, *args)
    assert done.returncode == 2
    assert "error: argument --" in done.stderr
    assert done.stdout == ""


def test_list_table_and_json(gw: Proc) -> None:
    made = created(gw, "ads", "reporting")
    out = ok(gw, "list", "--tenant", "ads").stdout
    header, *rows = out.splitlines()
    assert header.split("  ")[0] == "ID"
    titles = ["ID", "TENANT", "NAME", "SOURCE", "STATUS", "EXPIRES", "LAST USED"]
    starts = [header.index(title) for title in titles]
    assert starts == sorted(starts)
    mine = next(row for row in rows if row.startswith(made["id"]))
    assert mine[starts[1] :].startswith("ads ")
    assert mine[starts[2] :].startswith("reporting ")
    assert mine[starts[3] :].startswith("api ")
    assert mine[starts[4] :].startswith("active ")
    assert mine[starts[5] :].startswith("never ")
    assert mine[starts[6] :] == "never"
    assert any(row[starts[3] :].startswith("config ") for row in rows)  # the config's key
    assert all(row[starts[1] :].startswith("ads ") for row in rows)

    answer = json.loads(ok(gw, "list", "--tenant", "ads", "--json").stdout)
    assert answer["object"] == "list"
    assert {item["tenant"] for item in answer["data"]} == {"ads"}
    assert made["id"] in {item["id"] for item in answer["data"]}
    every = json.loads(ok(gw, "list", "--json").stdout)["data"]
    assert {"search", "ads", "limited"} <= {item["tenant"] for item in every}


def test_show_has_this_months_usage(gw: Proc) -> None:
    made = created(gw, "search", "shown")
    assert chat(gw, made["key"]) == WORDS

    def used() -> dict[str, Any] | None:
        detail: dict[str, Any] = json.loads(ok(gw, "show", made["id"], "--json").stdout)
        return detail if detail["usage"]["requests"] == 1 else None

    detail = until_sync(used, 10, "the key's request in its usage", interval_s=0.2)
    assert detail["usage"]["completion_tokens"] == 8
    out = ok(gw, "show", made["id"]).stdout
    assert field(out, "id") == made["id"]
    assert field(out, "tenant") == "search"
    assert field(out, "status") == "active"
    assert f"usage {detail['usage']['month']}: 1 requests, " in out
    assert "8 completion tokens" in out


def test_revoke_then_the_key_is_refused(gw: Proc) -> None:
    made = created(gw, "search", "to-revoke")
    assert chat(gw, made["key"]) == WORDS
    out = ok(gw, "revoke", made["id"]).stdout
    assert out.startswith(f"Revoked {made['id']} at ")
    refused = until_sync(lambda: refusal(gw, made["key"]), 5, "the revoked key refused")
    assert refused.status_code == 401
    assert "revoked" in refused.message
    listed = json.loads(ok(gw, "list", "--tenant", "search", "--json").stdout)["data"]
    assert next(k for k in listed if k["id"] == made["id"])["status"] == "revoked"


def test_rotate_with_grace(gw: Proc) -> None:
    old = created(gw, "search", "rotated")
    out = ok(gw, "rotate", old["id"], "--grace", "2s", "--expires-in", "1d").stdout
    new_key, new_id = field(out, "key"), field(out, "id")
    assert new_id != old["id"]
    assert field(out, "replaces") == old["id"]
    assert field(out, "name") == "rotated"
    assert "The key is shown only now: keep it." in out
    assert chat(gw, old["key"]) == WORDS  # within the grace, both work
    assert chat(gw, new_key) == WORDS
    refused = until_sync(lambda: refusal(gw, old["key"]), 8, "the old key refused after grace")
    assert new_id in refused.message  # the refusal names the replacement
    assert chat(gw, new_key) == WORDS


def test_a_tenant_key_is_not_an_admin_key(gw: Proc) -> None:
    done = keys(gw.url, "list", admin=SEARCH_KEY)
    assert done.returncode == 1
    assert done.stderr.strip() == (
        "keys list: Admin routes refuse tenant keys; use an admin key. (HTTP 403)"
    )


def test_unknown_and_config_ids(gw: Proc) -> None:
    for command in ("show", "revoke"):
        done = keys(gw.url, command, "key_0123456789abcdef01234567")
        assert done.returncode == 1
        assert done.stderr.startswith(f"keys {command}: No key ")
        assert "key_0123456789abcdef01234567" in done.stderr
        assert done.stderr.endswith(" (HTTP 404)\n")
    config_key = json.loads(ok(gw, "list", "--tenant", "limited", "--json").stdout)["data"][0]
    done = keys(gw.url, "revoke", config_key["id"])
    assert done.returncode == 1
    assert "listed in the config file" in done.stderr and "(HTTP 400)" in done.stderr


def test_missing_admin_key(gw: Proc) -> None:
    done = keys(gw.url, "list", admin=None)
    assert done.returncode == 2
    assert "GATEWAY_ADMIN_KEY" in done.stderr
    assert done.stdout == ""


def test_unreachable_url_names_it_masked() -> None:
    url = f"http://ops:hunter2@127.0.0.1:{free_port()}"
    done = keys(None, "list", "--url", url)
    assert done.returncode == 1
    assert "hunter2" not in done.stderr
    assert done.stderr.startswith(
        f"keys list: cannot reach the gateway at {url.replace('hunter2', '***')}"
    )


class _HtmlPage(http.server.BaseHTTPRequestHandler):
    """A proxy's error page where the gateway should be."""

    def do_GET(self) -> None:
        page = b"<html><body>502 Bad Gateway</body></html>"
        self.send_response(502)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(page)))
        self.end_headers()
        self.wfile.write(page)

    def log_message(self, *args: Any) -> None:
        pass


def test_a_non_json_answer_is_explained() -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _HtmlPage)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        done = keys(f"http://127.0.0.1:{server.server_port}", "list")
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    assert done.returncode == 1
    assert "is not the gateway's JSON (HTTP 502, text/html)" in done.stderr


def test_the_admin_key_is_not_in_the_gateways_log(gw: Proc) -> None:
    ok(gw, "list")
    assert ADMIN not in gw.logs()

"""The error paths in-process: a bug is a 500 envelope with its request id and no traceback,
logged once; the chat handler's own refusals; x-gateway-queue-ms on every chat answer."""

from __future__ import annotations

import logging

import pytest

from tests.api.conftest import InProcess
from tests.procs import LIMITED_KEY, PHI, SEARCH_KEY

AUTH = {"Authorization": f"Bearer {SEARCH_KEY}"}
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


class Bug(RuntimeError):
    pass


async def boom(*args: object) -> None:
    raise Bug("secret internals")


@pytest.mark.parametrize(
    ("target", "method", "path", "body"),
    [
        ("catalog.list_for", "GET", "/v1/models", None),
        ("budgets.admit", "POST", "/v1/chat/completions", CHAT),
    ],
)
async def test_a_bug_is_a_500_envelope_without_the_traceback(
    gw: InProcess,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    target: str,
    method: str,
    path: str,
    body: object,
) -> None:
    part, name = target.split(".")
    monkeypatch.setattr(getattr(gw.runtime, part), name, boom)
    caplog.set_level(logging.INFO)
    r = await gw.client.request(method, path, headers=AUTH, json=body)
    assert r.status_code == 500
    rid = r.headers["x-request-id"]
    assert r.json() == {
        "error": {
            "message": f"The gateway had an internal error (request id {rid}).",
            "type": "server_error",
            "param": None,
            "code": None,
        }
    }
    assert "secret internals" not in r.text and "Traceback" not in r.text
    logged = [rec for rec in caplog.records if rec.exc_info and rec.exc_info[0] is Bug]
    assert len(logged) == 1 and rid in logged[0].getMessage()


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        (b"{not json", 400, None),
        (b"[1, 2]", 400, None),
        (b'{"messages": []}', 400, "model"),
        (b'{"model": "gpt-4o-mini", "messages": {}}', 400, "messages"),
        (b'{"model": "gpt-4o-mini", "messages": [], "stream": "yes"}', 400, "stream"),
        (b'{"model": "' + PHI.encode() + b'", "messages": []}', 404, "model"),
    ],
)
async def test_chat_refusals_carry_the_queue_header(
    gw: InProcess, body: bytes, status: int, param: str | None
) -> None:
    # The limited tenant may use gpt-4o-mini only.
    auth = {"Authorization": f"Bearer {LIMITED_KEY}"}
    r = await gw.client.post("/v1/chat/completions", headers=auth, content=body)
    assert r.status_code == status
    assert r.json()["error"]["param"] == param
    assert r.headers["x-gateway-queue-ms"] == "0"


async def test_a_body_over_the_limit_is_413(gw: InProcess) -> None:
    limit = gw.runtime.settings.server.max_body_bytes
    r = await gw.client.post("/v1/chat/completions", headers=AUTH, content=b" " * (limit + 1))
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"


async def test_an_unreachable_upstream_is_a_502_after_the_retries(gw: InProcess) -> None:
    r = await gw.client.post("/v1/chat/completions", headers=AUTH, json=CHAT)
    assert r.status_code == 502
    assert r.json()["error"]["code"] == "upstream_unreachable"
    assert r.headers["x-gateway-queue-ms"] == "0"
    metrics = (await gw.client.get("/metrics")).text
    retries = gw.runtime.settings.upstream.retries
    label = (
        'gateway_retries_total{model="meta-llama/Llama-3.1-8B-Instruct",reason="upstream_connect"}'
    )
    assert f"{label} {float(retries)}" in metrics

"""The request-context middleware in-process: x-request-id, draining, the access-log line."""

from __future__ import annotations

import logging

import pytest

from gateway.keys import config_key_id, hash_key
from tests.api.conftest import InProcess
from tests.poll import until
from tests.procs import SEARCH_KEY

AUTH = {"Authorization": f"Bearer {SEARCH_KEY}"}


async def test_a_sane_request_id_is_kept_and_sent_back(gw: InProcess) -> None:
    r = await gw.client.get("/v1/usage", headers={**AUTH, "x-request-id": "app-42.a:b/c"})
    assert r.headers["x-request-id"] == "app-42.a:b/c"


@pytest.mark.parametrize("sent", ["has space", "x" * 129, "new\\nline", "ünï"])
async def test_an_insane_request_id_is_replaced(gw: InProcess, sent: str) -> None:
    r = await gw.client.get("/healthz", headers={"x-request-id": sent.encode()})
    rid = r.headers["x-request-id"]
    assert rid != sent and rid.startswith("req_") and len(rid) == 36


async def test_refusals_carry_a_request_id_too(gw: InProcess) -> None:
    r = await gw.client.get("/v1/models")
    assert r.status_code == 401 and r.headers["x-request-id"].startswith("req_")


async def test_draining_refuses_new_work_but_answers_probes(gw: InProcess) -> None:
    gw.app.state.lifecycle.draining = True
    r = await gw.client.get("/v1/usage", headers=AUTH)
    assert r.status_code == 503
    assert r.headers["retry-after"] == "1" and r.headers["connection"] == "close"
    assert r.json()["error"]["code"] == "unavailable"
    assert (await gw.client.get("/healthz")).status_code == 200
    ready = await gw.client.get("/readyz")
    assert ready.status_code == 503 and ready.json()["status"] == "draining"


async def test_one_access_line_per_request(gw: InProcess, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="gateway.access")
    await gw.client.get("/v1/usage", headers={**AUTH, "x-request-id": "line-1"})
    await gw.client.get("/v1/models", headers={"x-request-id": "line-2"})
    await gw.client.get("/v1/a%0Ab", headers={**AUTH, "x-request-id": "line-3"})

    def lines() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "gateway.access"]

    found = await until(lambda: len(lines()) == 3 and lines(), what="three access lines")
    assert found[0].startswith("line-1 GET /v1/usage 200 ")
    key_id = config_key_id(hash_key(SEARCH_KEY))
    assert f"tenant=search key={key_id} model=- queue_ms=- attempts=- reason=-" in found[0]
    assert SEARCH_KEY not in "".join(found)
    assert found[1].startswith("line-2 GET /v1/models 401 ") and "reason=auth" in found[1]
    # The path as sent, still percent-encoded: a %0A cannot forge a second line.
    assert found[2].startswith("line-3 GET /v1/a%0Ab 404 ") and "reason=bad_request" in found[2]

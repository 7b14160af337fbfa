"""`/admin/requests`, `/v1/requests` and `/v1/requests/{id}` in-process: the chat handler's
requests land in the ring (upstream is a closed port here, so each is a 502 after its
retries), admins see every tenant's, a tenant only its own, bad query values are 400s naming
the parameter; and `/admin/usage` says each account's configured limit."""

from __future__ import annotations

from typing import Any

import pytest

from tests.api.conftest import ADMIN_KEY, InProcess
from tests.procs import ADS_KEY, LLAMA, SEARCH_KEY

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def chat(gw: InProcess, key: str, request_id: str) -> None:
    r = await gw.client.post(
        "/v1/chat/completions",
        headers={**bearer(key), "x-request-id": request_id},
        json={"model": LLAMA, "messages": [{"role": "user", "content": "secret prompt words"}]},
    )
    assert r.status_code == 502 and r.headers["x-request-id"] == request_id


async def get(gw: InProcess, path: str, headers: dict[str, str]) -> dict[str, Any]:
    r = await gw.client.get(path, headers=headers)
    assert r.status_code == 200, r.text
    answer: dict[str, Any] = r.json()
    return answer


async def test_admins_see_every_tenants_requests_newest_first_with_error_counts(
    gw: InProcess,
) -> None:
    await chat(gw, SEARCH_KEY, "req-search-1")
    await chat(gw, ADS_KEY, "req-ads-1")
    await chat(gw, SEARCH_KEY, "req-search-2")
    listed = await get(gw, "/admin/requests", ADMIN)
    assert [e["id"] for e in listed["data"]] == ["req-search-2", "req-ads-1", "req-search-1"]
    newest = listed["data"][0]
    assert newest["tenant"] == "search" and newest["key_id"].startswith("cfg_")
    assert (newest["model"], newest["status"], newest["stream"]) == (LLAMA, 502, False)
    assert newest["reason"] == "upstream_connect" and newest["attempts"] == 3
    assert newest["prompt_tokens"] is None and newest["cost_usd"] is None  # W&B never had it
    assert listed["errors"] == {
        "window_s": 300,
        "tenants": {"search": {"upstream_connect": 2}, "ads": {"upstream_connect": 1}},
    }
    only_ads = await get(gw, "/admin/requests?tenant=ads&limit=5", ADMIN)
    assert [e["id"] for e in only_ads["data"]] == ["req-ads-1"]
    assert only_ads["errors"]["tenants"] == {"ads": {"upstream_connect": 1}}
    two = await get(gw, "/admin/requests?limit=2", ADMIN)
    assert len(two["data"]) == 2
    assert "secret prompt" not in str(listed) and SEARCH_KEY not in str(listed)


async def test_a_tenant_sees_only_its_own_requests_and_errors(gw: InProcess) -> None:
    await chat(gw, SEARCH_KEY, "req-mine")
    await chat(gw, ADS_KEY, "req-theirs")
    own = await get(gw, "/v1/requests", bearer(SEARCH_KEY))
    assert [e["id"] for e in own["data"]] == ["req-mine"]
    assert own["errors"]["tenants"] == {"search": {"upstream_connect": 1}}
    assert "ads" not in str(own)
    one = await get(gw, "/v1/requests/req-mine", bearer(SEARCH_KEY))
    assert one == own["data"][0]
    r = await gw.client.get("/v1/requests/req-theirs", headers=bearer(SEARCH_KEY))
    assert r.status_code == 404
    error = r.json()["error"]
    assert error["code"] == "request_not_found" and error["param"] == "request_id"
    assert "req-theirs" not in error["message"]  # the message does not echo what was sent


@pytest.mark.parametrize("value", ["0", "1001", "-1", "abc", "1.5", "", " 5", "１", "99999999999"])
async def test_a_bad_limit_is_a_400_naming_it(gw: InProcess, value: str) -> None:
    for path, headers in (("/admin/requests", ADMIN), ("/v1/requests", bearer(SEARCH_KEY))):
        r = await gw.client.get(path, params={"limit": value}, headers=headers)
        assert r.status_code == 400, (path, value, r.text)
        error = r.json()["error"]
        assert (error["type"], error["param"]) == ("invalid_request_error", "limit")
        assert set(error) == {"message", "type", "param", "code"}


async def test_the_openapi_document_says_limit_is_a_bounded_integer(gw: InProcess) -> None:
    document = (await gw.client.get("/openapi.json")).json()
    for path in ("/admin/requests", "/v1/requests"):
        (limit,) = [p for p in document["paths"][path]["get"]["parameters"] if p["name"] == "limit"]
        assert limit["schema"]["anyOf"][0] == {"type": "integer", "minimum": 1, "maximum": 1000}


async def test_an_unknown_tenant_filter_is_a_400_naming_it(gw: InProcess) -> None:
    r = await gw.client.get("/admin/requests?tenant=nobody", headers=ADMIN)
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["param"] == "tenant" and "nobody" in error["message"]


async def test_only_admin_keys_read_every_tenants_requests(gw: InProcess) -> None:
    r = await gw.client.get("/admin/requests", headers=bearer(SEARCH_KEY))
    assert r.status_code == 403 and r.json()["error"]["type"] == "permission_error"
    r = await gw.client.get("/admin/requests")
    assert r.status_code == 401
    r = await gw.client.get("/v1/requests", headers=ADMIN)  # an admin key is no tenant's
    assert r.status_code == 401


async def test_admin_usage_says_each_accounts_configured_limit(gw: InProcess) -> None:
    usage = await get(gw, "/admin/usage", ADMIN)
    assert usage["accounts"] == {
        "main": {"limit": 4, "inflight": 0, "queued": 0, "max_concurrency": 4}
    }


async def test_the_new_endpoints_are_in_the_openapi_document(gw: InProcess) -> None:
    doc = (await gw.client.get("/openapi.json")).json()
    for path in ("/admin/requests", "/v1/requests", "/v1/requests/{request_id}"):
        operation = doc["paths"][path]["get"]
        assert operation["security"] == [{"gatewayKey": []}]
        assert "200" in operation["responses"] and "400" in operation["responses"]
    entry = doc["components"]["schemas"]["RecentRequest"]["properties"]
    assert {
        "id",
        "tenant",
        "key_id",
        "model",
        "status",
        "queue_ms",
        "latency_ms",
        "cost_usd",
    } <= set(entry)
    pool = doc["components"]["schemas"]["AccountPool"]["properties"]
    assert "max_concurrency" in pool

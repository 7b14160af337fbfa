"""The key admin API in-process (memory store): the lifecycle, what each answer holds and never
holds, and a clear 4xx for every bad input."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from gateway.config import parse_settings
from gateway.keys import config_key_id, hash_key
from tests.api.conftest import ADMIN_KEY, InProcess
from tests.poll import until
from tests.procs import ADS_KEY, SEARCH_KEY, base_config

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def create(gw: InProcess, **body: Any) -> dict[str, Any]:
    r = await gw.client.post(
        "/admin/keys", json={"tenant": "search", "name": "ci", **body}, headers=ADMIN
    )
    assert r.status_code == 201, r.text
    made: dict[str, Any] = r.json()
    return made


async def usage_status(gw: InProcess, key: str) -> int:
    return (await gw.client.get("/v1/usage", headers=bearer(key))).status_code


def error(r: Any, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    found: dict[str, Any] = r.json()["error"]
    assert set(found) == {"message", "type", "param", "code"}
    return found


async def test_a_created_key_works_at_once_and_is_shown_only_in_its_answer(
    gw: InProcess, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    made = await create(gw, name="ci-bot", expires_in_s=3600)
    assert made["object"] == "gateway.key" and made["id"].startswith("key_")
    assert made["key"].startswith("sk-gw-") and len(made["key"]) == 6 + 43
    assert made["tenant"] == "search" and made["name"] == "ci-bot"
    assert made["created_at"].endswith("Z") and made["expires_at"].endswith("Z")
    r = await gw.client.get("/v1/usage", headers=bearer(made["key"]))
    assert r.status_code == 200 and r.json()["tenant"] == "search"

    listed = (await gw.client.get("/admin/keys", headers=ADMIN)).json()
    shown = await gw.client.get(f"/admin/keys/{made['id']}", headers=ADMIN)
    for text in (str(listed), shown.text, caplog.text):
        assert made["key"] not in text and hash_key(made["key"])[7:] not in text
    [entry] = [k for k in listed["data"] if k["id"] == made["id"]]
    assert entry["source"] == "api" and entry["status"] == "active"
    assert entry["expires_at"] == made["expires_at"] and entry["revoked_at"] is None
    admin_id = config_key_id(hash_key(ADMIN_KEY), "adm")
    assert f"admin action=create key={made['id']} tenant=search by={admin_id}" in caplog.text


async def test_the_list_holds_config_keys_read_only_and_filters_by_tenant(gw: InProcess) -> None:
    made = await create(gw)
    everything = (await gw.client.get("/admin/keys", headers=ADMIN)).json()["data"]
    config = {k["id"]: k for k in everything if k["source"] == "config"}
    search_id = config_key_id(hash_key(SEARCH_KEY))
    assert config[search_id]["tenant"] == "search" and config[search_id]["name"] is None
    assert len(config) == 3  # search, ads, limited
    ads = (await gw.client.get("/admin/keys?tenant=ads", headers=ADMIN)).json()["data"]
    assert [k["id"] for k in ads] == [config_key_id(hash_key(ADS_KEY))]
    assert made["id"] not in str(ads)

    for method, path in (("DELETE", search_id), ("POST", f"{search_id}/rotate")):
        found = error(await gw.client.request(method, f"/admin/keys/{path}", headers=ADMIN), 400)
        assert found["param"] == "id" and found["code"] == "config_key"
        assert "config" in found["message"]
    assert await usage_status(gw, SEARCH_KEY) == 200


async def test_revoked_and_expired_keys_are_refused_saying_why(gw: InProcess) -> None:
    revoked = await create(gw)
    r = await gw.client.delete(f"/admin/keys/{revoked['id']}", headers=ADMIN)
    assert r.status_code == 200
    assert r.json() | {"revoked_at": None} == {
        "object": "gateway.key",
        "id": revoked["id"],
        "revoked": True,
        "revoked_at": None,
    }
    found = error(await gw.client.get("/v1/usage", headers=bearer(revoked["key"])), 401)
    assert found["type"] == "authentication_error" and found["code"] == "key_revoked"
    assert revoked["id"] in found["message"] and "revoked" in found["message"]
    assert revoked["key"] not in found["message"]
    first = gw.runtime.keys.ring.records[revoked["id"]].revoked_at
    again = await gw.client.delete(f"/admin/keys/{revoked['id']}", headers=ADMIN)
    assert again.status_code == 200  # revoking twice changes nothing
    assert gw.runtime.keys.ring.records[revoked["id"]].revoked_at == first

    expiring = await create(gw, expires_in_s=0.3)
    assert await usage_status(gw, expiring["key"]) == 200

    async def expired() -> bool:
        return await usage_status(gw, expiring["key"]) == 401

    await until(expired, timeout_s=3, what="the key refused once expired")
    found = error(await gw.client.get("/v1/usage", headers=bearer(expiring["key"])), 401)
    assert found["code"] == "key_expired" and "expired" in found["message"]
    listed = (await gw.client.get("/admin/keys?tenant=search", headers=ADMIN)).json()["data"]
    status = {k["id"]: k["status"] for k in listed}
    assert status[revoked["id"]] == "revoked" and status[expiring["id"]] == "expired"


async def test_rotation_keeps_the_old_key_for_its_grace_then_refuses_it(gw: InProcess) -> None:
    old = await create(gw, name="app", expires_in_s=7200)
    r = await gw.client.post(f"/admin/keys/{old['id']}/rotate", json={"grace_s": 1}, headers=ADMIN)
    assert r.status_code == 201, r.text
    new = r.json()
    assert new["id"] != old["id"] and new["key"] != old["key"] and new["replaces"] == old["id"]
    assert (new["tenant"], new["name"]) == ("search", "app")
    records = gw.runtime.keys.ring.records  # the old key's lifetime, counted from the rotation
    made, renewed = records[old["id"]], records[new["id"]]
    assert renewed.created_at > made.created_at
    assert renewed.expires_at == pytest.approx(renewed.created_at + 7200)
    assert await usage_status(gw, old["key"]) == 200 and await usage_status(gw, new["key"]) == 200

    async def old_refused() -> bool:
        return await usage_status(gw, old["key"]) == 401

    await until(old_refused, timeout_s=5, what="the old key refused after its grace")
    found = error(await gw.client.get("/v1/usage", headers=bearer(old["key"])), 401)
    assert new["id"] in found["message"] and found["code"] == "key_revoked"
    assert await usage_status(gw, new["key"]) == 200
    rotated = await gw.client.post(f"/admin/keys/{old['id']}/rotate", headers=ADMIN)
    assert error(rotated, 400)["code"] == "key_revoked"


async def test_a_key_in_its_grace_cannot_be_rotated_twice(gw: InProcess) -> None:
    old = await create(gw)
    rotate = f"/admin/keys/{old['id']}/rotate"
    first = await gw.client.post(rotate, json={"grace_s": 3600}, headers=ADMIN)
    assert first.status_code == 201
    found = error(await gw.client.post(rotate, json={"grace_s": 3600}, headers=ADMIN), 400)
    assert found["code"] == "key_rotated" and first.json()["id"] in found["message"]
    listed = (await gw.client.get("/admin/keys?tenant=search", headers=ADMIN)).json()["data"]
    assert [k["status"] for k in listed if k["source"] == "api"] == ["active", "active"]


async def test_a_rotation_without_grace_ends_the_old_key_at_once(gw: InProcess) -> None:
    old = await create(gw)
    r = await gw.client.post(f"/admin/keys/{old['id']}/rotate", headers=ADMIN)
    assert r.status_code == 201 and r.json()["expires_at"] is None
    assert await usage_status(gw, old["key"]) == 401
    assert await usage_status(gw, r.json()["key"]) == 200


async def test_one_key_shows_its_spend_this_month(gw: InProcess) -> None:
    made = await create(gw)
    runtime = gw.runtime
    from gateway.cost import Usage

    await runtime.usage.add("search", "m", Usage(100, 20), 0.5, made["id"])
    r = await gw.client.get(f"/admin/keys/{made['id']}", headers=ADMIN)
    usage = r.json()["usage"]
    assert usage | {"month": "-"} == {
        "month": "-",
        "prompt_tokens": 100,
        "completion_tokens": 20,
        "requests": 1,
        "spend_usd": 0.5,
    }
    admin = (await gw.client.get("/admin/usage", headers=ADMIN)).json()
    assert admin["tenants"]["search"]["keys"][made["id"]]["spend_usd"] == 0.5
    config_id = config_key_id(hash_key(SEARCH_KEY))
    shown = (await gw.client.get(f"/admin/keys/{config_id}", headers=ADMIN)).json()
    assert shown["source"] == "config" and shown["usage"]["requests"] == 0


async def test_last_used_is_noted_without_a_store_write_per_request(gw: InProcess) -> None:
    made = await create(gw)
    before = (await gw.client.get(f"/admin/keys/{made['id']}", headers=ADMIN)).json()
    assert before["last_used_at"] is None
    writes = []
    store = gw.runtime.keys.store
    real = store.touch

    async def counting(used: dict[str, float]) -> None:
        writes.append(dict(used))
        await real(used)

    store.touch = counting  # type: ignore[method-assign]
    for _ in range(20):
        assert await usage_status(gw, made["key"]) == 200
    assert writes == []
    after = (await gw.client.get(f"/admin/keys/{made['id']}", headers=ADMIN)).json()
    assert after["last_used_at"] is not None
    await gw.runtime.keys.flush_used()
    assert len(writes) == 1 and set(writes[0]) == {made["id"]}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"name": "x"}, "tenant"),
        ({"tenant": "nobody", "name": "x"}, "tenant"),
        ({"tenant": 3, "name": "x"}, "tenant"),
        ({"tenant": "search"}, "name"),
        ({"tenant": "search", "name": ""}, "name"),
        ({"tenant": "search", "name": "a\u0000b"}, "name"),
        ({"tenant": "search", "name": "x" * 65}, "name"),
        ({"tenant": "search", "name": "x", "expires_at": "tomorrow"}, "expires_at"),
        ({"tenant": "search", "name": "x", "expires_at": "2030-01-01T00:00:00"}, "expires_at"),
        ({"tenant": "search", "name": "x", "expires_at": "2001-01-01T00:00:00Z"}, "expires_at"),
        ({"tenant": "search", "name": "x", "expires_at": "9999-01-01T00:00:00Z"}, "expires_at"),
        ({"tenant": "search", "name": "x", "expires_at": True}, "expires_at"),
        ({"tenant": "search", "name": "x", "expires_in_s": -5}, "expires_in_s"),
        ({"tenant": "search", "name": "x", "expires_in_s": "60"}, "expires_in_s"),
        ({"tenant": "search", "name": "x", "expires_in_s": 1, "expires_at": 2e9}, "expires_in_s"),
        ({"tenant": "search", "name": "x", "key": "sk-gw-mine"}, "key"),
    ],
)
async def test_bad_create_bodies_are_400s_naming_the_field(
    gw: InProcess, body: dict[str, Any], param: str
) -> None:
    found = error(await gw.client.post("/admin/keys", json=body, headers=ADMIN), 400)
    assert found["param"] == param and found["type"] == "invalid_request_error"
    assert (await gw.client.get("/admin/keys?tenant=search", headers=ADMIN)).json()["data"][0][
        "source"
    ] == "config"  # nothing was made


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"[]",
        b"{",
        b'{"tenant": "search", "tenant": "ads", "name": "x"}',
        b'{"tenant": "search", "name": "\\ud800"}',
        b'{"tenant": "search", "name": "x", "expires_in_s": NaN}',
        b'{"tenant": "search", "name": "x", "expires_in_s": 1e400}',
        b"\xff\xfe",
    ],
)
async def test_malformed_bodies_are_400s(gw: InProcess, raw: bytes) -> None:
    r = await gw.client.post("/admin/keys", content=raw, headers=ADMIN)
    error(r, 400)


async def test_a_huge_body_is_refused_before_it_is_read_whole(gw: InProcess) -> None:
    r = await gw.client.post("/admin/keys", content=b" " * (65 * 1024), headers=ADMIN)
    assert error(r, 413)["code"] == "payload_too_large"


async def test_bad_rotations_and_ids(gw: InProcess) -> None:
    made = await create(gw)
    for grace in (-1, "1h", 10**9, None):
        r = await gw.client.post(
            f"/admin/keys/{made['id']}/rotate", json={"grace_s": grace}, headers=ADMIN
        )
        assert error(r, 400)["param"] == "grace_s"
    for key_id in ("key_000000000000000000000000", "nope", "key_" + "a" * 500, "%00"):
        for method, path in (("GET", key_id), ("DELETE", key_id), ("POST", f"{key_id}/rotate")):
            r = await gw.client.request(method, f"/admin/keys/{path}", headers=ADMIN)
            found = error(r, 404)
            assert found["code"] == "key_not_found" and found["param"] == "id"
            assert "a" * 100 not in found["message"]
    found = error(await gw.client.get("/admin/keys?tenant=nobody", headers=ADMIN), 400)
    assert found["param"] == "tenant"
    assert await usage_status(gw, made["key"]) == 200  # none of it touched the key


async def test_only_admin_keys_reach_the_key_api(gw: InProcess) -> None:
    made = await create(gw)
    for key in (SEARCH_KEY, made["key"]):
        found = error(await gw.client.get("/admin/keys", headers=bearer(key)), 403)
        assert found["type"] == "permission_error"
        post = await gw.client.post(
            "/admin/keys", json={"tenant": "search", "name": "x"}, headers=bearer(key)
        )
        error(post, 403)
    error(await gw.client.get("/admin/keys"), 401)
    error(await gw.client.post("/admin/keys", headers=bearer("sk-gw-unknown")), 401)


async def test_admin_actions_are_counted(gw: InProcess) -> None:
    made = await create(gw)
    await gw.client.post(f"/admin/keys/{made['id']}/rotate", headers=ADMIN)
    await gw.client.delete(f"/admin/keys/{made['id']}", headers=ADMIN)
    metrics = (await gw.client.get("/metrics")).text
    for action in ("create", "rotate", "revoke"):
        assert f'gateway_admin_actions_total{{action="{action}"}} 1.0' in metrics


async def test_a_deeply_nested_body_is_a_400_not_a_500(gw: InProcess) -> None:
    raw = b'{"tenant": "search", "name": "x", "expires_at": ' + b"[" * 990 + b"]" * 990 + b"}"
    found = error(await gw.client.post("/admin/keys", content=raw, headers=ADMIN), 400)
    assert "nested too deeply" in found["message"]


@pytest.mark.parametrize("when", ["2027-W05-1T00:00Z", "20270131T000000Z", "2027-01-31 00:00:00Z"])
async def test_only_rfc3339_times_are_taken(gw: InProcess, when: str) -> None:
    r = await gw.client.post(
        "/admin/keys", json={"tenant": "search", "name": "x", "expires_at": when}, headers=ADMIN
    )
    assert error(r, 400)["param"] == "expires_at"


async def test_a_tenant_removed_from_the_config_suspends_its_api_keys(gw: InProcess) -> None:
    made = await create(gw, tenant="ads")
    runtime = gw.runtime
    config = base_config("http://127.0.0.1:9", server__admin_keys=[hash_key(ADMIN_KEY)])
    del config["tenants"]["ads"]
    runtime.apply(parse_settings(config))
    found = error(await gw.client.get("/v1/usage", headers=bearer(made["key"])), 401)
    assert found["code"] == "tenant_unknown" and made["id"] in found["message"]
    rotated = await gw.client.post(f"/admin/keys/{made['id']}/rotate", headers=ADMIN)
    assert error(rotated, 400)["code"] == "tenant_unknown"
    listed = (await gw.client.get("/admin/keys?tenant=ads", headers=ADMIN)).json()["data"]
    assert [k["id"] for k in listed] == [made["id"]]  # still listed, to be revoked


async def test_a_refused_known_key_is_named_in_the_access_line(
    gw: InProcess, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.access")
    made = await create(gw)
    await gw.client.delete(f"/admin/keys/{made['id']}", headers=ADMIN)
    await gw.client.get("/v1/usage", headers={**bearer(made["key"]), "x-request-id": "ended-1"})

    def line() -> str | None:
        found = [r.getMessage() for r in caplog.records if "ended-1" in r.getMessage()]
        return found[0] if found else None

    found = await until(line, what="the refusal's access line")
    assert found is not None
    assert f"key={made['id']}" in found and "401" in found and made["key"] not in found

"""Auth in-process: every public path answers without a key, every other path refuses by
default, and every refusal is OpenAI's 401/403 envelope, counted, with no key echoed."""

from __future__ import annotations

import pytest

from gateway.auth import PUBLIC_PATHS
from tests.api.conftest import ADMIN_KEY, InProcess
from tests.procs import SEARCH_KEY

PROTECTED = [
    ("GET", "/v1/models"),
    ("GET", "/v1/models/gpt-4o-mini"),
    ("GET", "/v1/usage"),
    ("POST", "/v1/chat/completions"),
    ("GET", "/v1/chat/completions"),
    ("GET", "/v1/no-such-path"),
    ("GET", "/docs"),
    ("POST", "/admin/usage"),
    ("GET", "/admin/usage"),
    ("GET", "/admin/no-such-path"),
]


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.mark.parametrize("path", sorted(PUBLIC_PATHS))
async def test_public_paths_answer_without_a_key(gw: InProcess, path: str) -> None:
    r = await gw.client.get(path)
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(("method", "path"), PROTECTED)
async def test_every_other_path_refuses_without_a_key(
    gw: InProcess, method: str, path: str
) -> None:
    r = await gw.client.request(method, path)
    assert r.status_code == 401
    error = r.json()["error"]
    assert error["type"] == "authentication_error" and error["code"] == "invalid_api_key"
    assert set(error) == {"message", "type", "param", "code"}


@pytest.mark.parametrize(
    "header",
    [
        "Bearer sk-gw-not-a-key",
        "Bearer ",
        "Basic c2stZ3c6eA==",
        SEARCH_KEY,  # no scheme
        f"Token {SEARCH_KEY}",
    ],
)
async def test_a_wrong_or_malformed_key_is_refused(gw: InProcess, header: str) -> None:
    r = await gw.client.get("/v1/usage", headers={"Authorization": header})
    assert r.status_code == 401
    assert "sk-gw-not-a-key" not in r.text and SEARCH_KEY not in r.text


async def test_the_scheme_is_case_insensitive(gw: InProcess) -> None:
    r = await gw.client.get("/v1/usage", headers={"Authorization": f"bearer {SEARCH_KEY}"})
    assert r.status_code == 200 and r.json()["tenant"] == "search"


async def test_admin_routes_take_admin_keys_only(gw: InProcess) -> None:
    tenant = await gw.client.get("/admin/usage", headers=bearer(SEARCH_KEY))
    assert tenant.status_code == 403 and tenant.json()["error"]["type"] == "permission_error"
    admin = await gw.client.get("/admin/usage", headers=bearer(ADMIN_KEY))
    assert admin.status_code == 200 and admin.json()["object"] == "usage.admin"
    # An admin key is no tenant key.
    assert (await gw.client.get("/v1/usage", headers=bearer(ADMIN_KEY))).status_code == 401


async def test_refusals_count_as_requests_and_errors(gw: InProcess) -> None:
    await gw.client.get("/v1/models")
    await gw.client.get("/admin/usage", headers=bearer(SEARCH_KEY))
    metrics = (await gw.client.get("/metrics")).text
    assert 'gateway_requests_total{model="-",status="401",tenant="-"} 1.0' in metrics
    assert 'gateway_requests_total{model="-",status="403",tenant="-"} 1.0' in metrics
    assert 'gateway_errors_total{model="-",reason="auth",tenant="-"} 2.0' in metrics

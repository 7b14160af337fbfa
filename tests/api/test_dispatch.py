"""Which handler answers what, and the framework's own refusals in OpenAI's envelope."""

from __future__ import annotations

import pytest

from tests.api.conftest import ADMIN_KEY, InProcess
from tests.procs import SEARCH_KEY

AUTH = {"Authorization": f"Bearer {SEARCH_KEY}"}


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
async def test_chat_takes_post_only(gw: InProcess, method: str) -> None:
    r = await gw.client.request(method, "/v1/chat/completions", headers=AUTH)
    assert r.status_code == 405 and r.headers["allow"] == "POST"
    assert r.json()["error"]["type"] == "invalid_request_error"
    assert "x-request-id" in r.headers


async def test_other_routes_405_with_their_methods(gw: InProcess) -> None:
    r = await gw.client.post("/v1/models", headers=AUTH)
    assert r.status_code == 405 and r.headers["allow"] == "GET"
    assert r.json()["error"]["message"] == "Method not allowed (POST /v1/models)."


async def test_an_unknown_path_is_a_404_envelope(gw: InProcess) -> None:
    r = await gw.client.get("/nothing", headers=AUTH)
    assert r.status_code == 404
    assert r.json() == {
        "error": {
            "message": "Invalid URL (GET /nothing).",
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        }
    }


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/embeddings"),
        ("POST", "/v1/completions"),
        ("POST", "/v1/images/generations"),
        ("POST", "/v1/audio/transcriptions"),
        ("GET", "/v1/files"),
    ],
)
async def test_openai_paths_w_and_b_does_not_offer_say_what_the_gateway_serves(
    gw: InProcess, method: str, path: str
) -> None:
    r = await gw.client.request(method, path, headers=AUTH)
    assert r.status_code == 404
    message = r.json()["error"]["message"]
    assert message.startswith(f"Invalid URL ({method} {path}).")
    assert "/v1/chat/completions" in message and "/v1/responses" in message
    assert "/v1/models" in message


async def test_docs_are_off(gw: InProcess) -> None:
    for path in ("/docs", "/redoc"):
        assert (await gw.client.get(path, headers=AUTH)).status_code == 404


async def test_the_openapi_document_describes_every_endpoint(gw: InProcess) -> None:
    r = await gw.client.get("/openapi.json")
    assert r.status_code == 200
    doc = r.json()
    paths = doc["paths"]
    expected = {
        "/v1/chat/completions": "post",
        "/v1/models": "get",
        "/v1/models/{model}": "get",
        "/v1/usage": "get",
        "/admin/usage": "get",
        "/healthz": "get",
        "/readyz": "get",
        "/metrics": "get",
    }
    for path, method in expected.items():
        assert method in paths.get(path, {}), path
    assert paths["/v1/usage"]["get"]["security"] == [{"gatewayKey": []}]
    assert "security" not in paths["/healthz"]["get"]
    chat = paths["/v1/chat/completions"]["post"]
    assert chat["requestBody"]["content"]["application/json"]["schema"]["required"] == [
        "model",
        "messages",
    ]
    assert "ErrorEnvelope" in doc["components"]["schemas"]
    # What the document promises is what the routes answer.
    usage = (await gw.client.get("/v1/usage", headers=AUTH)).json()
    usage_schema = doc["components"]["schemas"]["OwnUsage"]
    assert set(usage) == set(usage_schema["properties"])
    admin = await gw.client.get("/admin/usage", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert set(admin.json()) == set(doc["components"]["schemas"]["AdminUsage"]["properties"])

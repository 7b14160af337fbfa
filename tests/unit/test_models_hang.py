"""/v1/models in front of a W&B that accepts the connection and never answers: every caller gets
an answer within `upstream.models_timeout_s` (the list from before when there is one), and they
share one fetch instead of queueing behind a lock for upstream's 600 s read timeout each.

The app runs in-process (its lifespan, over httpx.ASGITransport); upstream is a real socket.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from gateway.app import create_app
from gateway.config import parse_settings
from gateway.keys import hash_key
from tests.procs import LLAMA, OTHER_WANDB_KEY, SEARCH_KEY, base_config

SOLO_KEY = "sk-gw-test-solo"
TIMEOUT_S = 0.5
TTL_S = 0.3


class HungUpstream:
    """A raw socket server on 127.0.0.1: answers GET /v1/models while `hang` is off, else reads
    the request and holds the connection open without a byte in reply."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.hang = False
        self.held: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:  # closed
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        request = b""
        while b"\r\n\r\n" not in request and (chunk := conn.recv(65536)):
            request += chunk
        if self.hang:
            self.held.append(conn)  # never answered, never closed until the test ends
            return
        body = json.dumps({"object": "list", "data": [{"id": LLAMA, "object": "model"}]})
        conn.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n{body}".encode()
        )
        conn.close()

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


@pytest.fixture
def upstream() -> Iterator[HungUpstream]:
    server = HungUpstream()
    yield server
    server.close()


@pytest.fixture
async def gw(upstream: HungUpstream) -> AsyncIterator[httpx.AsyncClient]:
    config = base_config(
        upstream.url,
        upstream__models_timeout_s=TIMEOUT_S,
        upstream__models_cache_ttl_s=TTL_S,
        accounts__second={"api_key": OTHER_WANDB_KEY, "max_concurrency": 2},
        tenants__solo={"keys": [hash_key(SOLO_KEY)], "account": "second", "project": "acme/solo"},
    )
    app = create_app(parse_settings(config))
    transport = httpx.ASGITransport(app=app)
    async with (
        app.api.router.lifespan_context(app.api),
        httpx.AsyncClient(transport=transport, base_url="http://gateway", timeout=10) as client,
    ):
        yield client


async def models(gw: httpx.AsyncClient, key: str) -> tuple[httpx.Response, float]:
    began = time.monotonic()
    async with asyncio.timeout(TIMEOUT_S + 2):  # in-process, httpx's own timeout cannot fire
        resp = await gw.get("/v1/models", headers={"Authorization": f"Bearer {key}"})
    return resp, time.monotonic() - began


async def test_a_hung_upstream_costs_models_one_bounded_wait(
    gw: httpx.AsyncClient, upstream: HungUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    listed, _ = await models(gw, SEARCH_KEY)  # account main: a list is known from now on
    assert listed.status_code == 200
    upstream.hang = True

    # Account second has never had a list: five callers at once, one fetch, one bounded wait.
    answers = await asyncio.gather(*(models(gw, SOLO_KEY) for _ in range(5)))
    for resp, took in answers:
        assert resp.status_code == 504
        assert resp.json()["error"]["code"] == "upstream_timeout"
        assert "models_timeout_s (0.5s)" in resp.json()["error"]["message"]
        assert TIMEOUT_S * 0.9 < took < TIMEOUT_S + 1.0
    assert len(upstream.held) == 1  # they shared the one fetch

    # Account main's list went stale meanwhile: it is served, within the same bound ...
    stale, took = await models(gw, SEARCH_KEY)
    assert stale.status_code == 200 and stale.json()["data"] == listed.json()["data"]
    assert took < TIMEOUT_S + 1.0
    # ... and kept for another ttl, with no wait at all.
    again, took = await models(gw, SEARCH_KEY)
    assert again.status_code == 200 and took < 0.2
    warned = [r.getMessage() for r in caplog.records if r.name == "gateway.catalog"]
    assert warned == ["upstream /models failed (upstream_timeout); serving the cached list"]

"""The app in-process: `create_app` over `httpx.ASGITransport`, its lifespan run by the fixture.

Upstream is a closed port on 127.0.0.1, so a request that gets that far fails fast (connection
refused) and nothing leaves the machine; these tests are about what the gateway decides itself.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest

from gateway.app import Gateway, create_app
from gateway.config import parse_settings
from gateway.keys import hash_key
from gateway.runtime import Runtime
from tests.procs import base_config, free_port

ADMIN_KEY = "sk-gw-test-admin"


@dataclass
class InProcess:
    app: Gateway
    client: httpx.AsyncClient

    @property
    def runtime(self) -> Runtime:
        runtime: Runtime = self.app.state.runtime
        return runtime


def settings(**overrides: object):  # type: ignore[no-untyped-def]
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    config = base_config(closed, server__admin_keys=[hash_key(ADMIN_KEY)], **overrides)
    return parse_settings(config)


@pytest.fixture
async def gw() -> AsyncIterator[InProcess]:
    app = create_app(settings())
    transport = httpx.ASGITransport(app=app)
    async with (
        app.api.router.lifespan_context(app.api),
        httpx.AsyncClient(transport=transport, base_url="http://gateway") as client,
    ):
        yield InProcess(app, client)

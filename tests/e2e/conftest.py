"""Session-wide fake upstream and gateway, over real sockets; each test starts from a clean fake."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.e2e.helpers import OPEN_CLIENTS
from tests.procs import Proc, base_config, start_fake, start_gateway


@pytest.fixture(scope="session")
def fake() -> Iterator[Proc]:
    proc = start_fake(concurrency=4)
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def gateway(fake: Proc) -> Iterator[Proc]:
    proc = start_gateway(base_config(fake.url))
    yield proc
    proc.stop()


@pytest.fixture(autouse=True)
def clean_fake(request: pytest.FixtureRequest) -> Iterator[None]:
    if "fake" in request.fixturenames:
        fake: Proc = request.getfixturevalue("fake")
        httpx.post(fake.url + "/_fake/reset").raise_for_status()
    yield
    while OPEN_CLIENTS:
        OPEN_CLIENTS.pop().close()

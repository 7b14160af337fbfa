"""What several unit test modules share: a private redis-server, one per module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.procs import redis_server


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with redis_server() as url:
        yield url

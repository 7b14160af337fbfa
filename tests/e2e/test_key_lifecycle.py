"""The key lifecycle over real sockets, on two gateways that share one store: Redis (two
replicas, `limiter.backend: redis`) or one keys file (two memory-backend processes, as the
workers of one node share it). Create on A, use on B; revoke on A, refused on B within 2 s;
rotate with a grace; expiry; both restarted, the keys still work. The official SDK calls."""

from __future__ import annotations

import stat
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import redis

from gateway.keys import hash_key
from tests.e2e.helpers import USER, client
from tests.poll import until_sync
from tests.procs import LLAMA, Proc, base_config, redis_server, start_gateway

ADMIN_KEY = "sk-gw-test-admin-lifecycle"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
AGREE_S = 2.0  # what the README promises: every replica agrees within this


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with redis_server() as url:
        yield url


@pytest.fixture(params=["redis", "file"])
def backend(request: pytest.FixtureRequest, fake: Proc, tmp_path: Path) -> dict[str, Any]:
    if request.param == "redis":
        url = request.getfixturevalue("redis_url")
        return base_config(
            fake.url,
            server__admin_keys=[hash_key(ADMIN_KEY)],
            limiter__backend="redis",
            limiter__redis_url=url,
            limiter__key_prefix=f"k-{uuid.uuid4().hex[:8]}",
        )
    return base_config(
        fake.url,
        server__admin_keys=[hash_key(ADMIN_KEY)],
        server__keys_store=str(tmp_path / "gateway.keys.json"),
    )


@pytest.fixture
def pair(backend: dict[str, Any]) -> Iterator[list[Proc]]:
    procs = [start_gateway(backend), start_gateway(backend)]
    yield procs
    for proc in procs:
        proc.stop()


def admin(gateway: Proc, method: str, path: str, **body: Any) -> dict[str, Any]:
    r = httpx.request(method, gateway.url + path, json=body or None, headers=ADMIN, timeout=10)
    assert r.status_code in (200, 201), r.text
    answer: dict[str, Any] = r.json()
    return answer


def chat(gateway: Proc, key: str) -> str:
    answer = client(gateway, key).chat.completions.create(model=LLAMA, messages=USER)  # type: ignore[arg-type]
    return answer.choices[0].message.content or ""


def refusal(gateway: Proc, key: str) -> str | None:
    """The 401's message for this key, or None while it is accepted."""
    try:
        chat(gateway, key)
    except openai.AuthenticationError as exc:
        return str(exc)
    return None


def within(seconds: float, check: Any, what: str) -> float:
    """How long `check` took to come true; fails past `seconds`."""
    start = time.monotonic()
    until_sync(check, timeout_s=seconds, what=what)
    return time.monotonic() - start


def test_every_replica_agrees_on_each_change(pair: list[Proc], backend: dict[str, Any]) -> None:
    a, b = pair
    made = admin(a, "POST", "/admin/keys", tenant="search", name="ci-bot")
    key = made["key"]
    within(AGREE_S, lambda: refusal(b, key) is None, "B accepting a key made on A")
    assert chat(b, key)

    admin(a, "DELETE", f"/admin/keys/{made['id']}")
    took = within(AGREE_S, lambda: refusal(b, key), "B refusing a key revoked on A")
    message = refusal(b, key)
    assert message is not None and "revoked" in message and made["id"] in message
    assert key not in message
    print(f"revoked on A, refused on B after {took:.3f} s")

    listed = admin(b, "GET", "/admin/keys?tenant=search")["data"]
    assert {k["id"]: k["status"] for k in listed}[made["id"]] == "revoked"
    assert_no_secret_stored(backend, key)


def test_a_rotation_on_one_replica_is_honoured_by_the_other(pair: list[Proc]) -> None:
    a, b = pair
    old = admin(a, "POST", "/admin/keys", tenant="ads", name="app")
    within(AGREE_S, lambda: refusal(b, old["key"]) is None, "B accepting the first key")
    new = admin(a, "POST", f"/admin/keys/{old['id']}/rotate", grace_s=2)
    within(AGREE_S, lambda: refusal(b, new["key"]) is None, "B accepting the new key")
    assert refusal(b, old["key"]) is None  # within its grace
    within(2 + AGREE_S, lambda: refusal(b, old["key"]), "B refusing the old key after the grace")
    message = refusal(a, old["key"])
    assert message is not None and new["id"] in message
    assert refusal(a, new["key"]) is None and refusal(b, new["key"]) is None


def test_an_expired_key_is_refused_saying_so(pair: list[Proc]) -> None:
    a, b = pair
    made = admin(a, "POST", "/admin/keys", tenant="search", name="short", expires_in_s=1.5)
    within(AGREE_S, lambda: refusal(b, made["key"]) is None, "B accepting the key")
    within(1.5 + AGREE_S, lambda: refusal(b, made["key"]), "B refusing the key once expired")
    message = refusal(b, made["key"])
    assert message is not None and "expired" in message and made["id"] in message


def test_api_keys_outlive_a_restart_of_every_replica(
    pair: list[Proc], backend: dict[str, Any]
) -> None:
    a = pair[0]
    kept = admin(a, "POST", "/admin/keys", tenant="search", name="kept")
    gone = admin(a, "POST", "/admin/keys", tenant="search", name="gone")
    admin(a, "DELETE", f"/admin/keys/{gone['id']}")
    chat(a, kept["key"])  # a last use, written before the process exits
    for proc in pair:
        proc.stop()
    pair[:] = [start_gateway(backend), start_gateway(backend)]
    shown = admin(pair[1], "GET", f"/admin/keys/{kept['id']}")  # before any use after the restart
    assert shown["last_used_at"] is not None  # written at exit
    if "keys_store" not in backend["server"]:  # usage lives in Redis; memory usage is per process
        assert shown["usage"]["requests"] == 1
    for proc in pair:
        assert chat(proc, kept["key"])
        message = refusal(proc, gone["key"])
        assert message is not None and "revoked" in message
    if "keys_store" in backend["server"]:
        file = Path(backend["server"]["keys_store"])
        assert stat.S_IMODE(file.stat().st_mode) == 0o600


def assert_no_secret_stored(backend: dict[str, Any], key: str) -> None:
    """The store holds the key's hash, never the key."""
    if "keys_store" in backend["server"]:
        text = Path(backend["server"]["keys_store"]).read_text()
        assert key not in text and hash_key(key) in text
        return
    limiter = backend["limiter"]
    direct = redis.Redis.from_url(limiter["redis_url"], decode_responses=True)
    try:
        stored = "".join(
            str(direct.hgetall(k))
            for k in direct.scan_iter(f"{limiter['key_prefix']}:keys*")
            if direct.type(k) == "hash"
        )
    finally:
        direct.close()
    assert key not in stored and hash_key(key) in stored

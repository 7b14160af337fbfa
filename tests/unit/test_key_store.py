"""The key stores and the keyring: writers racing on one store all land, a broken or absent
store leaves the last view in force, and a known key costs a dict hit, not a SHA-256."""

from __future__ import annotations

import asyncio
import stat
import time
import uuid
from pathlib import Path

import pytest
from redis.asyncio import Redis

from gateway import keyring as keyring_module
from gateway.config import LimiterSettings, parse_settings
from gateway.errors import AuthenticationError, Unavailable
from gateway.key_service import KEEP_ENDED_S, Keys
from gateway.key_store import FileKeyStore, KeyStore, KeyStoreError, MemoryKeyStore
from gateway.key_store_redis import RedisKeyStore
from gateway.keyring import KNOWN_KEYS_MAX, Keyring
from gateway.keys import ApiKey, hash_key
from gateway.redis_client import connect
from tests.procs import SEARCH_KEY, base_config, free_port, redis_server

SETTINGS = parse_settings(base_config("http://127.0.0.1:9"))


def redis_store(url: str, prefix: str) -> RedisKeyStore:
    return RedisKeyStore(*connect(LimiterSettings(redis_url=url)), prefix)


async def test_writers_racing_on_one_file_all_land(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    services = [Keys(FileKeyStore(path), SETTINGS) for _ in range(3)]  # three processes' worth
    made = await asyncio.gather(
        *(s.create("search", f"k{i}", None) for i, s in enumerate(services * 7))
    )
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    fresh = Keys(FileKeyStore(path), SETTINGS)
    await fresh.refresh()
    assert set(fresh.ring.records) == {record.id for record, _ in made}
    for record, secret in made:
        assert fresh.ring.grant(secret).key_id == record.id
        assert secret not in path.read_text()
    assert temporary_files(tmp_path) == []  # none left behind


def temporary_files(folder: Path) -> list[Path]:
    return list(folder.glob(".*tmp"))


async def test_writers_racing_on_one_redis_all_land(redis_url: str) -> None:
    prefix = f"ks-{uuid.uuid4().hex[:8]}"
    services = [Keys(redis_store(redis_url, prefix), SETTINGS) for _ in range(3)]
    try:
        made = await asyncio.gather(
            *(s.create("search", f"k{i}", None) for i, s in enumerate(services * 5))
        )
        await services[0].refresh()
        assert set(services[0].ring.records) == {record.id for record, _ in made}
    finally:
        for s in services:
            await s.close()


async def test_a_broken_file_leaves_the_last_view_in_force(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    keys = Keys(FileKeyStore(path), SETTINGS)
    record, secret = await keys.create("search", "app", None)
    path.write_text("{not json")
    with pytest.raises(KeyStoreError, match="not a keys store"):
        await keys.refresh()
    assert keys.ring.grant(secret).key_id == record.id
    with pytest.raises(KeyStoreError):
        await keys.create("search", "another", None)  # nothing written over a broken file
    assert path.read_text() == "{not json"


async def test_a_store_never_read_refuses_unknown_keys_with_a_503(tmp_path: Path) -> None:
    closed = f"redis://127.0.0.1:{free_port()}/0"
    keys = Keys(redis_store(closed, "x"), SETTINGS)
    await keys.start()
    try:
        with pytest.raises(Unavailable) as refused:
            keys.ring.grant("sk-gw-some-api-key")
        assert refused.value.headers["retry-after"] == "1"
        assert keys.ring.grant(SEARCH_KEY).tenant.name == "search"  # config keys need no store
    finally:
        await keys.close()
    loaded = Keys(MemoryKeyStore(), SETTINGS)
    await loaded.refresh()
    with pytest.raises(AuthenticationError):
        loaded.ring.grant("sk-gw-some-api-key")


async def test_a_known_key_costs_no_hash(monkeypatch: pytest.MonkeyPatch) -> None:
    keys = Keys(MemoryKeyStore(), SETTINGS)
    _, secret = await keys.create("search", "app", None)
    hashed: list[str] = []

    def counting(key: str) -> str:
        hashed.append(key)
        return hash_key(key)

    monkeypatch.setattr(keyring_module, "hash_key", counting)
    for _ in range(100):
        keys.ring.grant(secret)
        keys.ring.grant(SEARCH_KEY)
    assert hashed == [secret, SEARCH_KEY]


async def test_ended_keys_are_forgotten_after_a_month(monkeypatch: pytest.MonkeyPatch) -> None:
    keys = Keys(MemoryKeyStore(), SETTINGS)
    old, _ = await keys.create("search", "old", None)
    await keys.revoke(old.id)
    later = time.time() + KEEP_ENDED_S + 1
    monkeypatch.setattr(time, "time", lambda: later)
    await keys.create("search", "new", None)
    assert old.id not in keys.ring.records and len(keys.ring.records) == 1


async def test_last_use_times_merge_the_latest(tmp_path: Path, redis_url: str) -> None:
    stores: list[KeyStore] = [
        MemoryKeyStore(),
        FileKeyStore(tmp_path / "k.json"),
        redis_store(redis_url, f"u-{uuid.uuid4().hex[:6]}"),
    ]
    for store in stores:
        now = time.time()
        await store.touch({"cfg_a": now + 10, "cfg_b": now + 5, "cfg_old": 5.0})
        await store.touch({"cfg_a": now + 7, "cfg_b": now + 9})
        used = await store.last_used()
        assert {k: used[k] for k in ("cfg_a", "cfg_b")} == {"cfg_a": now + 10, "cfg_b": now + 9}
        await store.close()


def test_the_known_keys_cache_holds_at_most_its_bound_of_valid_keys() -> None:
    records = {}
    secrets = []
    for i in range(KNOWN_KEYS_MAX + 20):
        secret = f"sk-gw-bound-{i}"
        record = ApiKey(f"key_{i:024x}", "search", "n", hash_key(secret), 0.0)
        records[record.id] = record
        secrets.append(secret)
    ring = Keyring(SETTINGS, records, loaded=True, used={})
    for secret in secrets:
        assert ring.grant(secret).tenant.name == "search"  # past the bound: a hash each time
    assert len(ring.known) == KNOWN_KEYS_MAX


async def test_reading_last_use_times_does_not_hide_a_change_of_the_records(
    tmp_path: Path,
) -> None:
    path = tmp_path / "keys.json"
    a, b = Keys(FileKeyStore(path), SETTINGS), Keys(FileKeyStore(path), SETTINGS)
    record, secret = await a.create("search", "app", None)
    await b.refresh()
    await a.revoke(record.id)
    await b.last_used()  # an admin listing keys on B, between two looks of B's watch
    await b.refresh()
    with pytest.raises(AuthenticationError, match="revoked"):
        b.ring.grant(secret)


async def test_last_use_writes_never_make_the_records_reload(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    a, b = Keys(FileKeyStore(path), SETTINGS), Keys(FileKeyStore(path), SETTINGS)
    _, secret = await a.create("search", "app", None)
    await b.refresh()
    before = b.ring
    a.ring.grant(secret)
    await a.flush_used()
    await b.refresh()
    assert b.ring is before  # same view: its known keys stay warm
    assert (await b.last_used()).keys() == {a.ring.grant(secret).key_id}


async def test_redis_changes_reach_a_replica_without_reading_every_record(redis_url: str) -> None:
    prefix = f"inc-{uuid.uuid4().hex[:8]}"
    a, b = (
        Keys(redis_store(redis_url, prefix), SETTINGS),
        Keys(redis_store(redis_url, prefix), SETTINGS),
    )
    try:
        await a.create("search", "first", None)
        await b.refresh()
        store = b.store
        assert isinstance(store, RedisKeyStore)
        await store.wait(0.01)  # subscribed now
        record, secret = await a.create("search", "second", None)

        def no_full_reload(*args: object, **kw: object) -> None:
            raise AssertionError("a full reload, where the published change was enough")

        store._redis.pipeline = no_full_reload  # type: ignore[method-assign,assignment]
        await store.wait(1.0)  # the message
        await b.refresh()
        assert b.ring.grant(secret).key_id == record.id
    finally:
        await a.close()
        await b.close()


async def test_redis_losing_its_data_is_noticed_and_said(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    prefix = f"lost-{uuid.uuid4().hex[:8]}"
    a, b = (
        Keys(redis_store(redis_url, prefix), SETTINGS),
        Keys(redis_store(redis_url, prefix), SETTINGS),
    )
    direct = Redis.from_url(redis_url)
    try:
        _, secret = await a.create("search", "app", None)
        await b.refresh()
        for key in await direct.keys(f"{prefix}:*"):
            await direct.delete(key)
        await b.refresh()
        with pytest.raises(AuthenticationError):
            b.ring.grant(secret)
        assert "are gone from the store" in caplog.text
    finally:
        await direct.aclose()
        await a.close()
        await b.close()


async def test_redis_gone_mid_run_keeps_the_keys_and_refuses_changes() -> None:
    with redis_server() as url:
        keys = Keys(redis_store(url, "mid"), SETTINGS)
        await keys.start()
        record, secret = await keys.create("search", "app", None)
    try:  # the server is stopped now
        with pytest.raises(KeyStoreError):
            await keys.refresh()
        assert keys.ring.grant(secret).key_id == record.id  # the last view stays in force
        with pytest.raises(KeyStoreError):
            await keys.revoke(record.id)
    finally:
        await keys.close()

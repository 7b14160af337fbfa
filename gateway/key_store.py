"""Where the keys made over the admin API live: the records (never a secret) and when each key
was last used. Config-file keys are not here: the config holds them.

- `MemoryKeyStore`: this process only, gone with it (settings built in memory, tests).
- `FileKeyStore`: one JSON file (`server.keys_store`, beside the config by default), mode 0600,
  replaced atomically under a lock, so the worker processes of one node share it and it
  outlives restarts. Workers see each other's changes by polling its metadata.
- `RedisKeyStore` (gateway.key_store_redis): with `limiter.backend: redis`, shared by every
  replica, each change published to them.

Every store answers `records()` with the whole set when it changed since the last call (else
None), and applies a change as one read-modify-write (`update`) that no other writer, in this
process or another, can interleave with.
"""

from __future__ import annotations

import asyncio
import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import orjson

from gateway.config_edit import locked, put, staged
from gateway.keys import ApiKey

T = TypeVar("T")
Records = dict[str, ApiKey]
FORMAT = 1


class KeyStoreError(Exception):
    """The store cannot be read or written now."""


class KeyStore(ABC):
    poll_s = 0.5  # how often a replica asks whether the records changed

    @abstractmethod
    async def records(self) -> Records | None:
        """Every record, if they changed since the last call (the first call: always)."""

    @abstractmethod
    async def update(self, change: Callable[[Records], T]) -> T:
        """Apply `change` (it edits the records it is given, returns the answer) atomically."""

    @abstractmethod
    async def touch(self, used: dict[str, float]) -> None:
        """Record when keys were last used (key id -> unix time); a later time wins."""

    @abstractmethod
    async def last_used(self) -> dict[str, float]: ...

    async def wait(self, seconds: float) -> None:
        """Until the records may have changed, or `seconds`."""
        await asyncio.sleep(seconds)

    async def close(self) -> None:  # noqa: B027 (an optional hook)
        """Release connections."""


class MemoryKeyStore(KeyStore):
    def __init__(self) -> None:
        self._records: Records = {}
        self._used: dict[str, float] = {}
        self._version = 0
        self._seen = -1

    async def records(self) -> Records | None:
        if self._seen == self._version:
            return None
        self._seen = self._version
        return dict(self._records)

    async def update(self, change: Callable[[Records], T]) -> T:
        records = dict(self._records)
        answer = change(records)
        self._records = records
        self._version += 1
        return answer

    async def touch(self, used: dict[str, float]) -> None:
        merge_used(self._used, used)

    async def last_used(self) -> dict[str, float]:
        return dict(self._used)


def merge_used(into: dict[str, float], used: dict[str, float]) -> None:
    for key_id, at in used.items():
        if at > into.get(key_id, 0.0):
            into[key_id] = at


class FileKeyStore(KeyStore):
    """`{"format": 1, "keys": {id: record}, "last_used": {id: unix time}}`. Reads and writes run
    in a thread: the event loop never waits on the disk or on another writer's lock."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._seen: tuple[int, int, int] | None = None  # the file's (inode, size, mtime) read
        self._used: dict[str, float] = {}

    async def records(self) -> Records | None:
        return await asyncio.to_thread(self._records)

    def _records(self) -> Records | None:
        signature = self._signature()
        if signature is not None and signature == self._seen:
            return None
        data = self._read()
        self._seen = signature
        self._used = data["last_used"]
        keys: Records = data["keys"]
        return keys

    def _signature(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise KeyStoreError(f"cannot read {self.path}: {exc.strerror}") from None
        return st.st_ino, st.st_size, st.st_mtime_ns

    def _read(self) -> dict[str, Any]:
        try:
            raw = orjson.loads(self.path.read_bytes())
            keys = {k: ApiKey.from_json(v) for k, v in raw["keys"].items()}
            used = {str(k): float(v) for k, v in raw.get("last_used", {}).items()}
        except FileNotFoundError:
            return {"keys": {}, "last_used": {}}
        except OSError as exc:
            raise KeyStoreError(f"cannot read {self.path}: {exc.strerror}") from None
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
            raise KeyStoreError(f"{self.path} is not a keys store ({exc})") from None
        return {"keys": keys, "last_used": used}

    async def update(self, change: Callable[[Records], T]) -> T:
        return await asyncio.to_thread(self._edit, lambda data: change(data["keys"]))

    async def touch(self, used: dict[str, float]) -> None:
        await asyncio.to_thread(self._edit, lambda data: merge_used(data["last_used"], used))

    async def last_used(self) -> dict[str, float]:
        await self.records()
        return dict(self._used)

    def _edit(self, change: Callable[[dict[str, Any]], T]) -> T:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with locked(self.path):
                data = self._read()
                answer = change(data)
                data["last_used"] = {  # a removed record's time goes with it
                    k: v
                    for k, v in data["last_used"].items()
                    if k in data["keys"] or k.startswith("cfg_")
                }
                text = orjson.dumps(
                    {
                        "format": FORMAT,
                        "keys": {k: r.to_json() for k, r in data["keys"].items()},
                        "last_used": data["last_used"],
                    },
                    option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS,
                )
                with staged(self.path, text.decode()) as temp:
                    put(temp, self.path, 0o600)
        except OSError as exc:
            raise KeyStoreError(f"cannot write {self.path}: {exc.strerror}") from None
        return answer

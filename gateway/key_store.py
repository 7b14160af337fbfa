"""Where the keys made over the admin API live: the records (never a secret) and when each key
was last used. Config-file keys are not here: the config holds them.

- `MemoryKeyStore`: this process only, gone with it (settings built in memory, tests).
- `FileKeyStore`: a JSON file (`server.keys_store`, beside the config by default) and its
  `.last-used` sidecar, mode 0600, each replaced atomically under a lock, so the worker
  processes of one node share them and they outlive restarts. Workers see each other's changes
  by polling the records file's metadata.
- `RedisKeyStore` (gateway.key_store_redis): with `limiter.backend: redis`, shared by every
  replica, each change published to them.

Every store answers `records()` with the whole set when it changed since the last call (else
None), and applies a change as one read-modify-write (`update`) that no other writer, in this
process or another, can interleave with.
"""

from __future__ import annotations

import asyncio
import os
import time
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
USED_KEPT_S = 400 * 24 * 3600  # a last-use time older than this is dropped from the file


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
    """Two files, each replaced atomically under its own lock: `path` holds the records,
    `{"format": 1, "keys": {id: record}}`; `path` + `.last-used` holds `{id: unix time}`, so the
    last-use writes (every few seconds) never make the other processes reload the records.
    Reads and writes run in a thread: the event loop never waits on the disk or a lock."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.used_path = path.with_name(path.name + ".last-used")
        self._seen: tuple[int, int, int] | None = None  # the records file's (inode, size, mtime)

    async def records(self) -> Records | None:
        return await asyncio.to_thread(self._records)

    def _records(self) -> Records | None:
        signature = self._signature()
        if signature == self._seen:
            return None
        records = self._decoded(self.path, _records)
        self._seen = signature
        return records

    def _signature(self) -> tuple[int, int, int]:
        """(0, 0, 0) while there is no file: the same every time, so nothing reloads."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return 0, 0, 0
        except OSError as exc:
            raise KeyStoreError(f"cannot read {self.path}: {exc.strerror}") from None
        return st.st_ino, st.st_size, st.st_mtime_ns

    def _load(self, path: Path) -> dict[str, Any]:
        """The file's map (`keys` of the records file; the whole last-use file); {} if none."""
        try:
            raw = orjson.loads(path.read_bytes())
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise KeyStoreError(f"cannot read {path}: {exc.strerror}") from None
        except orjson.JSONDecodeError as exc:
            raise KeyStoreError(f"{path} is not a keys store ({exc})") from None
        found = raw.get("keys") if path == self.path and isinstance(raw, dict) else raw
        if not isinstance(found, dict):
            raise KeyStoreError(f"{path} is not a keys store (not a JSON object of keys)")
        return found

    def _decoded(self, path: Path, decode: Callable[[dict[str, Any]], T]) -> T:
        try:
            return decode(self._load(path))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise KeyStoreError(f"{path} is not a keys store ({exc})") from None

    async def update(self, change: Callable[[Records], T]) -> T:
        def edit() -> T:
            records = self._decoded(self.path, _records)
            answer = change(records)
            self._write(
                self.path, {"format": FORMAT, "keys": {k: r.to_json() for k, r in records.items()}}
            )
            return answer

        return await asyncio.to_thread(self._locked, self.path, edit)

    async def touch(self, used: dict[str, float]) -> None:
        def edit() -> None:
            held = self._decoded(self.used_path, _times)
            merge_used(held, used)
            forgotten = time.time() - USED_KEPT_S  # a key not used for so long is long gone
            held = {k: at for k, at in held.items() if at > forgotten}
            self._write(self.used_path, held)

        await asyncio.to_thread(self._locked, self.used_path, edit)

    async def last_used(self) -> dict[str, float]:
        return await asyncio.to_thread(self._decoded, self.used_path, _times)

    def _locked(self, path: Path, edit: Callable[[], T]) -> T:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with locked(path):
                return edit()
        except OSError as exc:
            raise KeyStoreError(f"cannot write {path}: {exc.strerror}") from None

    @staticmethod
    def _write(path: Path, document: dict[str, Any]) -> None:
        text = orjson.dumps(document, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)
        with staged(path, text.decode()) as temp:
            put(temp, path, 0o600)


def _records(raw: dict[str, Any]) -> Records:
    return {str(k): ApiKey.from_json(v) for k, v in raw.items()}


def _times(raw: dict[str, Any]) -> dict[str, float]:
    return {str(k): float(v) for k, v in raw.items()}

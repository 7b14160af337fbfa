"""Live reloads, over a real gateway process: a change is a change of content, whatever the mtime
says, and a reload that failed is tried again until it succeeds, its failure logged once and
without the source text."""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from gateway.keys import hash_key
from tests.poll import until_sync
from tests.procs import SEARCH_KEY, Proc, base_config, free_port, spawn

OLD_KEY = "sk-gw-test-reload-old"  # same length as NEW_KEY: a swap keeps the file's size
NEW_KEY = "sk-gw-test-reload-new"
FIXED_KEY = "sk-gw-test-reload-fixed"
LATE_KEY = "sk-gw-test-reload-late"
INLINE_SECRET = "wandb-inline-SECRET-0123456789"
POLL_S = 0.2


def status(gw: Proc, key: str) -> int:
    headers = {"Authorization": f"Bearer {key}"}
    return httpx.get(gw.url + "/v1/models", headers=headers, timeout=10).status_code


def within(limit_s: float, check: Callable[[], bool], what: str) -> None:
    began = time.monotonic()
    until_sync(check, timeout_s=limit_s, what=what)
    assert time.monotonic() - began < limit_s


def write_keeping_mtime(path: Path, text: str, stamp: os.stat_result) -> None:
    """New content with the old mtime (as `cp -p`, a restore, or a coarse clock would leave)."""
    path.write_text(text)
    os.utime(path, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))


@pytest.fixture(scope="module")
def folder() -> Path:
    return Path(tempfile.mkdtemp(prefix="reload-"))


@pytest.fixture(scope="module")
def gw(fake: Proc, folder: Path) -> Iterator[Proc]:
    """One gateway for the module (each test leaves the files valid for the other)."""
    (folder / "search.keys").write_text(f"{hash_key(SEARCH_KEY)}\n{hash_key(OLD_KEY)}\n")
    path = folder / "gateway.yaml"
    path.write_text(yaml.safe_dump(config(fake)))
    port = free_port()
    proc = spawn(["serve", "--config", str(path), "--port", str(port)], port, "/healthz", "gateway")
    yield proc
    proc.stop()


def config(fake: Proc, **tenants: Any) -> dict[str, Any]:
    raw = base_config(fake.url, server__reload_poll_s=POLL_S)
    del raw["tenants"]["search"]["keys"]
    raw["tenants"]["search"]["keys_file"] = "search.keys"
    raw["tenants"].update(tenants)
    return raw


def test_a_key_swapped_with_the_same_mtime_size_and_inode_is_refused(
    gw: Proc, folder: Path
) -> None:
    keys = folder / "search.keys"
    assert status(gw, OLD_KEY) == 200
    before = keys.stat()
    write_keeping_mtime(keys, f"{hash_key(SEARCH_KEY)}\n{hash_key(NEW_KEY)}\n", before)
    after = keys.stat()
    assert (after.st_mtime_ns, after.st_size, after.st_ino) == (
        before.st_mtime_ns,
        before.st_size,
        before.st_ino,
    )
    within(10 * POLL_S, lambda: status(gw, OLD_KEY) == 401, "the removed key refused")
    assert status(gw, NEW_KEY) == 200


def test_a_failed_reload_is_retried_and_logged_once_without_the_source(
    fake: Proc, gw: Proc, folder: Path
) -> None:
    path = folder / "gateway.yaml"
    good = path.read_text()
    # A syntax error on the line of an inline key.
    broken = good.replace("accounts:\n", f"accounts:\n  other: {{api_key: {INLINE_SECRET}\n", 1)
    path.write_text(broken)
    stamp = path.stat()
    until_sync(lambda: "config reload refused" in gw.logs(), what="the refusal logged")
    time.sleep(5 * POLL_S)  # deliberate: five more polls, each retrying it
    logs = gw.logs()
    assert logs.count("config reload refused") == 1, logs  # once, not once per poll
    assert "not valid YAML at line" in logs
    assert INLINE_SECRET not in logs and INLINE_SECRET[7:20] not in logs
    assert status(gw, SEARCH_KEY) == 200  # the running config stays in force

    # Fixed, with the very mtime of the broken version: picked up all the same.
    assert status(gw, FIXED_KEY) == 401
    inline = {"keys": [hash_key(FIXED_KEY)], "account": "main", "project": "acme/fixed"}
    write_keeping_mtime(path, yaml.safe_dump(config(fake, fixed=inline)), stamp)
    within(10 * POLL_S, lambda: status(gw, FIXED_KEY) == 200, "the fixed config's key accepted")

    # A keys file named before it exists: refused, then taken as soon as it is written, though
    # the config does not change again and no watched file does.
    late = {"keys_file": "late.keys", "account": "main", "project": "acme/late"}
    assert status(gw, LATE_KEY) == 401
    path.write_text(yaml.safe_dump(config(fake, fixed=inline, late=late)))
    until_sync(lambda: gw.logs().count("config reload refused") == 2, what="the second refusal")
    assert "late.keys (No such file or directory)" in gw.logs()
    (folder / "late.keys").write_text(hash_key(LATE_KEY) + "\n")
    within(10 * POLL_S, lambda: status(gw, LATE_KEY) == 200, "the late keys file's key")
    assert gw.logs().count("config reload refused") == 2

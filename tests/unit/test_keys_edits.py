"""`keys new` editing files: never a moment with a file others may read, never an edit lost to
another one running at once."""

from __future__ import annotations

import argparse
import builtins
import io
import os
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.cli import cmd_keys_new
from gateway.config import load_settings
from gateway.config_edit import add_to_config
from gateway.keys import hash_key
from tests.procs import ROOT
from tests.unit.test_keys import CONFIG


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(CONFIG % {"a": hash_key("a"), "a2": hash_key("a2")})
    path.chmod(0o640)  # the operator's choice, kept by every edit
    keys = tmp_path / "none.keys"
    keys.write_text(hash_key("n") + "\n")
    keys.chmod(0o640)
    return path


@pytest.fixture
def created(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, int]]:
    """Every file created under tmp_path, and its mode the moment it was created (with the
    usual umask, 022: a file made with the default mode is world-readable)."""
    modes: dict[str, int] = {}

    def watch(real: Callable[..., Any], fileno: Callable[[Any], int]) -> Callable[..., Any]:
        def opened(file: Any, *args: Any, **kw: Any) -> Any:
            name = os.fspath(file) if isinstance(file, str | os.PathLike) else None
            new = name is not None and name.startswith(str(tmp_path)) and not os.path.exists(name)
            result = real(file, *args, **kw)
            if new:
                modes[os.path.basename(name)] = stat.S_IMODE(os.fstat(fileno(result)).st_mode)
            return result

        return opened

    monkeypatch.setattr(os, "open", watch(os.open, lambda fd: fd))
    for module in (builtins, io):  # pathlib's write_text opens by io.open
        monkeypatch.setattr(module, "open", watch(io.open, lambda f: f.fileno()))
    old_umask = os.umask(0o022)
    try:
        yield modes
    finally:
        os.umask(old_umask)


def test_no_file_is_ever_readable_by_others(
    config: Path, created: dict[str, int], capsys: pytest.CaptureFixture[str]
) -> None:
    add_to_config(config, "block", hash_key("inline"))  # the config itself is rewritten
    add_to_config(config, "none", hash_key("listed"))  # the tenant's keys_file is
    saved = config.parent / "new" / "team.keys"
    cmd_keys_new(argparse.Namespace(tenant=None, save=str(saved), config=None))
    capsys.readouterr()
    assert {name: oct(mode) for name, mode in created.items() if mode & 0o077} == {}
    temps = [name for name in created if name.endswith(".tmp")]
    assert len(temps) == 3, created  # one per edit: each wrote a new file and renamed it
    assert stat.S_IMODE(config.stat().st_mode) == 0o640  # the edited files keep their modes
    assert stat.S_IMODE((config.parent / "none.keys").stat().st_mode) == 0o640
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    settings = load_settings(config)
    assert settings.tenant_by_key_hash[hash_key("inline")].name == "block"
    assert settings.tenant_by_key_hash[hash_key("listed")].name == "none"
    assert sorted(p.name for p in config.parent.iterdir()) == ["gateway.yaml", "new", "none.keys"]


def test_a_keys_file_without_a_last_newline_gets_a_line_of_its_own(config: Path) -> None:
    keys = config.parent / "none.keys"
    keys.write_text(hash_key("n"))  # no newline at the end
    add_to_config(config, "none", hash_key("more"))
    assert keys.read_text() == f"{hash_key('n')}\n{hash_key('more')}\n"


def test_concurrent_keys_new_all_land(config: Path) -> None:
    """Eight `keys new --tenant` at once, on the config itself and on a keys file."""
    tenants = ["block", "flow", "empty", "none"] * 2
    command = [sys.executable, "-m", "gateway", "keys", "new", "--config", str(config)]
    procs = [
        subprocess.Popen(
            [*command, "--tenant", t],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        for t in tenants
    ]
    keys = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        keys.append(out.split("key:")[1].split()[0])
    owners = load_settings(config).tenant_by_key_hash
    lost = [t for k, t in zip(keys, tenants, strict=True) if hash_key(k) not in owners]
    assert lost == [], "keys lost to concurrent edits"
    assert [owners[hash_key(k)].name for k in keys] == tenants
    assert owners[hash_key("a")].name == "flow"  # and the keys that were there stay
    assert sorted(p.name for p in config.parent.iterdir()) == ["gateway.yaml", "none.keys"]

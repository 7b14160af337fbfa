"""Gateway keys, and adding one to a tenant without disturbing the config file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config import load_settings
from gateway.config_edit import KeyEditError, add_to_config
from gateway.keys import hash_key, new_key
from tests.procs import ROOT

CONFIG = """\
# Our gateway. Comments must survive.
upstream:
  base_url: http://127.0.0.1:1/v1
accounts:
  main: {api_key: wk, max_concurrency: 4}
tenants:
  flow:   # flow-style list
    keys: ["%(a)s"]  # trailing comment
    account: main
    project: acme/flow
  block:
    account: main
    keys:
      # the first key
      - "%(a2)s"
    project: acme/block
  "none":
    keys_file: none.keys
    account: main
    project: acme/none
  empty:
    account: main
    keys: []
    project: acme/empty
models: {}
"""


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(CONFIG % {"a": hash_key("a"), "a2": hash_key("a2")})
    (tmp_path / "none.keys").write_text("")
    return path


def test_new_keys_are_unique_and_long() -> None:
    keys = {new_key() for _ in range(100)}
    assert len(keys) == 100
    assert all(k.startswith("sk-gw-") and len(k) >= 49 for k in keys)


@pytest.mark.parametrize("tenant", ["flow", "block", "empty"])
def test_adds_to_config_keeping_comments(config: Path, tenant: str) -> None:
    before = config.read_text()
    digest = hash_key("fresh")
    assert add_to_config(config, tenant, digest) == config
    after = config.read_text()
    assert load_settings(config).tenant_by_key_hash[digest].name == tenant
    assert "# Our gateway. Comments must survive." in after
    assert "# trailing comment" in after and "# the first key" in after
    assert len(after.splitlines()) - len(before.splitlines()) in (0, 1)
    # nobody lost a key
    assert load_settings(config).tenant_by_key_hash[hash_key("a")].name == "flow"
    assert load_settings(config).tenant_by_key_hash[hash_key("a2")].name == "block"


def test_tenant_with_keys_file_gets_it_appended(config: Path) -> None:
    digest = hash_key("fresh")
    changed = add_to_config(config, "none", digest)
    assert changed == config.parent / "none.keys"
    assert load_settings(config).tenant_by_key_hash[digest].name == "none"


def test_unknown_tenant_is_refused(config: Path) -> None:
    before = config.read_text()
    with pytest.raises(KeyEditError, match="no tenant 'ghost'"):
        add_to_config(config, "ghost", hash_key("x"))
    assert config.read_text() == before


def test_cli_keys_new_for_a_tenant(config: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway",
            "keys",
            "new",
            "--tenant",
            "block",
            "--config",
            str(config),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    key = done.stdout.split("key:")[1].split()[0]
    assert load_settings(config).tenant_by_key_hash[hash_key(key)].name == "block"

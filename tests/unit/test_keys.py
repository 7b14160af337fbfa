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


def test_new_key_goes_after_the_last_item_not_after_its_comments(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(
        "upstream: {base_url: 'http://127.0.0.1:1/v1'}\n"
        "accounts: {main: {api_key: wk, max_concurrency: 4}}\n"
        "tenants:\n"
        "  t:\n"
        "    keys:\n"
        f'    - "{hash_key("a")}"   # the first\n'
        "    # about the project\n"
        "\n"
        "    project: acme/t\n"
        "    account: main\n"
    )
    before = path.read_text().splitlines()
    add_to_config(path, "t", hash_key("fresh"))
    after = path.read_text().splitlines()
    assert after == [*before[:6], f'    - "{hash_key("fresh")}"', *before[6:]]


def test_empty_or_null_keys_become_a_flow_list(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    text = (
        "upstream: {base_url: 'http://127.0.0.1:1/v1'}\n"
        "accounts: {main: {api_key: wk, max_concurrency: 4}}\n"
        "tenants:\n"
        "  a: {keys: [], account: main, project: acme/a}\n"
        "  b:\n"
        "    keys:\n"
        "    account: main\n"
        "    project: acme/b\n"
    )
    path.write_text(text)
    add_to_config(path, "a", hash_key("x"))
    add_to_config(path, "b", hash_key("y"))
    assert path.read_text() == text.replace("keys: []", f'keys: ["{hash_key("x")}"]').replace(
        "    keys:\n", f'    keys: ["{hash_key("y")}"]\n'
    )


def test_an_edit_that_would_reformat_other_lines_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(  # two block lists indented differently: ruamel writes both alike
        "upstream: {base_url: 'http://127.0.0.1:1/v1'}\n"
        "accounts: {main: {api_key: wk, max_concurrency: 4}}\n"
        "models:\n"
        "  m:\n"
        "    aliases:\n"
        "    - gpt\n"
        "tenants:\n"
        "  t:\n"
        "    account: main\n"
        "    project: acme/t\n"
        "    keys:\n"
        f"      - '{hash_key('a')}'\n"
    )
    before = path.read_text()
    with pytest.raises(KeyEditError, match="would rewrite other lines"):
        add_to_config(path, "t", hash_key("x"))
    assert path.read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gateway.yaml"]  # no temp left

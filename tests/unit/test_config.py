"""Loading and validating the YAML configuration."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gateway.config import ConfigError, load_settings, parse_settings
from gateway.keys import KEY_HASH_RE, hash_key
from tests.procs import ROOT

# The example from the foundation issue, which must be accepted exactly as written.
ISSUE_EXAMPLE = """
upstream:
  base_url: ${WANDB_BASE_URL:-https://api.inference.wandb.ai/v1}
limiter:
  backend: memory          # memory (one process) | redis (issue: concurrency across replicas)
  queue_timeout_s: 60      # how long a request may wait for a slot before a 429
accounts:                  # the W&B API keys the gateway holds; W&B limits concurrency per key
  main:
    api_key: ${WANDB_API_KEY}
    max_concurrency: 4
tenants:                   # who may call the gateway
  search:
    keys: ["sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"]
    account: main
    project: acme/search   # sent upstream as OpenAI-Project
    max_concurrency: 2     # this tenant's share of the account
models:                    # prices per million tokens, and names existing apps already use
  meta-llama/Llama-3.1-8B-Instruct:
    input_usd_per_mtok: 0.22
    output_usd_per_mtok: 0.22
    aliases: [gpt-4o-mini]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    return path


def test_issue_example_is_accepted(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, ISSUE_EXAMPLE), env={"WANDB_API_KEY": "wk"})
    assert s.upstream.base_url == "https://api.inference.wandb.ai/v1"
    assert s.accounts["main"].api_key == "wk"
    tenant = s.tenants["search"]
    assert (tenant.account, tenant.project, tenant.max_concurrency) == ("main", "acme/search", 2)
    assert s.tenant_by_key_hash[hash_key("test")] is tenant  # sha256("test"), as in the issue
    assert s.resolve_model("gpt-4o-mini") == "meta-llama/Llama-3.1-8B-Instruct"
    assert s.limiter.queue_timeout_s == 60
    assert "wk" not in repr(s)


def test_environment_defaults_and_overrides(tmp_path: Path) -> None:
    env = {"WANDB_API_KEY": "wk", "WANDB_BASE_URL": "http://127.0.0.1:1/v1"}
    s = load_settings(write(tmp_path, ISSUE_EXAMPLE), env=env)
    assert s.upstream.base_url == "http://127.0.0.1:1/v1"
    # as in the shell, a set but empty variable takes the default
    s = load_settings(write(tmp_path, ISSUE_EXAMPLE), env={**env, "WANDB_BASE_URL": ""})
    assert s.upstream.base_url == "https://api.inference.wandb.ai/v1"


def test_missing_variable_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(write(tmp_path, ISSUE_EXAMPLE), env={})
    assert err.value.problems == [
        "accounts.main.api_key: environment variable WANDB_API_KEY is not set (and has no default)"
    ]
    assert str(tmp_path / "gateway.yaml") in str(err.value)


def test_every_problem_is_reported_with_its_path(tmp_path: Path) -> None:
    raw = yaml.safe_load(ISSUE_EXAMPLE)
    raw["limiter"]["backend"] = "etcd"
    raw["limiter"]["queue_timout_s"] = 5  # typo
    raw["accounts"]["main"]["max_concurrency"] = 0
    raw["tenants"]["search"]["account"] = "mian"
    raw["tenants"]["search"]["project"] = "no-entity"
    raw["tenants"]["search"]["keys"] = ["plaintext-key"]
    raw["models"]["meta-llama/Llama-3.1-8B-Instruct"]["input_usd_per_mtok"] = -1
    with pytest.raises(ConfigError) as err:
        parse_settings(raw, source="x.yaml", env={"WANDB_API_KEY": "wk"})
    paths = sorted(p.split(":")[0] for p in err.value.problems)
    assert paths == [
        "accounts.main.max_concurrency",
        "limiter.backend",
        "limiter.queue_timout_s",
        "models.meta-llama/Llama-3.1-8B-Instruct.input_usd_per_mtok",
        "tenants.search.account",
        "tenants.search.keys[0]",
        "tenants.search.project",
    ]
    assert any("unknown account 'mian' (known: main)" in p for p in err.value.problems)


def test_tenant_share_cannot_exceed_account(tmp_path: Path) -> None:
    raw = yaml.safe_load(ISSUE_EXAMPLE)
    raw["tenants"]["search"]["max_concurrency"] = 9
    with pytest.raises(ConfigError, match=r"tenants.search.max_concurrency: 9 exceeds"):
        parse_settings(raw, env={"WANDB_API_KEY": "wk"})


def test_keys_file_relative_to_config(tmp_path: Path) -> None:
    (tmp_path / "search.keys").write_text(f"# comment\n{hash_key('a')}\n\n{hash_key('b')}\n")
    text = ISSUE_EXAMPLE.replace(
        '    keys: ["sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"]',
        "    keys_file: search.keys",
    )
    s = load_settings(write(tmp_path, text), env={"WANDB_API_KEY": "wk"})
    assert s.tenants["search"].key_hashes == {hash_key("a"), hash_key("b")}
    (tmp_path / "search.keys").unlink()
    with pytest.raises(ConfigError, match="keys new --save"):
        load_settings(write(tmp_path, text), env={"WANDB_API_KEY": "wk"})


def test_allow_list_resolves_aliases_and_projects() -> None:
    raw = yaml.safe_load(ISSUE_EXAMPLE)
    raw["tenants"]["search"]["models"] = ["gpt-4o-mini"]
    raw["tenants"]["search"]["projects"] = ["acme/eval"]
    s = parse_settings(raw, env={"WANDB_API_KEY": "wk"})
    assert s.tenants["search"].models == frozenset({"meta-llama/Llama-3.1-8B-Instruct"})
    assert s.tenants["search"].projects == {"acme/eval"}


def test_shipped_configs_are_valid_and_hold_no_known_key(tmp_path: Path) -> None:
    for name, keys in (("gateway.yaml", "default.keys"), ("demo.yaml", "demo.keys")):
        text = (ROOT / "config" / name).read_text()
        assert not KEY_HASH_RE.search(text), f"{name} holds a key hash"
        (tmp_path / keys).write_text(hash_key("k") + "\n")
        (tmp_path / name).write_text(text)
        s = load_settings(tmp_path / name, env={"WANDB_API_KEY": "wk"})
        prices = {m: (p.input_usd_per_mtok, p.output_usd_per_mtok) for m, p in s.models.items()}
        assert prices == {
            "meta-llama/Llama-3.1-8B-Instruct": (0.22, 0.22),
            "meta-llama/Llama-3.3-70B-Instruct": (0.71, 0.71),
            "microsoft/Phi-4-mini-instruct": (0.08, 0.35),
            "meta-llama/Llama-4-Scout-17B-16E-Instruct": (0.17, 0.66),
            "deepseek-ai/DeepSeek-V3-0324": (1.14, 2.75),
            "deepseek-ai/DeepSeek-R1-0528": (1.35, 5.40),
        }


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=60,
    )


def test_check_config_summary_redacts_keys(tmp_path: Path) -> None:
    path = write(tmp_path, ISSUE_EXAMPLE)
    done = cli("check-config", "--config", str(path), env={"WANDB_API_KEY": "secret-wandb-key"})
    assert done.returncode == 0, done.stderr
    assert "search: 1 key(s), account main, project acme/search, max_concurrency 2" in done.stdout
    assert "secret-wandb-key" not in done.stdout + done.stderr
    assert "9f86d08" not in done.stdout


def test_check_config_errors_exit_2(tmp_path: Path) -> None:
    path = write(tmp_path, ISSUE_EXAMPLE.replace("account: main", "account: nope"))
    done = cli("check-config", "--config", str(path), env={})
    assert done.returncode == 2
    assert f"{path}: tenants.search.account: unknown account 'nope'" in done.stderr
    assert f"{path}: accounts.main.api_key: environment variable WANDB_API_KEY" in done.stderr
    assert "make demo" in done.stderr


def test_keys_new(tmp_path: Path) -> None:
    keys = tmp_path / "t.keys"
    done = cli("keys", "new", "--save", str(keys))
    assert done.returncode == 0
    key = done.stdout.split("key:")[1].split()[0]
    digest = done.stdout.split("hash:")[1].split()[0]
    assert key.startswith("sk-gw-") and len(key) >= 6 + 43  # 32 bytes, base64url
    assert digest == hash_key(key)
    assert keys.read_text() == digest + "\n"
    assert keys.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize(
    "raw",
    [
        {"accounts": 5, "tenants": [{"name": "x"}]},
        [1, 2],
        "just a string",
        {"tenants": {"t": "not a mapping"}, "accounts": {"a": [1]}},
    ],
)
def test_malformed_documents_are_problems_not_crashes(raw: object) -> None:
    with pytest.raises(ConfigError) as err:
        parse_settings(raw, env={})
    assert err.value.problems


def test_non_utf8_files_are_problems(tmp_path: Path) -> None:
    (tmp_path / "gateway.yaml").write_bytes(b"upstream: \xff\xfe")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_settings(tmp_path / "gateway.yaml")

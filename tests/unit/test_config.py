"""Loading and validating the YAML configuration."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from gateway.config import (
    Account,
    ConfigError,
    LimiterSettings,
    SentinelSettings,
    Tenant,
    load_settings,
    parse_settings,
)
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
    tables = []
    for name, keys in (("gateway.yaml", "default.keys"), ("demo.yaml", "demo.keys")):
        text = (ROOT / "config" / name).read_text()
        assert not KEY_HASH_RE.search(text), f"{name} holds a key hash"
        (tmp_path / keys).write_text(hash_key("k") + "\n")
        (tmp_path / name).write_text(text)
        s = load_settings(tmp_path / name, env={"WANDB_API_KEY": "wk"})
        prices = {m: (p.input_usd_per_mtok, p.output_usd_per_mtok) for m, p in s.models.items()}
        assert None not in {price for pair in prices.values() for price in pair}, name
        assert prices["meta-llama/Llama-3.1-8B-Instruct"] == (0.22, 0.22)
        assert s.resolve_model("gpt-4o-mini") == "meta-llama/Llama-3.1-8B-Instruct"
        tables.append(s.models)
    assert tables[0] == tables[1], "demo.yaml has the price table of gateway.yaml"


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


def problems_with(section: str, key: str, value: object, **env: str) -> list[str]:
    """The problems of the issue example with one value replaced (${VARs} from `env`)."""
    raw = yaml.safe_load(ISSUE_EXAMPLE)
    node = raw
    for part in section.split("."):
        node = node.setdefault(part, {})
    node[key] = value
    try:
        parse_settings(raw, env={"WANDB_API_KEY": "wk", **env})
    except ConfigError as exc:
        return exc.problems
    return []


@pytest.mark.parametrize(
    ("section", "key", "value", "expected"),
    [
        # ${VAR}s give strings: counts, numbers and flags take their string forms
        ("server", "port", "8080", 8080),
        ("server", "port", " 9090 ", 9090),
        ("upstream", "retries", "0", 0),
        ("limiter", "queue_timeout_s", "0.5", 0.5),
        ("limiter", "queue_timeout_s", "1e3", 1000.0),
        ("limiter", "keep_slots_s", "0", 0.0),
        ("server", "access_log", "yes", True),
        ("server", "access_log", "No", False),
        ("server", "access_log", "1", True),
        ("server", "access_log", "FALSE", False),
        ("server", "access_log", False, False),
        # a number where a name goes is that name
        ("limiter", "key_prefix", 2024, "2024"),
        ("limiter", "redis_url", 1.5, "1.5"),
    ],
)
def test_values_as_yaml_and_the_environment_give_them(
    section: str, key: str, value: object, expected: object
) -> None:
    raw = yaml.safe_load(ISSUE_EXAMPLE)
    raw.setdefault(section, {})[key] = value
    s = parse_settings(raw, env={"WANDB_API_KEY": "wk"})
    got = getattr(getattr(s, section), key)
    assert got == expected and type(got) is type(expected)


@pytest.mark.parametrize(
    ("section", "key", "value", "message"),
    [
        ("server", "port", True, "must be a positive integer, got True"),
        ("server", "port", 8080.0, "must be a positive integer, got 8080.0"),
        ("server", "port", "80.5", "must be a positive integer, got '80.5'"),
        ("server", "port", "+80", "must be a positive integer, got '+80'"),
        ("server", "port", 0, "must be a positive integer, got 0"),
        ("upstream", "retries", -1, "must be a non-negative integer, got -1"),
        ("limiter", "queue_timeout_s", False, "must be a positive number, got False"),
        ("limiter", "queue_timeout_s", "soon", "must be a positive number, got 'soon'"),
        ("limiter", "queue_timeout_s", "nan", "must be a positive number, got 'nan'"),
        ("limiter", "keep_slots_s", -0.5, "must be a number >= 0, got -0.5"),
        ("server", "access_log", 1, "must be true or false, got 1"),
        ("server", "access_log", "on", "must be true or false, got 'on'"),
        ("limiter", "key_prefix", True, "must be a non-empty string, got True"),
        ("limiter", "key_prefix", "  ", "must be a non-empty string, got '  '"),
        ("limiter", "backend", "etcd", "must be one of memory, redis, got 'etcd'"),
        ("upstream", "base_url", "ftp://x", "must be an http(s) URL, got 'ftp://x'"),
        ("server", "admin_keys", "sha256:x", "must be a list of strings, got str"),
        ("limiter", "sentinel", [], "must be a mapping, got list"),
        ("limiter", "sentinel", {"master": "m", "nodes": []}, "at least one sentinel"),
    ],
)
def test_wrong_values_say_what_is_expected(
    section: str, key: str, value: object, message: str
) -> None:
    problems = problems_with(section, key, value)
    assert len(problems) == 1 and message in problems[0], problems
    assert problems[0].startswith(f"{section}.{key}")


def test_pydantic_wording_does_not_leak_out() -> None:
    bad: list[object] = [None, True, -3, 0.5, "x", "", [], ["a"], [{}], {}, {"a": 1}, [[1]]]
    paths = (
        [("upstream", k) for k in ("base_url", "retries", "read_timeout_s", "max_connections")]
        + [("limiter", k) for k in ("backend", "redis_url", "on_redis_error", "keep_slots_s")]
        + [("server", k) for k in ("port", "admin_keys", "access_log", "reload_poll_s")]
        + [("tenants.search", k) for k in ("keys", "keys_file", "models", "projects", "weight")]
        + [("models.meta-llama/Llama-3.1-8B-Instruct", "aliases"), ("accounts.main", "api_key")]
        + [("tracing", k) for k in ("endpoint", "headers", "weave", "sample_ratio", "max_queue")]
        + [("tenants.search", "capture_content")]
    )
    for section, key in paths:
        for value in bad:
            for problem in problems_with(section, key, value):
                assert "Input should" not in problem and "Value error" not in problem, problem


def test_unknown_keys_list_what_is_allowed() -> None:
    raw = yaml.safe_load(ISSUE_EXAMPLE)
    raw["limitr"] = {}
    raw["limiter"]["sentinel"] = {"master": "m", "nodes": ["h:1"], "pasword": "x"}
    raw["accounts"]["main"]["name"] = "main"
    raw["tenants"]["search"]["key"] = None  # unknown even when empty
    with pytest.raises(ConfigError) as err:
        parse_settings(raw, env={"WANDB_API_KEY": "wk"})
    assert sorted(err.value.problems) == [
        "accounts.main.name: unknown key (allowed: api_key, max_concurrency)",
        "limiter.sentinel.pasword: unknown key (allowed: master, nodes, password)",
        "limitr: unknown key (allowed: accounts, limiter, models, server, tenants, tracing, "
        "upstream)",
        "tenants.search.key: unknown key (allowed: account, cache_salt, capture_content, "
        "forward_headers, keys, "
        "keys_file, max_concurrency, max_queue, models, monthly_budget_usd, project, projects, "
        "weight)",
    ]


def test_an_empty_value_is_the_key_left_out() -> None:
    raw = yaml.safe_load(ISSUE_EXAMPLE)
    raw["limiter"] = None
    raw["server"] = {"port": None}
    raw["tenants"]["search"]["max_concurrency"] = None
    s = parse_settings(raw, env={"WANDB_API_KEY": "wk"})
    assert (s.limiter.backend, s.server.port, s.tenants["search"].max_concurrency) == (
        "memory",
        8080,
        4,  # the whole account
    )
    raw["tenants"]["search"]["project"] = None
    with pytest.raises(ConfigError, match=r"tenants\.search\.project: is required"):
        parse_settings(raw, env={"WANDB_API_KEY": "wk"})


def test_an_empty_keys_list_still_counts_as_keys() -> None:
    raw = yaml.safe_load(ISSUE_EXAMPLE)
    raw["tenants"]["search"]["keys"] = None  # as valid as before: a tenant without keys yet
    assert parse_settings(raw, env={"WANDB_API_KEY": "wk"}).tenants["search"].key_hashes == set()
    del raw["tenants"]["search"]["keys"]
    with pytest.raises(ConfigError, match=r"tenants\.search: needs `keys`"):
        parse_settings(raw, env={"WANDB_API_KEY": "wk"})


def test_a_missing_variable_is_its_path_s_only_problem() -> None:
    problems = problems_with("server", "port", "${PORT}")
    assert problems == ["server.port: environment variable PORT is not set (and has no default)"]
    problems = problems_with("server", "host", "${A}:${B}")  # one report for the path
    assert problems == ["server.host: environment variable A is not set (and has no default)"]
    assert problems_with("server", "port", "${PORT:-8081}") == []
    problems = problems_with("server", "admin_keys", ["${ADMIN}", "plain"])
    assert [p.split(":")[0] for p in problems] == ["server.admin_keys[0]", "server.admin_keys[1]"]
    assert "plain" not in problems[1]  # what was meant as a key is never echoed


def test_keys_file_lines_that_are_not_hashes_are_named(tmp_path: Path) -> None:
    (tmp_path / "search.keys").write_text(f"# ours\n{hash_key('a')}\nsk-gw-oops\n\nnope\n")
    text = ISSUE_EXAMPLE.replace(
        '    keys: ["sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"]',
        "    keys_file: search.keys",
    )
    with pytest.raises(ConfigError) as err:
        load_settings(write(tmp_path, text), env={"WANDB_API_KEY": "wk"})
    [problem] = err.value.problems
    assert problem.startswith(f"tenants.search.keys_file: {tmp_path / 'search.keys'} line 3, 5:")
    assert "sk-gw-oops" not in problem


def test_settings_are_frozen() -> None:
    s = parse_settings(yaml.safe_load(ISSUE_EXAMPLE), env={"WANDB_API_KEY": "wk"})
    tenant = s.tenants["search"]
    with pytest.raises(ValidationError):
        tenant.weight = 2  # type: ignore[misc]
    assert {tenant: 1}[tenant.model_copy()] == 1  # hashable, and equal by value


def test_types_are_built_in_code_with_keywords() -> None:
    account = Account(name="a", api_key="k", max_concurrency=2)
    tenant = Tenant(name="t", key_hashes=frozenset(), account="a", project="x/y", max_concurrency=1)
    limiter = LimiterSettings(
        backend="redis",
        key_prefix="p",
        lease_ttl_s=2,
        keep_slots_s=0,
        sentinel=SentinelSettings(master="m", nodes=(("127.0.0.1", 26379),)),
    )
    assert (account.max_concurrency, tenant.weight, tenant.models) == (2, 1, None)
    assert limiter.lease_ttl_s == 2.0 and limiter.sentinel is not None
    assert limiter.sentinel.nodes == (("127.0.0.1", 26379),)
    with pytest.raises(ValidationError):
        Tenant(name="t", key_hashes=frozenset(), account="a", project="x/y")  # type: ignore[call-arg]

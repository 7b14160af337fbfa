"""Settings: the YAML file, loaded, substituted and validated in one place, failing fast.

`load_settings(path)` returns a frozen `Settings` or raises `ConfigError` carrying *every*
problem found, each naming the file, the key path (`tenants.search.account`) and what is wrong.

Strings may use `${VAR}` and `${VAR:-default}`; substitution happens after YAML parsing, on
scalar strings only, so an environment value can never inject YAML structure. Unknown keys are
errors: in a config file they are almost always typos.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from gateway.keys import KEY_HASH_RE
from gateway.validation import (
    Checker,
    boolean,
    choice,
    host_ports,
    http_url,
    non_negative,
    non_negative_int,
    positive_int,
    positive_number,
    price,
    project,
    project_list,
    text,
    text_list,
)

DEFAULT_CONFIG_PATH = Path("config/gateway.yaml")


@dataclass(frozen=True)
class UpstreamSettings:
    base_url: str
    retries: int = 3
    connect_timeout_s: float = 10.0
    # Reasoning models can think for minutes before the first byte: long by default.
    read_timeout_s: float = 600.0
    backoff_base_s: float = 0.25
    backoff_max_s: float = 4.0
    models_cache_ttl_s: float = 60.0
    max_connections: int = 1000


@dataclass(frozen=True)
class SentinelSettings:
    """Redis Sentinel: the limiter asks these sentinels where the current master is."""

    master: str
    nodes: tuple[tuple[str, int], ...]
    password: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class LimiterSettings:
    backend: Literal["memory", "redis"] = "memory"
    queue_timeout_s: float = 60.0
    redis_url: str = "redis://127.0.0.1:6379/0"
    lease_ttl_s: float = 30.0
    key_prefix: str = "igw"
    on_redis_error: Literal["local", "reject"] = "local"
    sentinel: SentinelSettings | None = None
    # Redis backend: a released slot stays with its replica this long for the tenant's next
    # request (no round trip), unless someone in the account waits; 0 gives it back at once.
    keep_slots_s: float = 1.0


@dataclass(frozen=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    max_body_bytes: int = 32 * 1024 * 1024
    admin_keys: frozenset[str] = frozenset()
    access_log: bool = True
    # On SIGTERM: how long in-flight requests and streams may take to finish before exit.
    shutdown_grace_s: float = 30.0
    # How often the config file (and keys files) are checked for changes; 0 turns it off.
    reload_poll_s: float = 1.0


@dataclass(frozen=True)
class Account:
    name: str
    api_key: str = field(repr=False)
    max_concurrency: int


@dataclass(frozen=True)
class Tenant:
    name: str
    key_hashes: frozenset[str] = field(repr=False)
    account: str
    project: str
    max_concurrency: int
    models: frozenset[str] | None = None  # resolved upstream ids; None = every model
    projects: frozenset[str] = frozenset()  # other projects it may select via OpenAI-Project
    weight: int = 1
    monthly_budget_usd: float | None = None


@dataclass(frozen=True)
class Model:
    id: str
    input_usd_per_mtok: float | None = None
    output_usd_per_mtok: float | None = None
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class Settings:
    upstream: UpstreamSettings
    limiter: LimiterSettings
    server: ServerSettings
    accounts: Mapping[str, Account]
    tenants: Mapping[str, Tenant]
    models: Mapping[str, Model]
    source: str = "<memory>"
    aliases: Mapping[str, str] = field(default_factory=dict)  # alias -> upstream id
    tenant_by_key_hash: Mapping[str, Tenant] = field(default_factory=dict, repr=False)
    files: tuple[str, ...] = ()  # the config file and every keys_file: what a reload watches
    # Keys already checked against `tenant_by_key_hash`: a dict lookup instead of a SHA-256 a
    # request. Only valid keys enter, so it is bounded by the config; a reload starts afresh.
    known_keys: dict[str, Tenant] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def resolve_model(self, name: str) -> str:
        return self.aliases.get(name, name)


class ConfigError(Exception):
    """Every problem found in one configuration, each `file: key.path: what is wrong`."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__("\n".join(f"{source}: {p}" for p in problems))


def _key_hashes(checker: Checker, path: str, values: list[str]) -> set[str]:
    hashes: set[str] = set()
    for i, value in enumerate(values):
        if KEY_HASH_RE.fullmatch(value):
            hashes.add(value.lower())
        else:
            checker.fail(
                f"{path}[{i}]",
                "must be 'sha256:<64 hex digits>' (keys are stored only as hashes; "
                "`inference-gateway keys new` prints one)",
            )
    return hashes


def _names(section: Any) -> set[str]:
    """The entries of a section keyed by name (any name goes; `section()` checks the type)."""
    return set(section) if isinstance(section, dict) else set()


def _read_keys_file(checker: Checker, path: str, file: Path) -> list[str]:
    try:
        content = file.read_text()
    except UnicodeDecodeError:
        checker.fail(path, f"{file} is not UTF-8 text")
        return []
    except OSError as exc:
        checker.fail(
            path,
            f"cannot read {file} ({exc.strerror}); create it with "
            f"`inference-gateway keys new --save {file}`",
        )
        return []
    lines = [line.strip() for line in content.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def parse_settings(
    raw: Any, *, source: str = "<memory>", env: Mapping[str, str] | None = None
) -> Settings:
    """Validate an already-parsed YAML document; raise ConfigError with every problem."""
    c = Checker(os.environ if env is None else env)
    base_dir = Path(source).parent if source != "<memory>" else Path.cwd()
    top = c.section(
        c.substitute(raw, ""),
        "",
        {"upstream", "limiter", "server", "accounts", "tenants", "models"},
    )

    up = c.section(
        top.get("upstream"),
        "upstream",
        {
            "base_url",
            "retries",
            "connect_timeout_s",
            "read_timeout_s",
            "backoff_base_s",
            "backoff_max_s",
            "models_cache_ttl_s",
            "max_connections",
        },
    )
    d_up = UpstreamSettings(base_url="")
    upstream = UpstreamSettings(
        base_url=c.get(up, "upstream", "base_url", http_url, "", required=True) or "",
        retries=c.get(up, "upstream", "retries", non_negative_int, d_up.retries) or 0,
        connect_timeout_s=c.get(up, "upstream", "connect_timeout_s", positive_number)
        or d_up.connect_timeout_s,
        read_timeout_s=c.get(up, "upstream", "read_timeout_s", positive_number)
        or d_up.read_timeout_s,
        backoff_base_s=c.get(up, "upstream", "backoff_base_s", positive_number)
        or d_up.backoff_base_s,
        backoff_max_s=c.get(up, "upstream", "backoff_max_s", positive_number) or d_up.backoff_max_s,
        models_cache_ttl_s=c.get(up, "upstream", "models_cache_ttl_s", positive_number)
        or d_up.models_cache_ttl_s,
        max_connections=c.get(up, "upstream", "max_connections", positive_int)
        or d_up.max_connections,
    )

    lim = c.section(
        top.get("limiter"),
        "limiter",
        {
            "backend",
            "queue_timeout_s",
            "redis_url",
            "lease_ttl_s",
            "key_prefix",
            "on_redis_error",
            "sentinel",
            "keep_slots_s",
        },
    )
    sentinel = None
    if lim.get("sentinel") is not None:
        sen = c.section(lim["sentinel"], "limiter.sentinel", {"master", "nodes", "password"})
        sentinel = SentinelSettings(
            master=c.get(sen, "limiter.sentinel", "master", text, "", required=True) or "",
            nodes=tuple(c.get(sen, "limiter.sentinel", "nodes", host_ports, required=True) or ()),
            password=c.get(sen, "limiter.sentinel", "password", text),
        )
    d_lim = LimiterSettings()
    limiter = LimiterSettings(
        backend=c.get(lim, "limiter", "backend", choice("memory", "redis")) or "memory",  # type: ignore[arg-type]
        queue_timeout_s=c.get(lim, "limiter", "queue_timeout_s", positive_number)
        or d_lim.queue_timeout_s,
        redis_url=c.get(lim, "limiter", "redis_url", text) or d_lim.redis_url,
        lease_ttl_s=c.get(lim, "limiter", "lease_ttl_s", positive_number) or d_lim.lease_ttl_s,
        key_prefix=c.get(lim, "limiter", "key_prefix", text) or d_lim.key_prefix,
        on_redis_error=c.get(lim, "limiter", "on_redis_error", choice("local", "reject"))  # type: ignore[arg-type]
        or d_lim.on_redis_error,
        sentinel=sentinel,
        keep_slots_s=non_negative(c, lim, "limiter", "keep_slots_s", d_lim.keep_slots_s),
    )

    srv = c.section(
        top.get("server"),
        "server",
        {
            "host",
            "port",
            "max_body_bytes",
            "admin_keys",
            "access_log",
            "shutdown_grace_s",
            "reload_poll_s",
        },
    )
    d_srv = ServerSettings()
    server = ServerSettings(
        host=c.get(srv, "server", "host", text) or d_srv.host,
        port=c.get(srv, "server", "port", positive_int) or d_srv.port,
        max_body_bytes=c.get(srv, "server", "max_body_bytes", positive_int) or d_srv.max_body_bytes,
        admin_keys=frozenset(
            _key_hashes(c, "server.admin_keys", c.get(srv, "server", "admin_keys", text_list) or [])
        ),
        access_log=bool(c.get(srv, "server", "access_log", boolean, True)),
        shutdown_grace_s=c.get(srv, "server", "shutdown_grace_s", positive_number)
        or d_srv.shutdown_grace_s,
        reload_poll_s=non_negative(c, srv, "server", "reload_poll_s", d_srv.reload_poll_s),
    )

    accounts: dict[str, Account] = {}
    acc_raw = c.section(top.get("accounts"), "accounts", _names(top.get("accounts")))
    if not acc_raw:
        c.fail("accounts", "at least one account (a W&B API key) is required")
    for name, body in acc_raw.items():
        p = f"accounts.{name}"
        a = c.section(body, p, {"api_key", "max_concurrency"})
        accounts[str(name)] = Account(
            name=str(name),
            api_key=c.get(a, p, "api_key", text, "", required=True) or "",
            max_concurrency=c.get(a, p, "max_concurrency", positive_int, 1, required=True) or 1,
        )

    models: dict[str, Model] = {}
    aliases: dict[str, str] = {}
    mod_raw = c.section(top.get("models"), "models", _names(top.get("models")))
    for model_id, body in mod_raw.items():
        p = f"models.{model_id}"
        m = c.section(body, p, {"input_usd_per_mtok", "output_usd_per_mtok", "aliases"})
        names: list[str] = c.get(m, p, "aliases", text_list) or []
        for alias in names:
            if alias in mod_raw:
                c.fail(f"{p}.aliases", f"alias {alias!r} is also a configured model id")
            elif alias in aliases and aliases[alias] != model_id:
                c.fail(f"{p}.aliases", f"alias {alias!r} already points to {aliases[alias]!r}")
            aliases[alias] = str(model_id)
        models[str(model_id)] = Model(
            id=str(model_id),
            input_usd_per_mtok=c.get(m, p, "input_usd_per_mtok", price),
            output_usd_per_mtok=c.get(m, p, "output_usd_per_mtok", price),
            aliases=tuple(names),
        )

    tenants: dict[str, Tenant] = {}
    by_hash: dict[str, Tenant] = {}
    files = [source] if source != "<memory>" else []
    ten_raw = c.section(top.get("tenants"), "tenants", _names(top.get("tenants")))
    if not ten_raw:
        c.fail("tenants", "at least one tenant (who may call the gateway) is required")
    for name, body in ten_raw.items():
        p = f"tenants.{name}"
        t = c.section(
            body,
            p,
            {
                "keys",
                "keys_file",
                "account",
                "project",
                "max_concurrency",
                "models",
                "projects",
                "weight",
                "monthly_budget_usd",
            },
        )
        key_list: list[str] = c.get(t, p, "keys", text_list) or []
        hashes = _key_hashes(c, f"{p}.keys", key_list)
        keys_file = c.get(t, p, "keys_file", text)
        if keys_file:
            file = Path(keys_file)
            file = file if file.is_absolute() else base_dir / file
            files.append(str(file))
            hashes |= _key_hashes(
                c, f"{p}.keys_file({file})", _read_keys_file(c, f"{p}.keys_file", file)
            )
        if "keys" not in t and not keys_file:
            c.fail(p, "needs `keys` (a list of sha256 hashes) or `keys_file`")
        account_name = c.get(t, p, "account", text, "", required=True) or ""
        account = accounts.get(account_name)
        if account_name and account is None:
            known = ", ".join(sorted(accounts)) or "none"
            c.fail(f"{p}.account", f"unknown account {account_name!r} (known: {known})")
        limit = c.get(t, p, "max_concurrency", positive_int)
        if account and limit and limit > account.max_concurrency:
            c.fail(
                f"{p}.max_concurrency",
                f"{limit} exceeds account {account.name!r}'s max_concurrency "
                f"({account.max_concurrency}); a tenant's share cannot be larger than the account",
            )
        allow = c.get(t, p, "models", text_list)
        tenant = Tenant(
            name=str(name),
            key_hashes=frozenset(hashes),
            account=account_name,
            project=c.get(t, p, "project", project, "", required=True) or "",
            max_concurrency=limit or (account.max_concurrency if account else 1),
            models=None if allow is None else frozenset(aliases.get(m, m) for m in allow),
            projects=frozenset(c.get(t, p, "projects", project_list) or []),
            weight=c.get(t, p, "weight", positive_int, 1) or 1,
            monthly_budget_usd=c.get(t, p, "monthly_budget_usd", positive_number),
        )
        tenants[tenant.name] = tenant
        for h in hashes:
            other = by_hash.get(h)
            if other is not None and other.name != tenant.name:
                c.fail(f"{p}.keys", f"a key is also listed under tenants.{other.name}")
            by_hash[h] = tenant
    for h in server.admin_keys & set(by_hash):
        c.fail("server.admin_keys", f"a key is also a key of tenants.{by_hash[h].name}")

    if c.problems:
        raise ConfigError(source, c.problems)
    return Settings(
        upstream=upstream,
        limiter=limiter,
        server=server,
        accounts=accounts,
        tenants=tenants,
        models=models,
        source=source,
        aliases=aliases,
        tenant_by_key_hash=by_hash,
        files=tuple(files),
    )


def load_settings(path: str | Path, env: Mapping[str, str] | None = None) -> Settings:
    """Read and validate one YAML file."""
    source = str(path)
    try:
        document = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(source, [f"cannot read the file: {exc.strerror}"]) from exc
    except UnicodeDecodeError:
        raise ConfigError(source, ["not UTF-8 text"]) from None
    try:
        raw = yaml.safe_load(document)
    except yaml.YAMLError as exc:
        raise ConfigError(source, [f"not valid YAML: {exc}"]) from exc
    return parse_settings(raw, source=source, env=env)


def config_path(explicit: str | None) -> Path:
    """--config, then $GATEWAY_CONFIG, then config/gateway.yaml."""
    return Path(explicit or os.environ.get("GATEWAY_CONFIG") or DEFAULT_CONFIG_PATH)

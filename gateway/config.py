"""Settings: the YAML file, loaded, substituted and validated in one place, failing fast.

`load_settings(path)` returns a frozen `Settings` or raises `ConfigError` carrying *every*
problem found, each naming the file, the key path (`tenants.search.account`) and what is wrong.

Strings may use `${VAR}` and `${VAR:-default}`; substitution happens after YAML parsing, on
scalar strings only, so an environment value can never inject YAML structure. Unknown keys are
errors: in a config file they are almost always typos.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from gateway.keys import KEY_HASH_RE

DEFAULT_CONFIG_PATH = Path("config/gateway.yaml")
_VAR_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")

T = TypeVar("T")


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

    def resolve_model(self, name: str) -> str:
        return self.aliases.get(name, name)


class ConfigError(Exception):
    """Every problem found in one configuration, each `file: key.path: what is wrong`."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__("\n".join(f"{source}: {p}" for p in problems))


class _Checker:
    """Walks the parsed YAML, converting values and collecting problems instead of stopping."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env
        self.problems: list[str] = []
        self.unset: set[str] = set()  # paths already reported for a missing variable

    def fail(self, path: str, message: str) -> None:
        if path not in self.unset:
            self.problems.append(f"{path}: {message}")

    def substitute(self, value: Any, path: str) -> Any:
        if isinstance(value, str):

            def repl(m: re.Match[str]) -> str:
                name, default = m.group(1), m.group(2)
                value = self.env.get(name)
                if value or (value is not None and default is None):
                    return value
                if default is not None:  # as in the shell: unset or empty takes the default
                    return default
                self.fail(path, f"environment variable {name} is not set (and has no default)")
                self.unset.add(path)
                return ""

            return _VAR_RE.sub(repl, value)
        if isinstance(value, dict):
            return {
                k: self.substitute(v, f"{path}.{k}" if path else str(k)) for k, v in value.items()
            }
        if isinstance(value, list):
            return [self.substitute(v, f"{path}[{i}]") for i, v in enumerate(value)]
        return value

    def section(self, data: Any, path: str, allowed: set[str]) -> dict[str, Any]:
        if data is None:
            return {}
        if not isinstance(data, dict):
            self.fail(path or "<top>", f"must be a mapping, got {_kind(data)}")
            return {}
        for key in data:
            if key not in allowed:
                hint = ", ".join(sorted(allowed))
                self.fail(f"{path}.{key}" if path else str(key), f"unknown key (allowed: {hint})")
        return data

    def get(
        self,
        data: dict[str, Any],
        path: str,
        key: str,
        conv: Callable[[Any], T],
        default: T | None = None,
        *,
        required: bool = False,
    ) -> T | None:
        where = f"{path}.{key}" if path else key
        if key not in data or data[key] is None:
            if required:
                self.fail(where, "is required")
            return default
        try:
            return conv(data[key])
        except (TypeError, ValueError) as exc:
            self.fail(where, str(exc))
            return default


def _kind(value: Any) -> str:
    return type(value).__name__


def _str(value: Any) -> str:
    if isinstance(value, str) and value.strip():
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    raise ValueError(f"must be a non-empty string, got {value!r}")


def _pos_int(value: Any) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    raise ValueError(f"must be a positive integer, got {value!r}")


def _nonneg_int(value: Any) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise ValueError(f"must be a non-negative integer, got {value!r}")


def _nonneg(c: _Checker, data: dict[str, Any], path: str, key: str, default: float) -> float:
    value = c.get(data, path, key, _price)  # any number >= 0
    return default if value is None else value


def _pos_float(value: Any) -> float:
    try:
        number = float(value) if not isinstance(value, bool) else -1.0
    except (TypeError, ValueError):
        number = -1.0
    if number > 0:
        return number
    raise ValueError(f"must be a positive number, got {value!r}")


def _price(value: Any) -> float:
    try:
        number = float(value) if not isinstance(value, bool) else -1.0
    except (TypeError, ValueError):
        number = -1.0
    if number >= 0:
        return number
    raise ValueError(f"must be a price >= 0 (USD per million tokens), got {value!r}")


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in {"true", "false", "yes", "no", "1", "0"}:
        return value.lower() in {"true", "yes", "1"}
    raise ValueError(f"must be true or false, got {value!r}")


def _choice(*options: str) -> Callable[[Any], str]:
    def conv(value: Any) -> str:
        if value in options:
            return str(value)
        raise ValueError(f"must be one of {', '.join(options)}, got {value!r}")

    return conv


def _str_list(value: Any) -> list[str]:
    if not isinstance(value, list):
        raise ValueError(f"must be a list of strings, got {_kind(value)}")
    return [_str(v) for v in value]


def _url(value: Any) -> str:
    text = _str(value).rstrip("/")
    if not re.match(r"^https?://[^/]+", text):
        raise ValueError(f"must be an http(s) URL, got {value!r}")
    return text


def _project(value: Any) -> str:
    text = _str(value)
    entity, _, project = text.partition("/")
    if not entity or not project or "/" in project:
        raise ValueError(f"must be '<entity>/<project>', got {value!r}")
    return text


def _host_ports(value: Any) -> list[tuple[str, int]]:
    nodes = []
    for item in _str_list(value):
        host, _, port = item.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"each node must be 'host:port', got {item!r}")
        nodes.append((host, int(port)))
    if not nodes:
        raise ValueError("must list at least one sentinel 'host:port'")
    return nodes


def _project_list(value: Any) -> list[str]:
    return [_project(v) for v in _str_list(value)]


def _key_hashes(checker: _Checker, path: str, values: list[str]) -> set[str]:
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


def _read_keys_file(checker: _Checker, path: str, file: Path) -> list[str]:
    try:
        text = file.read_text()
    except OSError as exc:
        checker.fail(
            path,
            f"cannot read {file} ({exc.strerror}); create it with "
            f"`inference-gateway keys new --save {file}`",
        )
        return []
    lines = [line.strip() for line in text.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def parse_settings(
    raw: Any, *, source: str = "<memory>", env: Mapping[str, str] | None = None
) -> Settings:
    """Validate an already-parsed YAML document; raise ConfigError with every problem."""
    c = _Checker(os.environ if env is None else env)
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
        base_url=c.get(up, "upstream", "base_url", _url, "", required=True) or "",
        retries=c.get(up, "upstream", "retries", _nonneg_int, d_up.retries) or 0,
        connect_timeout_s=c.get(up, "upstream", "connect_timeout_s", _pos_float)
        or d_up.connect_timeout_s,
        read_timeout_s=c.get(up, "upstream", "read_timeout_s", _pos_float) or d_up.read_timeout_s,
        backoff_base_s=c.get(up, "upstream", "backoff_base_s", _pos_float) or d_up.backoff_base_s,
        backoff_max_s=c.get(up, "upstream", "backoff_max_s", _pos_float) or d_up.backoff_max_s,
        models_cache_ttl_s=c.get(up, "upstream", "models_cache_ttl_s", _pos_float)
        or d_up.models_cache_ttl_s,
        max_connections=c.get(up, "upstream", "max_connections", _pos_int) or d_up.max_connections,
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
        },
    )
    sentinel = None
    if lim.get("sentinel") is not None:
        sen = c.section(lim["sentinel"], "limiter.sentinel", {"master", "nodes", "password"})
        sentinel = SentinelSettings(
            master=c.get(sen, "limiter.sentinel", "master", _str, "", required=True) or "",
            nodes=tuple(c.get(sen, "limiter.sentinel", "nodes", _host_ports, required=True) or ()),
            password=c.get(sen, "limiter.sentinel", "password", _str),
        )
    d_lim = LimiterSettings()
    limiter = LimiterSettings(
        backend=c.get(lim, "limiter", "backend", _choice("memory", "redis")) or "memory",  # type: ignore[arg-type]
        queue_timeout_s=c.get(lim, "limiter", "queue_timeout_s", _pos_float)
        or d_lim.queue_timeout_s,
        redis_url=c.get(lim, "limiter", "redis_url", _str) or d_lim.redis_url,
        lease_ttl_s=c.get(lim, "limiter", "lease_ttl_s", _pos_float) or d_lim.lease_ttl_s,
        key_prefix=c.get(lim, "limiter", "key_prefix", _str) or d_lim.key_prefix,
        on_redis_error=c.get(lim, "limiter", "on_redis_error", _choice("local", "reject"))  # type: ignore[arg-type]
        or d_lim.on_redis_error,
        sentinel=sentinel,
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
        host=c.get(srv, "server", "host", _str) or d_srv.host,
        port=c.get(srv, "server", "port", _pos_int) or d_srv.port,
        max_body_bytes=c.get(srv, "server", "max_body_bytes", _pos_int) or d_srv.max_body_bytes,
        admin_keys=frozenset(
            _key_hashes(c, "server.admin_keys", c.get(srv, "server", "admin_keys", _str_list) or [])
        ),
        access_log=bool(c.get(srv, "server", "access_log", _bool, True)),
        shutdown_grace_s=c.get(srv, "server", "shutdown_grace_s", _pos_float)
        or d_srv.shutdown_grace_s,
        reload_poll_s=_nonneg(c, srv, "server", "reload_poll_s", d_srv.reload_poll_s),
    )

    accounts: dict[str, Account] = {}
    acc_raw = c.section(top.get("accounts"), "accounts", set(top.get("accounts") or {}))
    if not acc_raw:
        c.fail("accounts", "at least one account (a W&B API key) is required")
    for name, body in acc_raw.items():
        p = f"accounts.{name}"
        a = c.section(body, p, {"api_key", "max_concurrency"})
        accounts[str(name)] = Account(
            name=str(name),
            api_key=c.get(a, p, "api_key", _str, "", required=True) or "",
            max_concurrency=c.get(a, p, "max_concurrency", _pos_int, 1, required=True) or 1,
        )

    models: dict[str, Model] = {}
    aliases: dict[str, str] = {}
    mod_raw = c.section(top.get("models"), "models", set(top.get("models") or {}))
    for model_id, body in mod_raw.items():
        p = f"models.{model_id}"
        m = c.section(body, p, {"input_usd_per_mtok", "output_usd_per_mtok", "aliases"})
        names: list[str] = c.get(m, p, "aliases", _str_list) or []
        for alias in names:
            if alias in mod_raw:
                c.fail(f"{p}.aliases", f"alias {alias!r} is also a configured model id")
            elif alias in aliases and aliases[alias] != model_id:
                c.fail(f"{p}.aliases", f"alias {alias!r} already points to {aliases[alias]!r}")
            aliases[alias] = str(model_id)
        models[str(model_id)] = Model(
            id=str(model_id),
            input_usd_per_mtok=c.get(m, p, "input_usd_per_mtok", _price),
            output_usd_per_mtok=c.get(m, p, "output_usd_per_mtok", _price),
            aliases=tuple(names),
        )

    tenants: dict[str, Tenant] = {}
    by_hash: dict[str, Tenant] = {}
    files = [source] if source != "<memory>" else []
    ten_raw = c.section(top.get("tenants"), "tenants", set(top.get("tenants") or {}))
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
        key_list: list[str] = c.get(t, p, "keys", _str_list) or []
        hashes = _key_hashes(c, f"{p}.keys", key_list)
        keys_file = c.get(t, p, "keys_file", _str)
        if keys_file:
            file = Path(keys_file)
            file = file if file.is_absolute() else base_dir / file
            files.append(str(file))
            hashes |= _key_hashes(
                c, f"{p}.keys_file({file})", _read_keys_file(c, f"{p}.keys_file", file)
            )
        if "keys" not in t and not keys_file:
            c.fail(p, "needs `keys` (a list of sha256 hashes) or `keys_file`")
        account_name = c.get(t, p, "account", _str, "", required=True) or ""
        account = accounts.get(account_name)
        if account_name and account is None:
            known = ", ".join(sorted(accounts)) or "none"
            c.fail(f"{p}.account", f"unknown account {account_name!r} (known: {known})")
        limit = c.get(t, p, "max_concurrency", _pos_int)
        if account and limit and limit > account.max_concurrency:
            c.fail(
                f"{p}.max_concurrency",
                f"{limit} exceeds account {account.name!r}'s max_concurrency "
                f"({account.max_concurrency}); a tenant's share cannot be larger than the account",
            )
        allow = c.get(t, p, "models", _str_list)
        tenant = Tenant(
            name=str(name),
            key_hashes=frozenset(hashes),
            account=account_name,
            project=c.get(t, p, "project", _project, "", required=True) or "",
            max_concurrency=limit or (account.max_concurrency if account else 1),
            models=None if allow is None else frozenset(aliases.get(m, m) for m in allow),
            projects=frozenset(c.get(t, p, "projects", _project_list) or []),
            weight=c.get(t, p, "weight", _pos_int, 1) or 1,
            monthly_budget_usd=c.get(t, p, "monthly_budget_usd", _pos_float),
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
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(source, [f"cannot read the file: {exc.strerror}"]) from exc
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(source, [f"not valid YAML: {exc}"]) from exc
    return parse_settings(raw, source=source, env=env)


def config_path(explicit: str | None) -> Path:
    """--config, then $GATEWAY_CONFIG, then config/gateway.yaml."""
    return Path(explicit or os.environ.get("GATEWAY_CONFIG") or DEFAULT_CONFIG_PATH)

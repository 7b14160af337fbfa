"""Settings: the YAML file, loaded, substituted and validated in one place, failing fast.

`load_settings(path)` returns a frozen `Settings` or raises `ConfigError` carrying *every*
problem found, each naming the file, the key path (`tenants.search.account`) and what is wrong.

Strings may use `${VAR}` and `${VAR:-default}`; substitution happens after YAML parsing, on
scalar strings only, so an environment value can never inject YAML structure; what each field
then takes is gateway.config_types'. Each section and entry is a pydantic model checked on its
own, so one bad entry hides no other's problems. Unknown keys are errors: in a config file they
are almost always typos.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, cast

import yaml
from pydantic import (
    BaseModel,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from gateway import config_types as ct
from gateway.redact import masked_url, yaml_problem
from gateway.tracing.settings import TracingSettings

DEFAULT_CONFIG_PATH = Path("config/gateway.yaml")
VAR_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
M = TypeVar("M", bound=BaseModel)
QUEUE_BEYOND_LIMIT = 64  # a tenant's default max_queue: its max_concurrency and this many more


class UpstreamSettings(ct.Section):
    base_url: ct.Url
    retries: ct.Count = 3
    connect_timeout_s: ct.PositiveNumber = 10.0
    # Reasoning models can think for minutes before the first byte: long by default.
    read_timeout_s: ct.PositiveNumber = 600.0
    backoff_base_s: ct.PositiveNumber = 0.25
    backoff_max_s: ct.PositiveNumber = 4.0
    models_cache_ttl_s: ct.PositiveNumber = 60.0
    max_connections: ct.PositiveInt = 1000
    # The whole model-list fetch (connect, answer, body): /v1/models never waits longer.
    models_timeout_s: ct.PositiveNumber = 10.0
    # A stream's `: keep-alive` comment after this much silence from W&B, so that idle timeouts
    # on the way (load balancers, proxies) do not cut a reasoning model's long first wait.
    sse_keepalive_s: ct.PositiveNumber = 15.0


class SentinelSettings(ct.Section):
    """Redis Sentinel: the limiter asks these sentinels where the current master is."""

    master: ct.Text
    nodes: ct.Nodes
    password: ct.Secret | None = Field(default=None, repr=False)


class LimiterSettings(ct.Section):
    backend: Annotated[Literal["memory", "redis"], ct.says("one of memory, redis")] = "memory"
    queue_timeout_s: ct.PositiveNumber = 60.0
    redis_url: ct.Secret = "redis://127.0.0.1:6379/0"  # may hold a password: see __repr_args__
    lease_ttl_s: ct.PositiveNumber = 30.0
    key_prefix: ct.Text = "igw"
    on_redis_error: Annotated[Literal["local", "reject"], ct.says("one of local, reject")] = "local"
    sentinel: SentinelSettings | None = None
    # Redis backend: a released slot stays with its replica this long for the tenant's next
    # request (no round trip), unless someone in the account waits; 0 gives it back at once.
    keep_slots_s: ct.Seconds = 1.0

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        """The repr (and so every log line of one) shows redis_url with its password masked."""
        for name, value in super().__repr_args__():
            yield name, masked_url(value) if name == "redis_url" else value


class ServerSettings(ct.Section):
    host: ct.Text = "127.0.0.1"
    port: ct.PositiveInt = 8080
    max_body_bytes: ct.PositiveInt = 32 * 1024 * 1024
    admin_keys: ct.KeyHashes = frozenset()
    keys_store: ct.Text | None = None  # memory limiter: the admin API's keys (default: beside)
    access_log: ct.Flag = True
    # On SIGTERM: how long in-flight requests and streams may take to finish before exit.
    shutdown_grace_s: ct.PositiveNumber = 30.0
    # How often the config file (and keys files) are checked for changes; 0 turns it off.
    reload_poll_s: ct.Seconds = 1.0
    # What one connection may cost before it is authenticated (see README, "Security").
    max_header_bytes: ct.PositiveInt = 16 * 1024  # request line and headers; 431 past it
    max_headers: ct.PositiveInt = 100  # header lines; 431 past it
    header_timeout_s: ct.PositiveNumber = 10.0  # first byte to the end of the headers
    body_timeout_s: ct.PositiveNumber = 30.0  # end of the headers to the end of the body
    keepalive_timeout_s: ct.PositiveNumber = 5.0  # an idle keep-alive connection is closed
    max_connections: ct.PositiveInt = 1000  # open connections per process; past it, refused
    # Request bodies held in memory by the process, all requests together: past it, 503.
    max_buffered_body_bytes: ct.PositiveInt = 128 * 1024 * 1024


class _AccountEntry(ct.Section):  # as written: the name is its key under `accounts`
    api_key: ct.Secret = Field(repr=False)
    max_concurrency: ct.Limit


class Account(_AccountEntry):
    name: str


class _ModelEntry(ct.Section):
    input_usd_per_mtok: ct.Price | None = None
    output_usd_per_mtok: ct.Price | None = None
    cached_input_usd_per_mtok: ct.Price | None = None  # None: the input price
    aliases: ct.Texts = ()


class Model(_ModelEntry):
    id: str


class Tenant(ct.Section):
    name: str
    key_hashes: frozenset[str] = Field(repr=False)
    account: str
    project: str
    max_concurrency: int
    models: frozenset[str] | None = None  # resolved upstream ids; None = every model
    projects: frozenset[str] = frozenset()  # other projects it may select via OpenAI-Project
    weight: int = 1
    monthly_budget_usd: float | None = None
    max_queue: int = QUEUE_BEYOND_LIMIT  # in flight plus waiting, per process; 429 past it
    forward_headers: frozenset[str] = frozenset()  # lower-case names also sent upstream
    cache_salt: bool = True  # a per-tenant cache_salt goes upstream unless the client sent one
    capture_content: bool | None = None  # in trace spans; None: tracing.capture_content


def _context(info: ValidationInfo) -> tuple[Path, Mapping[str, Account | None]]:
    return cast(tuple[Path, Mapping[str, Account | None]], info.context)


class _TenantEntry(ct.Section):
    """A tenant as written; validated with the context (config dir, {account: Account | None})."""

    keys: ct.KeyHashes | None = None
    keys_file: tuple[str, frozenset[str]] | None = None  # (the file, resolved; its hashes)
    account: ct.Text
    project: ct.Project
    max_concurrency: ct.Limit | None = None  # None: the whole account
    models: ct.Texts | None = None  # None: every model
    projects: ct.Projects = frozenset()
    weight: ct.Limit = 1
    monthly_budget_usd: ct.PositiveNumber | None = None
    max_queue: ct.PositiveInt | None = None  # None: max_concurrency + QUEUE_BEYOND_LIMIT
    forward_headers: ct.ForwardHeaders = frozenset()
    cache_salt: ct.Flag = True
    capture_content: ct.Flag | None = None

    @field_validator("keys_file", mode="before")
    @classmethod
    def _read(cls, name: Any, info: ValidationInfo) -> tuple[str, frozenset[str]]:
        if not isinstance(name := ct.coerce(str, name), str) or not name.strip():
            raise ValueError(f"must be a non-empty string, got {name!r}")
        file = _context(info)[0] / name  # an absolute name stays as it is
        return str(file), ct.key_hashes_in(file)

    @field_validator("account")
    @classmethod
    def _known(cls, name: str, info: ValidationInfo) -> str:
        if name not in (accounts := _context(info)[1]):
            known = ", ".join(sorted(accounts)) or "none"
            raise ValueError(f"unknown account {name!r} (known: {known})")
        return name

    @field_validator("max_concurrency")
    @classmethod
    def _share(cls, limit: int | None, info: ValidationInfo) -> int | None:
        account = _context(info)[1].get(info.data.get("account", ""))  # if it is valid
        if account and limit and limit > account.max_concurrency:
            raise ValueError(
                f"{limit} exceeds account {account.name!r}'s max_concurrency "
                f"({account.max_concurrency}); a tenant's share cannot be larger than the account"
            )
        return limit

    @model_validator(mode="after")
    def _has_keys(self) -> _TenantEntry:
        if "keys" not in self.model_fields_set and self.keys_file is None:
            raise ValueError("needs `keys` (a list of sha256 hashes) or `keys_file`")
        return self

    @property
    def hashes(self) -> frozenset[str]:
        return (self.keys or frozenset()) | (self.keys_file[1] if self.keys_file else frozenset())

    def tenant(self, name: str, account: Account, aliases: Mapping[str, str]) -> Tenant:
        limit = account.max_concurrency if self.max_concurrency is None else self.max_concurrency
        models = None if self.models is None else frozenset(aliases.get(m, m) for m in self.models)
        same = {"account", "project", "projects", "weight", "monthly_budget_usd"}
        same |= {"cache_salt", "capture_content"}
        return Tenant(
            name=name,
            key_hashes=self.hashes,
            max_concurrency=limit,
            max_queue=limit + QUEUE_BEYOND_LIMIT if self.max_queue is None else self.max_queue,
            models=models,
            forward_headers=self.forward_headers,
            **self.model_dump(include=same),
        )


class _Document(ct.Section):
    """The top level; the entries of accounts, models and tenants are checked one by one."""

    upstream: Annotated[UpstreamSettings, Field(default_factory=dict, validate_default=True)]
    limiter: LimiterSettings = LimiterSettings()
    server: ServerSettings = ServerSettings()
    tracing: TracingSettings = TracingSettings()
    accounts: ct.Entries = Field(default_factory=dict)
    tenants: ct.Entries = Field(default_factory=dict)
    models: ct.Entries = Field(default_factory=dict)


class Settings(ct.Section):
    upstream: UpstreamSettings
    limiter: LimiterSettings
    server: ServerSettings
    tracing: TracingSettings = TracingSettings()
    accounts: Mapping[str, Account]
    tenants: Mapping[str, Tenant]
    models: Mapping[str, Model]
    source: str = "<memory>"
    aliases: Mapping[str, str] = Field(default_factory=dict)  # alias -> upstream id
    tenant_by_key_hash: Mapping[str, Tenant] = Field(default_factory=dict, repr=False)
    files: tuple[str, ...] = ()  # the config file and every keys_file: what a reload watches

    def resolve_model(self, name: str) -> str:
        return self.aliases.get(name, name)


class ConfigError(Exception):
    """Every ct.problem found in one configuration, each `file: key.path: what is wrong`."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__("\n".join(f"{source}: {p}" for p in problems))


class _Problems(list[str]):
    """Every ct.problem found, `key.path: what is wrong`. A path whose ${VAR} is unset reports only
    that: what else is wrong with its value ("") follows from it."""

    def __init__(self, env: Mapping[str, str]) -> None:
        super().__init__()
        self.env = env
        self.unset: set[str] = set()

    def add(self, path: str, message: str) -> None:
        if path not in self.unset:
            self.append(f"{path}: {message}")

    def substitute(self, value: Any, path: str) -> Any:
        """${VAR}s replaced in every string; keys made strings (`1:` is named "1")."""
        if isinstance(value, str):
            return VAR_RE.sub(lambda m: self._variable(m, path), value)
        if isinstance(value, dict):
            return {
                str(k): self.substitute(v, ct.key_path(path, [str(k)])) for k, v in value.items()
            }
        if isinstance(value, list):
            return [self.substitute(v, f"{path}[{i}]") for i, v in enumerate(value)]
        return value

    def _variable(self, match: re.Match[str], path: str) -> str:
        name, default = match.group(1), match.group(2)
        value = self.env.get(name)
        if value or (value is not None and default is None):
            return value
        if default is not None:  # as in the shell: unset or empty takes the default
            return default
        self.add(path, f"environment variable {name} is not set (and has no default)")
        self.unset.add(path)
        return ""

    def check(self, model: type[M], data: Any, path: str, context: Any = None) -> M | None:
        try:
            return model.model_validate(data, context=context)
        except ValidationError as exc:
            for error in exc.errors():
                self.add(ct.key_path(path, error["loc"]) or "<top>", ct.problem(model, error))
            return None

    def entries(
        self, model: type[M], doc: Any, section: str, context: Any = None
    ) -> dict[str, M | None]:
        """Each entry of a section checked on its own: name -> the entry, None if invalid."""
        found = doc.get(section) if isinstance(doc, dict) else None
        found = found.items() if isinstance(found, dict) else ()
        return {name: self.check(model, body, f"{section}.{name}", context) for name, body in found}


def parse_settings(
    raw: Any, *, source: str = "<memory>", env: Mapping[str, str] | None = None
) -> Settings:
    """Validate an already-parsed YAML document; raise ConfigError with every ct.problem."""
    problems = _Problems(os.environ if env is None else env)
    doc = problems.substitute(raw, "")
    top = problems.check(_Document, doc, "")
    accounts = {
        name: Account(name=name, **dict(entry)) if entry else None
        for name, entry in problems.entries(_AccountEntry, doc, "accounts").items()
    }
    if not accounts:
        problems.add("accounts", "at least one account (a W&B API key) is required")
    models = problems.entries(_ModelEntry, doc, "models")
    aliases = _aliases(problems, models)
    base_dir = Path(source).parent if source != "<memory>" else Path.cwd()
    tenants = problems.entries(_TenantEntry, doc, "tenants", (base_dir, accounts))
    if not tenants:
        problems.add("tenants", "at least one tenant (who may call the gateway) is required")
    owners: dict[str, str] = {}  # key hash -> tenant
    for name, tenant in tenants.items():
        for h in tenant.hashes if tenant else ():
            if owners.setdefault(h, name) != name:
                problems.add(
                    f"tenants.{name}.keys", f"a key is also listed under tenants.{owners[h]}"
                )
    for h in top.server.admin_keys & owners.keys() if top else ():
        problems.add("server.admin_keys", f"a key is also a key of tenants.{owners[h]}")
    if problems or top is None:
        raise ConfigError(source, problems)
    valid = {name: account for name, account in accounts.items() if account}
    built = {n: t.tenant(n, valid[t.account], aliases) for n, t in tenants.items() if t}
    files = [t.keys_file[0] for t in tenants.values() if t and t.keys_file]
    return Settings(
        upstream=top.upstream,
        limiter=top.limiter,
        server=top.server,
        tracing=top.tracing,
        accounts=valid,
        tenants=built,
        models={m: Model(id=m, **dict(entry)) for m, entry in models.items() if entry},
        source=source,
        aliases=aliases,
        tenant_by_key_hash={h: built[name] for h, name in owners.items()},
        files=(source, *files) if source != "<memory>" else tuple(files),
    )


def _aliases(problems: _Problems, models: Mapping[str, _ModelEntry | None]) -> dict[str, str]:
    """alias -> model id; an alias may name one model only, and no model id."""
    aliases: dict[str, str] = {}
    for model_id, model in models.items():
        for alias in model.aliases if model else ():
            if alias in models:
                problems.add(
                    f"models.{model_id}.aliases", f"alias {alias!r} is also a configured model id"
                )
            elif aliases.setdefault(alias, model_id) != model_id:
                problems.add(
                    f"models.{model_id}.aliases",
                    f"alias {alias!r} already points to {aliases[alias]!r}",
                )
    return aliases


def load_settings(path: str | Path, env: Mapping[str, str] | None = None) -> Settings:
    """Read and validate one YAML file."""
    source = str(path)
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(source, [f"cannot read the file: {exc.strerror}"]) from exc
    except UnicodeDecodeError:
        raise ConfigError(source, ["not UTF-8 text"]) from None
    except yaml.YAMLError as exc:
        raise ConfigError(source, [yaml_problem(exc)]) from None
    return parse_settings(raw, source=source, env=env)


def config_path(explicit: str | None) -> Path:
    """--config, then $GATEWAY_CONFIG, then config/gateway.yaml."""
    return Path(explicit or os.environ.get("GATEWAY_CONFIG") or DEFAULT_CONFIG_PATH)

"""The types of config values: what each takes, and what a problem with one says.

After `${VAR}` substitution many values are strings, so a count takes "8080", a number "0.5",
a flag "yes", "no", "1" or "0", and a name a number (`project: 2024` is "2024"); nothing looser:
a bool is not a number, 5.0 is not a count, "on" is not a flag. A refused value reads
`must be <what>, got <value as written>`; pydantic's own wording never reaches the user.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    model_validator,
)

from gateway.headers import NEVER_FORWARDED_WHY, never_forwarded
from gateway.keys import KEY_HASH_RE

HASH = (
    "'sha256:<64 hex digits>' (keys are stored only as hashes; "
    "`inference-gateway keys new` prints one)"
)
_FLAGS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}


def coerce(kind: type, value: Any) -> Any:
    """The forms YAML and ${VAR}s give `kind`: "8080", "0.5", "yes", and 2024 as a name. Anything
    else is left as it is, for the strict type to refuse (a bool is not a number)."""
    if kind is str and isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    if kind is int and isinstance(value, str) and value.strip().isdigit():
        return int(value)
    if kind is bool and isinstance(value, str):
        return _FLAGS.get(value.lower(), value)
    with contextlib.suppress(ValueError):
        return float(value) if kind is float and isinstance(value, str) else value
    return value


def says(what: str, kind: type = str, *, echo: bool = True) -> WrapValidator:
    """A refused value reads `must be <what>, got <value as written>`, whatever refused it;
    without `echo` the value is left out (what was meant as a hash may be a plaintext key)."""

    def check(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        try:
            return handler(coerce(kind, value))
        except (ValidationError, ValueError, TypeError):
            got = f", got {value!r}" if echo else ""
            raise ValueError(f"must be {what}{got}") from None

    return WrapValidator(check)


def as_list(value: Any) -> Any:  # tuples and sets come from code, never from YAML
    if isinstance(value, list | tuple | set | frozenset):
        return value
    raise ValueError(f"must be a list of strings, got {type(value).__name__}")


def host_ports(value: Any) -> Any:  # "host:port" strings in YAML, (host, port) pairs in code
    nodes = []
    for node in as_list(value):
        host, port = node if isinstance(node, tuple) else str(node).rpartition(":")[::2]
        if not host or not str(port).isdigit():
            raise ValueError(f"each node must be 'host:port', got {node!r}")
        nodes.append((host, int(port)))
    if not nodes:
        raise ValueError("must list at least one sentinel 'host:port'")
    return nodes


def as_mapping(data: Any) -> Any:
    if data is None:  # `limiter:` with nothing under it: every default
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"must be a mapping, got {type(data).__name__}")
    return data


Count = Annotated[int, Field(strict=True, ge=0), says("a non-negative integer", int)]
PositiveInt = Annotated[int, Field(strict=True, gt=0), says("a positive integer", int)]
Seconds = Annotated[float, Field(strict=True, ge=0), says("a number >= 0", float)]
PositiveNumber = Annotated[float, Field(strict=True, gt=0), says("a positive number", float)]
Price = Annotated[
    float, Field(strict=True, ge=0), says("a price >= 0 (USD per million tokens)", float)
]
Flag = Annotated[bool, Field(strict=True), says("true or false", bool)]
Text = Annotated[str, Field(strict=True, pattern=r"\S"), says("a non-empty string")]
Secret = Annotated[str, Field(strict=True, pattern=r"\S"), says("a non-empty string", echo=False)]
Project = Annotated[str, Field(strict=True, pattern="^[^/]+/[^/]+$"), says("'<entity>/<project>'")]
KeyHash = Annotated[
    str, Field(strict=True, pattern=f"^{KEY_HASH_RE.pattern}$"), says(HASH, echo=False)
]
KeyHashes = Annotated[
    frozenset[Annotated[KeyHash, AfterValidator(str.lower)]], BeforeValidator(as_list)
]
Url = Annotated[
    str,
    Field(strict=True, pattern="^https?://[^/]"),
    says("an http(s) URL"),
    AfterValidator(lambda url: url.rstrip("/")),
]
Projects = Annotated[frozenset[Project], BeforeValidator(as_list)]
HeaderName = Annotated[
    str, Field(strict=True, pattern=r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$"), says("an HTTP header name")
]
HeaderNames = Annotated[
    frozenset[Annotated[HeaderName, AfterValidator(str.lower)]], BeforeValidator(as_list)
]


def key_hashes_in(file: Path) -> frozenset[str]:
    """The key hashes a `keys_file` lists, one a line (`#` comments), or the ValueError saying
    what is wrong with it."""
    try:
        lines = file.read_text().splitlines()
    except UnicodeDecodeError:
        raise ValueError(f"{file} is not UTF-8 text") from None
    except OSError as exc:
        raise ValueError(
            f"cannot read {file} ({exc.strerror}); "
            f"create it with `inference-gateway keys new --save {file}`"
        ) from None
    stripped = {n: line.strip() for n, line in enumerate(lines, 1)}
    hashes = {n: h for n, h in stripped.items() if h and not h.startswith("#")}
    if bad := [str(n) for n, h in hashes.items() if not KEY_HASH_RE.fullmatch(h)]:
        raise ValueError(f"{file} line {', '.join(bad)}: must be {HASH}")
    return frozenset(h.lower() for h in hashes.values())


def _forwardable(names: frozenset[str]) -> frozenset[str]:
    if refused := sorted(name for name in names if never_forwarded(name)):
        raise ValueError(f"{', '.join(refused)} {NEVER_FORWARDED_WHY}")
    return names


ForwardHeaders = Annotated[HeaderNames, AfterValidator(_forwardable)]
# Concurrency limits and weights: the Redis limiter's Lua counts in doubles, exact up to 2**53.
MAX_LIMIT = 2**53
Limit = Annotated[
    int, Field(strict=True, gt=0, le=MAX_LIMIT), says(f"a positive integer <= {MAX_LIMIT}", int)
]
Nodes = Annotated[tuple[tuple[str, int], ...], BeforeValidator(host_ports)]
Texts = Annotated[tuple[Text, ...], BeforeValidator(as_list)]
Entries = Annotated[dict[str, Any], BeforeValidator(as_mapping)]


class Section(BaseModel):
    """A part of the config: frozen, and every key must be one of its fields."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _mapping(cls, data: Any) -> Any:
        fields = cls.model_fields  # `key: ~` is the key left out, unless None is its default
        items = as_mapping(data).items()
        return {
            k: v for k, v in items if v is not None or k not in fields or fields[k].default is None
        }


def key_path(path: str, loc: Iterable[int | str]) -> str:
    """`tenants.search.keys[0]`: the path under `path` that a pydantic error location names."""
    for part in loc:
        path = f"{path}[{part}]" if isinstance(part, int) else f"{path}.{part}" if path else part
    return path


def problem(model: type[BaseModel], error: Mapping[str, Any]) -> str:
    """What a pydantic error, from validating `model`, says in the config's own words."""
    if error["type"] == "missing":
        return "is required"
    if error["type"] == "value_error":
        return str(error["ctx"]["error"])
    if error["type"] == "extra_forbidden":  # the hint lists the fields of the model holding it
        for key in error["loc"][:-1]:
            hint = model.model_fields[key].annotation
            model = next(t for t in (hint, *get_args(hint)) if isinstance(t, type))
        return f"unknown key (allowed: {', '.join(sorted(model.model_fields))})"
    return str(error["msg"])

"""How configuration values are checked: a walker that collects every problem with its key path
instead of stopping at the first, and converters that say what is wrong with a value."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

T = TypeVar("T")

VAR_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class Checker:
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

            return VAR_RE.sub(repl, value)
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
            self.fail(path or "<top>", f"must be a mapping, got {kind(data)}")
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


def kind(value: Any) -> str:
    return type(value).__name__


def text(value: Any) -> str:
    if isinstance(value, str) and value.strip():
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    raise ValueError(f"must be a non-empty string, got {value!r}")


def positive_int(value: Any) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    raise ValueError(f"must be a positive integer, got {value!r}")


def non_negative_int(value: Any) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise ValueError(f"must be a non-negative integer, got {value!r}")


def non_negative(c: Checker, data: dict[str, Any], path: str, key: str, default: float) -> float:
    value = c.get(data, path, key, price)  # any number >= 0
    return default if value is None else value


def positive_number(value: Any) -> float:
    try:
        number = float(value) if not isinstance(value, bool) else -1.0
    except (TypeError, ValueError):
        number = -1.0
    if number > 0:
        return number
    raise ValueError(f"must be a positive number, got {value!r}")


def price(value: Any) -> float:
    try:
        number = float(value) if not isinstance(value, bool) else -1.0
    except (TypeError, ValueError):
        number = -1.0
    if number >= 0:
        return number
    raise ValueError(f"must be a price >= 0 (USD per million tokens), got {value!r}")


def boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in {"true", "false", "yes", "no", "1", "0"}:
        return value.lower() in {"true", "yes", "1"}
    raise ValueError(f"must be true or false, got {value!r}")


def choice(*options: str) -> Callable[[Any], str]:
    def conv(value: Any) -> str:
        if value in options:
            return str(value)
        raise ValueError(f"must be one of {', '.join(options)}, got {value!r}")

    return conv


def text_list(value: Any) -> list[str]:
    if not isinstance(value, list):
        raise ValueError(f"must be a list of strings, got {kind(value)}")
    return [text(v) for v in value]


def http_url(value: Any) -> str:
    url = text(value).rstrip("/")
    if not re.match(r"^https?://[^/]+", url):
        raise ValueError(f"must be an http(s) URL, got {value!r}")
    return url


def project(value: Any) -> str:
    name = text(value)
    entity, _, rest = name.partition("/")
    if not entity or not rest or "/" in rest:
        raise ValueError(f"must be '<entity>/<project>', got {value!r}")
    return name


def host_ports(value: Any) -> list[tuple[str, int]]:
    nodes = []
    for item in text_list(value):
        host, _, port = item.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"each node must be 'host:port', got {item!r}")
        nodes.append((host, int(port)))
    if not nodes:
        raise ValueError("must list at least one sentinel 'host:port'")
    return nodes


def project_list(value: Any) -> list[str]:
    return [project(v) for v in text_list(value)]

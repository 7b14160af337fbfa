"""Type checks for a Responses request's fields: each returns the value narrowed to its type, or
raises `BadRequest` naming the field's path (`input[2].content[0].image_url`), in OpenAI's words
("Invalid type for 'temperature': expected a number, but got a string instead.").

`null` is absent everywhere: the SDKs and agent frameworks send explicit nulls for fields they
leave unset.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NoReturn

from gateway.errors import BadRequest

JSON = dict[str, Any]


def refuse(message: str, param: str) -> NoReturn:
    raise BadRequest(message, param=param)


def at(path: str, key: str | int) -> str:
    """The path of a member: `input` + 2 -> `input[2]`, `text` + `format` -> `text.format`."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def wrong_type(value: object, param: str, expected: str) -> NoReturn:
    refuse(
        f"Invalid type for '{param}': expected {expected}, but got {_kind(value)} instead.", param
    )


def required(obj: Mapping[str, object], key: str, path: str = "") -> object:
    value = obj.get(key)
    if value is None:
        param = at(path, key)
        refuse(f"Missing required parameter: '{param}'.", param)
    return value


def as_object(value: object, param: str) -> Mapping[str, object]:
    if not isinstance(value, dict):
        wrong_type(value, param, "an object")
    return value


def as_list(value: object, param: str) -> list[object]:
    if not isinstance(value, list):
        wrong_type(value, param, "an array")
    return value


def as_str(value: object, param: str) -> str:
    if not isinstance(value, str):
        wrong_type(value, param, "a string")
    return value


def opt_str(obj: Mapping[str, object], key: str, path: str = "") -> str | None:
    value = obj.get(key)
    return None if value is None else as_str(value, at(path, key))


def opt_bool(obj: Mapping[str, object], key: str, path: str = "") -> bool | None:
    value = obj.get(key)
    if value is None or isinstance(value, bool):
        return value
    wrong_type(value, at(path, key), "a boolean")


def opt_int(obj: Mapping[str, object], key: str, path: str = "", minimum: int = 0) -> int | None:
    value = obj.get(key)
    if value is None:
        return None
    param = at(path, key)
    if isinstance(value, bool) or not isinstance(value, int):
        wrong_type(value, param, "an integer")
    if value < minimum:
        refuse(f"Invalid '{param}': integer below minimum value ({value} < {minimum}).", param)
    return value


def opt_number(obj: Mapping[str, object], key: str, path: str = "") -> float | None:
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        wrong_type(value, at(path, key), "a number")
    return value


def opt_object(obj: Mapping[str, object], key: str, path: str = "") -> Mapping[str, object] | None:
    value = obj.get(key)
    return None if value is None else as_object(value, at(path, key))


def one_of(value: str, allowed: tuple[str, ...], param: str) -> str:
    if value not in allowed:
        choices = ", ".join(f"'{a}'" for a in allowed)
        refuse(f"Invalid value for '{param}': '{value}'. Supported values are: {choices}.", param)
    return value

"""The JSON value a JSON schema describes, made deterministically: tool arguments, JSON answers.

``instance(schema)`` walks the schema once, in declaration order, and builds the same value
every time, valid against the schema for what pydantic, the openai SDK's strict mode and
LangChain emit:

- ``$ref`` is a JSON pointer into the root schema (``#/$defs/...``, ``#/definitions/...``);
  keywords beside it add to the target. ``allOf`` merges its branches (``properties`` and
  ``required`` united). ``anyOf``/``oneOf``: the first branch. ``const``: itself. ``enum``: its
  first value (the i-th, cycling, for the i-th item of an array).
- ``type`` may be a list (``["string", "null"]``): the first that is not ``"null"``. Without
  ``type``: an object if it has ``properties``, an array if it has ``items``/``prefixItems``,
  else a string.
- object: every property of ``properties``, required or not, in their order, plus any
  ``required`` name with no schema (a string).
- array: ``max(minItems, 1)`` items, at most ``maxItems``; ``prefixItems`` first, then
  ``items``. Items differ by their position (so ``uniqueItems`` holds).
- string: by ``format``: date ``2025-01-01``, date-time ``2025-01-01T12:00:00Z``, time
  ``12:00:00``, email ``fake@example.com``, uri/url ``https://example.com/fake``, uuid, hostname,
  ipv4, ipv6, duration (``FORMATS``); otherwise ``"fake <property name>"`` (``"fake value"``
  outside an object, ``" 2"``, ``" 3"``... after it for later array items), padded with ``x`` to
  ``minLength`` and cut to ``maxLength``. ``pattern`` is not honoured.
- integer: ``minimum`` (or just above ``exclusiveMinimum``), else 1 bounded by ``maximum``,
  rounded up to ``multipleOf``; number: the same with 1.5, or the middle of two bounds when
  the lower one is exclusive; the i-th item of an array adds i when that stays in bounds.
- boolean: ``true``; null: ``null``; ``{}`` or ``true`` (anything): a string.

Recursive schemas end: below ``SOFT_DEPTH`` nestings, optional properties are left out, arrays
take only ``minItems`` items and ``anyOf``/``oneOf`` prefer a ``null`` branch. A schema that
cannot end (a required self-reference), a ``$ref`` that points nowhere, ``false``, or one that
would need more than ``MAX_NODES`` values raises ``SchemaError``.
"""

from __future__ import annotations

import math
from typing import Any, Final

SOFT_DEPTH: Final = 6
_HARD_DEPTH: Final = 64
MAX_NODES: Final = 5000
_MAX_REFS: Final = 64  # $ref hops for one value: more is a cycle of references

FORMATS: Final = {
    "date": "2025-01-01",
    "date-time": "2025-01-01T12:00:00Z",
    "time": "12:00:00",
    "email": "fake@example.com",
    "idn-email": "fake@example.com",
    "uri": "https://example.com/fake",
    "url": "https://example.com/fake",
    "iri": "https://example.com/fake",
    "uri-reference": "https://example.com/fake",
    "uuid": "00000000-0000-4000-8000-000000000000",
    "hostname": "example.com",
    "ipv4": "192.0.2.1",
    "ipv6": "2001:db8::1",
    "duration": "P1D",
}


class SchemaError(ValueError):
    """A schema the fake cannot make a value for; the message says why."""


def instance(schema: object) -> Any:
    """The value ``schema`` describes (rules in the module docstring)."""
    if not isinstance(schema, dict | bool):
        raise SchemaError("a JSON schema must be an object")
    try:
        return _Walker(schema).value(schema, "value", 0, 0)
    except RecursionError:  # nested ``anyOf``/``allOf`` as deep as the JSON parser allows
        raise SchemaError("the schema nests too deep") from None


def _int_or(value: object, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


class _Walker:
    """One walk over one root schema: it resolves references and counts the values made."""

    def __init__(self, root: dict[str, Any] | bool) -> None:
        self.root = root
        self.nodes = 0

    def value(self, schema: object, name: str, ordinal: int, depth: int) -> Any:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise SchemaError(f"the schema needs more than {MAX_NODES} values")
        if depth > _HARD_DEPTH:
            raise SchemaError("the schema nests too deep (a required recursion never ends)")
        schema = self.resolve(schema)
        if "const" in schema:
            return schema["const"]
        enum = schema.get("enum")
        if isinstance(enum, list) and enum:
            return enum[ordinal % len(enum)]
        for key in ("anyOf", "oneOf"):
            branches = schema.get(key)
            if isinstance(branches, list) and branches:
                return self.value(self.choose(branches, depth), name, ordinal, depth)
        kind = _type(schema)
        if kind == "object":
            return self.object(schema, depth)
        if kind == "array":
            return self.array(schema, name, depth)
        if kind == "integer":
            return _integer(schema, ordinal)
        if kind == "number":
            return _float(schema, ordinal)
        if kind == "boolean":
            return True
        if kind == "null":
            return None
        return _string(schema, name, ordinal)

    def resolve(self, schema: object) -> dict[str, Any]:
        """``schema`` with its ``$ref`` followed and its ``allOf`` merged in."""
        if schema is True:
            return {}
        if not isinstance(schema, dict):
            raise SchemaError(f"not a schema: {schema!r:.60}")
        self.nodes += 1  # an `allOf` of `$ref`s doubling at each level costs as many values
        if self.nodes > MAX_NODES:
            raise SchemaError(f"the schema needs more than {MAX_NODES} values")
        hops = 0
        while "$ref" in schema:
            hops += 1
            if hops > _MAX_REFS:
                raise SchemaError("the schema's references form a cycle")
            rest = {k: v for k, v in schema.items() if k != "$ref"}
            schema = {**self.pointer(schema["$ref"]), **rest}
        branches = schema.get("allOf")
        if not isinstance(branches, list):
            return schema
        merged = {k: v for k, v in schema.items() if k != "allOf"}
        for branch in branches:
            for key, value in self.resolve(branch).items():
                if key == "properties" and isinstance(value, dict):
                    merged["properties"] = {**merged.get("properties", {}), **value}
                elif key == "required" and isinstance(value, list):
                    merged["required"] = [*merged.get("required", []), *value]
                else:
                    merged.setdefault(key, value)
        return merged

    def pointer(self, ref: object) -> dict[str, Any]:
        if not isinstance(ref, str) or not (ref == "#" or ref.startswith("#/")):
            raise SchemaError(f"only local references ('#/...') are followed, not {ref!r:.60}")
        node: Any = self.root
        for part in ref[1:].split("/")[1:]:
            part = part.replace("~1", "/").replace("~0", "~")
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                raise SchemaError(f"the reference {ref!r:.60} points nowhere")
        if node is True:
            return {}
        if not isinstance(node, dict):
            raise SchemaError(f"the reference {ref!r:.60} is not a schema")
        return node

    def choose(self, branches: list[Any], depth: int) -> Any:
        if depth >= SOFT_DEPTH:
            for branch in branches:
                if isinstance(branch, dict) and branch.get("type") == "null":
                    return branch
        return branches[0]

    def object(self, schema: dict[str, Any], depth: int) -> dict[str, Any]:
        properties = schema.get("properties")
        properties = properties if isinstance(properties, dict) else {}
        required = schema.get("required")
        required = [r for r in required if isinstance(r, str)] if isinstance(required, list) else []
        out: dict[str, Any] = {}
        for name, sub in properties.items():
            if depth < SOFT_DEPTH or name in required:
                out[name] = self.value(sub, name, 0, depth + 1)
        for name in required:
            if name not in out:
                out[name] = self.value({"type": "string"}, name, 0, depth + 1)
        return out

    def array(self, schema: dict[str, Any], name: str, depth: int) -> list[Any]:
        prefix = schema.get("prefixItems")
        prefix = prefix if isinstance(prefix, list) else []
        items = schema.get("items")
        least = max(_int_or(schema.get("minItems"), 0), 0)
        count = max(least, 1) if depth < SOFT_DEPTH else least
        most = schema.get("maxItems")
        if isinstance(most, int) and not isinstance(most, bool):
            count = min(count, max(most, 0))
        if count > MAX_NODES:
            raise SchemaError(f"the schema needs more than {MAX_NODES} values")
        subs = [prefix[i] if i < len(prefix) else items for i in range(count)]
        return [
            self.value({} if sub is None else sub, name, i, depth + 1) for i, sub in enumerate(subs)
        ]


def _type(schema: dict[str, Any]) -> str:
    kind = schema.get("type")
    if isinstance(kind, list):
        named = [k for k in kind if isinstance(k, str)]
        return next((k for k in named if k != "null"), "null" if named else "string")
    if isinstance(kind, str):
        return kind
    if "properties" in schema:
        return "object"
    if "items" in schema or "prefixItems" in schema:
        return "array"
    return "string"


def _string(schema: dict[str, Any], name: str, ordinal: int) -> str:
    fmt = schema.get("format")
    if isinstance(fmt, str) and fmt in FORMATS:
        return FORMATS[fmt]
    text = f"fake {name}" + (f" {ordinal + 1}" if ordinal else "")
    least = _int_or(schema.get("minLength"), 0)
    if least > MAX_NODES:
        raise SchemaError(f"minLength over {MAX_NODES}")
    text = text.ljust(least, "x")
    most = schema.get("maxLength")
    return text[: max(most, 0)] if isinstance(most, int) and not isinstance(most, bool) else text


def _bounds(schema: dict[str, Any]) -> tuple[float | None, bool, float | None, bool]:
    """(lower, lower exclusive, upper, upper exclusive), draft 4's boolean form included."""
    low, high = _number(schema.get("minimum")), _number(schema.get("maximum"))
    low_x, high_x = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
    low_open, high_open = low_x is True, high_x is True
    if _number(low_x) is not None:
        low, low_open = _number(low_x), True
    if _number(high_x) is not None:
        high, high_open = _number(high_x), True
    return low, low_open, high, high_open


def _integer(schema: dict[str, Any], ordinal: int) -> int:
    low, low_open, high, high_open = _bounds(schema)
    top = None if high is None else (math.ceil(high) - 1 if high_open else math.floor(high))
    if low is not None:
        value = math.floor(low) + 1 if low_open else math.ceil(low)
    else:
        value = 1 if top is None else min(1, top)
    step = schema.get("multipleOf")
    if isinstance(step, int) and not isinstance(step, bool) and step > 0:
        value = -(-value // step) * step
    if top is None or value + ordinal <= top:
        value += ordinal
    return value


def _float(schema: dict[str, Any], ordinal: int) -> float:
    low, low_open, high, high_open = _bounds(schema)
    if low is not None and high is not None:
        value = (low + high) / 2 if low_open else low
    elif low is not None:
        value = low + 1 if low_open else low
    elif high is not None:
        value = min(1.5, high - 1 if high_open else high)
    else:
        value = 1.5
    above = value + ordinal
    fits = high is None or above < high or (above == high and not high_open)
    return above if fits else value

"""Gateway keys: how they are made and hashed. Keys are stored only as `sha256:<hex>` hashes."""

from __future__ import annotations

import hashlib
import os
import re
import secrets
from pathlib import Path

KEY_PREFIX = "sk-gw-"
KEY_HASH_RE = re.compile(r"sha256:[0-9a-fA-F]{64}")


def new_key() -> str:
    """A fresh key with 32 bytes (256 bits) of entropy."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


class KeyEditError(Exception):
    """The config file could not be edited to add a key."""


def add_to_config(path: Path, tenant: str, digest: str) -> Path:
    """Add a key hash to a tenant, keeping the file as written (comments, order, layout).

    A tenant with a `keys_file` gets the hash appended to that file; otherwise the hash goes
    into the tenant's `keys` list in the config itself. The result is validated before it
    replaces the file. Returns the file that was changed.
    """
    from gateway.config import ConfigError, load_settings

    try:
        settings = load_settings(path)
    except ConfigError as exc:
        raise KeyEditError(str(exc)) from None
    if tenant not in settings.tenants:
        known = ", ".join(sorted(settings.tenants))
        raise KeyEditError(f"{path}: no tenant {tenant!r} (known: {known})")
    keys_files = [f for f in settings.files[1:] if _keys_file_of(path, tenant, f)]
    if keys_files:
        target = Path(keys_files[0])
        with target.open("a") as f:
            f.write(digest + "\n")
        return target

    lines = path.read_text().splitlines(keepends=True)
    edited = _insert_key(lines, tenant, digest)
    temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    temp.write_text("".join(edited))
    try:
        check = load_settings(temp)
        if digest not in check.tenants[tenant].key_hashes:
            raise KeyEditError(f"{path}: could not place the key under tenants.{tenant}")
        temp.chmod(path.stat().st_mode & 0o777)
        os.replace(temp, path)
    except ConfigError as exc:
        raise KeyEditError(f"the edited file would be invalid: {exc}") from None
    finally:
        temp.unlink(missing_ok=True)
    return path


def _keys_file_of(config: Path, tenant: str, keys_file: str) -> bool:
    import yaml

    raw = yaml.safe_load(config.read_text()) or {}
    name = (raw.get("tenants") or {}).get(tenant, {}).get("keys_file")
    if not name:
        return False
    file = Path(name) if Path(name).is_absolute() else config.parent / name
    return str(file) == keys_file


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _is_content(line: str) -> bool:
    text = line.strip()
    return bool(text) and not text.startswith("#")


def _block(lines: list[str], start: int) -> int:
    """The index just past the block whose header is lines[start]."""
    base = _indent(lines[start])
    end = start + 1
    while end < len(lines) and (not _is_content(lines[end]) or _indent(lines[end]) > base):
        end += 1
    return end


def _find_key(lines: list[str], start: int, stop: int, name: str, indent: int | None) -> int:
    pattern = re.compile(rf"""^(\s*)(["']?){re.escape(name)}\2\s*:(\s|$)""")
    for i in range(start, stop):
        m = pattern.match(lines[i])
        if m and (indent is None or len(m.group(1)) == indent):
            return i
    return -1


def _insert_key(lines: list[str], tenant: str, digest: str) -> list[str]:
    top = _find_key(lines, 0, len(lines), "tenants", 0)
    if top < 0:
        raise KeyEditError("no top-level `tenants:` section")
    end = _block(lines, top)
    children = [i for i in range(top + 1, end) if _is_content(lines[i])]
    child_indent = _indent(lines[children[0]]) if children else 2
    at = _find_key(lines, top + 1, end, tenant, child_indent)
    if at < 0:
        raise KeyEditError(f"no tenant {tenant!r} under `tenants:`")
    tenant_end = _block(lines, at)
    fields = [i for i in range(at + 1, tenant_end) if _is_content(lines[i])]
    field_indent = _indent(lines[fields[0]]) if fields else child_indent + 2
    keys_at = _find_key(lines, at + 1, tenant_end, "keys", field_indent)
    item = f'"{digest}"'
    if keys_at < 0:
        return [*lines[: at + 1], f"{' ' * field_indent}keys: [{item}]\n", *lines[at + 1 :]]
    line = lines[keys_at]
    head, _, value = line.partition(":")
    flow = value.split("#", 1)[0].strip()
    if flow.startswith("[") and flow.endswith("]"):
        inner = flow[1:-1].strip()
        new_flow = f"[{inner}, {item}]" if inner else f"[{item}]"
        comment = value[value.index("]") + 1 :].rstrip("\n")
        lines[keys_at] = f"{head}: {new_flow}{comment}\n"
        return lines
    if flow:
        raise KeyEditError(f"tenants.{tenant}.keys is neither a [flow] nor a block list")
    last = keys_at
    item_indent = field_indent + 2
    for i in range(keys_at + 1, tenant_end):
        if _is_content(lines[i]):
            if not lines[i].lstrip().startswith("- "):
                break
            last, item_indent = i, _indent(lines[i])
    return [*lines[: last + 1], f"{' ' * item_indent}- {item}\n", *lines[last + 1 :]]

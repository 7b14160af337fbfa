"""Adding a key hash to a tenant in the config file, keeping the file as written.

`inference-gateway keys new --tenant T` edits the document with ruamel.yaml in round-trip mode,
so comments, order, quoting and layout stay. The gateway reads the file with PyYAML (YAML 1.1,
gateway.config), never with ruamel, so before the edited file replaces the old one (atomically) it
must differ from it only in the tenant's `keys` and load, in gateway.config, to the same keys plus
the new one.

Every edit, of the config or of a keys file, holds an exclusive lock (`.NAME.lock` beside the
file, fcntl) from reading the file to replacing it, so edits running at once all land. The new
text goes to a temporary file beside it, created 0600 (the config may hold a W&B key inline; no
moment with the umask's mode), written and fsynced, given the old file's mode, then renamed over
it; a symlinked file (a mounted ConfigMap, say) is edited where the link points.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.scalarstring import DoubleQuotedScalarString
from ruamel.yaml.tokens import CommentToken
from ruamel.yaml.util import load_yaml_guess_indent

from gateway.config import ConfigError, load_settings


class KeyEditError(Exception):
    """The config file could not be edited to add a key."""


def add_to_config(path: Path, tenant: str, digest: str) -> Path:
    """Add a key hash to a tenant; return the file that was changed.

    A tenant with a `keys_file` gets the hash appended to that file; otherwise the hash goes
    into the tenant's `keys` list in the config itself. Either under its file's lock.
    """
    real = Path(os.path.realpath(path))
    try:
        with locked(real):
            return _add_locked(path, real, tenant, digest)
    except OSError as exc:
        raise KeyEditError(f"cannot edit {exc.filename or path}: {exc.strerror}") from None


def add_to_keys_file(file: Path, digest: str, mode: int | None = None) -> None:
    """Add a hash line to a keys file, created if need be; `mode` is the file's afterwards
    (default: what it was, 0600 for a new file)."""
    real = Path(os.path.realpath(file))
    try:
        with locked(real):
            try:
                text, old_mode = real.read_text(), stat.S_IMODE(real.stat().st_mode)
            except FileNotFoundError:
                text, old_mode = "", 0o600
            if text and not text.endswith("\n"):  # a last line without its newline
                text += "\n"
            with staged(real, text + digest + "\n") as temp:
                put(temp, real, old_mode if mode is None else mode)
    except OSError as exc:
        raise KeyEditError(f"cannot edit {exc.filename or file}: {exc.strerror}") from None


def _add_locked(path: Path, real: Path, tenant: str, digest: str) -> Path:
    """The edit, its lock held: `path` read as the gateway reads it, `real` (where a symlink
    points) rewritten."""
    try:
        settings = load_settings(path)
    except ConfigError as exc:
        raise KeyEditError(str(exc)) from None
    if tenant not in settings.tenants:
        known = ", ".join(sorted(settings.tenants))
        raise KeyEditError(f"{path}: no tenant {tenant!r} (known: {known})")
    text = real.read_text()
    yaml = YAML()  # round-trip
    yaml.preserve_quotes = True
    yaml.width = 4096  # never re-wrap a long line
    document, indent, dash = load_yaml_guess_indent(text, yaml=yaml)
    tenants = document["tenants"]
    entry = next((e for name, e in tenants.items() if str(name) == tenant), None)
    if not isinstance(entry, CommentedMap):
        raise KeyEditError(f"{path}: no tenant {tenant!r} under `tenants:` as ruamel.yaml reads it")
    keys_file = str(path.parent / str(entry["keys_file"])) if entry.get("keys_file") else None
    if keys_file in settings.files[1:]:  # as the gateway read it (not a ${VAR} name, say)
        add_to_keys_file(Path(keys_file), digest)
        return Path(keys_file)

    # ruamel re-indents every block it writes as told: tell it how this file indents.
    keys = entry.get("keys")
    if isinstance(keys, CommentedSeq) and keys and not keys.fa.flow_style():
        indent = keys.lc.item(0)[1] - entry.lc.key("keys")[1]  # `- ` then the item
        dash = indent - 2
    mapping = 2 if tenants.fa.flow_style() else tenants.lc.col
    yaml.indent(mapping=mapping, sequence=indent or 2, offset=dash or 0)
    start, end = _add_key(entry, DoubleQuotedScalarString(digest))
    out = io.StringIO()
    yaml.dump(document, out)
    # Only the lines of the tenant's `keys` may change: a file ruamel would write differently
    # elsewhere (two block-list styles, say) is left to the user rather than reformatted.
    old, new = text.splitlines(), out.getvalue().splitlines()
    tail = len(old) - end
    if old[:start] != new[:start] or old[len(old) - tail :] != new[len(new) - tail :]:
        raise KeyEditError(
            f"{path}: adding the key to tenants.{tenant} would rewrite other lines of the file; "
            "add the hash that `inference-gateway keys new` prints by hand"
        )
    _replace(real, out.getvalue(), tenant, settings.tenants[tenant].key_hashes | {digest})
    return path


def _add_key(entry: CommentedMap, digest: str) -> tuple[int, int]:
    """Add `digest` to the tenant's `keys`; return the lines [start, end) the edit may change."""
    keys = entry.get("keys")
    if not isinstance(keys, CommentedSeq):  # `keys:` (null), or none beside an unread keys_file
        new = CommentedSeq([digest])
        new.fa.set_flow_style()
        if "keys" in entry:
            line = entry.lc.key("keys")[0]
            entry["keys"] = new
            return line, line + 1
        entry.insert(0, "keys", new)
        return entry.lc.line, entry.lc.line
    line = entry.lc.key("keys")[0]
    end = keys.lc.item(len(keys) - 1)[0] + 1 if keys else line + 1
    if not keys:
        keys.fa.set_flow_style()  # `keys: []` loads without a style, and would become a block
    last = keys.ca.items.get(len(keys) - 1)
    keys.append(digest)
    # ruamel keeps what follows a list's last item on its lines (comments, blank lines) with that
    # item, so the new item would land below them: they move to the new item.
    if last and last[0] is not None and (rest := last[0].value.partition("\n")[2]):
        last[0].value = last[0].value.partition("\n")[0] + "\n"
        keys.ca.items[len(keys) - 1] = [
            CommentToken("\n" + rest, last[0].start_mark),
            None,
            None,
            None,
        ]
    return line, end


def _replace(path: Path, text: str, tenant: str, expected: frozenset[str]) -> None:
    """Write `text` over `path` atomically, once it loads with the tenant's keys `expected`."""
    with staged(path, text) as temp:
        try:
            if load_settings(temp).tenants[tenant].key_hashes != expected:
                raise KeyEditError(f"{path}: could not place the key under tenants.{tenant}")
        except ConfigError as exc:
            raise KeyEditError(f"the edited file would be invalid: {exc}") from None
        put(temp, path, stat.S_IMODE(path.stat().st_mode))


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold the lock of `path` for the whole edit: an exclusive flock of `.NAME.lock` beside it,
    removed when done. Whoever took the lock on a file since removed locks nothing: try again."""
    lock = path.with_name(f".{path.name}.lock")
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            if os.stat(lock).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)  # before the lock goes, so no one takes a removed file
        os.close(fd)


@contextlib.contextmanager
def staged(path: Path, text: str) -> Iterator[Path]:
    """A new file beside `path` holding `text`, mode 0600 from its creation, on disk; gone
    afterwards unless `put` renamed it over `path`."""
    temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        try:
            with open(fd, "w", closefd=False) as f:
                f.write(text)
            os.fsync(fd)
        finally:
            os.close(fd)
        yield temp
    finally:
        temp.unlink(missing_ok=True)


def put(temp: Path, path: Path, mode: int) -> None:
    """Rename `temp` over `path`, with `mode` (its old file's), and make the rename durable."""
    os.chmod(temp, mode)
    os.replace(temp, path)
    folder = os.open(path.parent, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)

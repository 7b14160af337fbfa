"""Gateway keys: how they are made and hashed. Keys are stored only as `sha256:<hex>` hashes.

Adding a key to a tenant in the config file is gateway.config_edit's.
"""

from __future__ import annotations

import hashlib
import re
import secrets

KEY_PREFIX = "sk-gw-"
KEY_HASH_RE = re.compile(r"sha256:[0-9a-fA-F]{64}")


def new_key() -> str:
    """A fresh key with 32 bytes (256 bits) of entropy."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()

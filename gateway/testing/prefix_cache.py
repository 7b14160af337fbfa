"""The fake's prompt prefix cache: which message prefixes it has seen, per ``cache_salt``.

W&B reuses the KV cache of a prompt prefix it has computed before, and ``cache_salt`` isolates
that reuse: requests share cache only when both the prefix and the salt (or the lack of one)
match. The fake models that at message granularity: a request's ``cached_tokens`` are the prompt
tokens (``completions.prompt_tokens``) of its longest message prefix, ``messages[:k]`` for some
k >= 1, that an earlier answered request with the same salt also began with; a whole prompt
seen before is cached entirely. Every answered request's prefixes are remembered, the
most recently used ``CACHE_LIMIT`` of them (least recently used forgotten first). The cache is
not per model (W&B's is per backend): tests choose their prompts. ``POST /_fake/reset`` empties
it.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Final

CACHE_LIMIT: Final = 4096

Key = tuple[str | None, bytes]  # (cache_salt or None, hash of the first k messages)


class PrefixCache:
    """A bounded LRU of (salt, prefix hash) keys."""

    def __init__(self, limit: int = CACHE_LIMIT) -> None:
        self.limit = limit
        self._seen: OrderedDict[Key, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._seen)

    def use(self, salt: str | None, prefixes: tuple[bytes, ...]) -> int:
        """How many leading messages were seen before with ``salt`` (0: none); then remember
        all of ``prefixes`` (``prefixes[k - 1]`` hashes the first k messages)."""
        longest = 0
        for k, digest in enumerate(prefixes, 1):
            key = (salt, digest)
            if key in self._seen:
                longest = k
                self._seen.move_to_end(key)
            else:
                self._seen[key] = None
        while len(self._seen) > self.limit:
            self._seen.popitem(last=False)
        return longest

    def clear(self) -> None:
        self._seen.clear()

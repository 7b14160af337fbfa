"""The faults ``POST /_fake/faults`` queues: their kinds, their parameters, their validation.

A fault applies to the next ``count`` chat requests that pass authentication and parsing. Kinds
named in ``ERRORS`` answer with that error at once, as do ``reset`` (the connection is dropped,
and so is a non-streamed request's under ``cut``) and ``redirect`` (a 307 whose ``Location`` is
the request's own URL: a client that follows it sends the request again). ``cut`` (after
``after`` token chunks: reasoning, content or tool-call arguments), ``delay`` (``seconds`` more
before the answer), ``think`` (a stream's status and headers at once, then ``seconds`` of
silence before its first chunk, as a reasoning model) and ``hang`` instead shape the answer
once the model and concurrency checks have passed, so the request counts as in flight
meanwhile.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from gateway.testing.errors import ERRORS

FAULT_KINDS: Final = frozenset(ERRORS) | {"reset", "redirect", "cut", "delay", "think", "hang"}


@dataclass
class Fault:
    """One queued fault: what it does and to how many more requests."""

    kind: str
    remaining: int
    params: dict[str, Any]


def parse_fault(spec: object) -> Fault:
    """One entry of ``{"faults": [...]}``; ``ValueError`` says what is wrong with it."""
    if not isinstance(spec, dict) or spec.get("kind") not in FAULT_KINDS:
        raise ValueError(f"unknown fault {spec!r}; kinds: {sorted(FAULT_KINDS)}")
    count, after = spec.get("count", 1), spec.get("after", 1)
    seconds = spec.get("seconds", 1.0)
    if not (isinstance(count, int) and count >= 1 and isinstance(after, int) and after >= 0):
        raise ValueError(f"'count' must be >= 1 and 'after' >= 0 in {spec!r}")
    if not isinstance(seconds, int | float) or seconds < 0:
        raise ValueError(f"'seconds' must be a non-negative number in {spec!r}")
    return Fault(spec["kind"], count, {"after": after, "seconds": float(seconds)})

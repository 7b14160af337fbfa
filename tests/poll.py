"""Waiting for a condition instead of sleeping: the suite's one poll-until helper.

`await until(check)` calls `check` (a plain function, or one returning an awaitable) every
`interval_s` until it returns something truthy, and returns that; past `timeout_s` it fails the
test with `what`. `until_sync` is the same for code without an event loop.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

INTERVAL_S = 0.02


async def until(
    check: Callable[[], T | Awaitable[T]],
    timeout_s: float = 5.0,
    what: str = "condition",
    interval_s: float = INTERVAL_S,
) -> T:
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value  # type: ignore[return-value]
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what} not reached within {timeout_s:g}s (last: {value!r})")
        await asyncio.sleep(interval_s)


def until_sync(
    check: Callable[[], T],
    timeout_s: float = 5.0,
    what: str = "condition",
    interval_s: float = INTERVAL_S,
) -> T:
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what} not reached within {timeout_s:g}s (last: {value!r})")
        time.sleep(interval_s)

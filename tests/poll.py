"""Waiting for a condition instead of sleeping: the suite's one poll-until helper.

`await until(check)` calls `check` (a plain function, or one returning an awaitable) every
`interval_s` until it returns something truthy, and returns that; past `timeout_s` it fails the
test with `what`. Exceptions of the types in `ignore` count as "not yet" (a server that does not
listen yet); any other one ends the wait at once. `until_sync` is the same for code without an
event loop.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, overload

T = TypeVar("T")

INTERVAL_S = 0.02

Ignored = type[BaseException] | tuple[type[BaseException], ...]


@overload
async def until(
    check: Callable[[], Awaitable[T]],
    timeout_s: float = ...,
    what: str = ...,
    interval_s: float = ...,
    ignore: Ignored = ...,
) -> T: ...


@overload
async def until(
    check: Callable[[], T],
    timeout_s: float = ...,
    what: str = ...,
    interval_s: float = ...,
    ignore: Ignored = ...,
) -> T: ...


async def until(
    check: Callable[[], Any],
    timeout_s: float = 5.0,
    what: str = "condition",
    interval_s: float = INTERVAL_S,
    ignore: Ignored = (),
) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        last: object
        try:
            value = check()
            if inspect.isawaitable(value):
                value = await value
        except ignore as exc:
            last = exc
        else:
            if value:
                return value
            last = value
        if time.monotonic() >= deadline:
            raise AssertionError(_failure(what, timeout_s, last))
        await asyncio.sleep(interval_s)


def until_sync(
    check: Callable[[], T],
    timeout_s: float = 5.0,
    what: str = "condition",
    interval_s: float = INTERVAL_S,
    ignore: Ignored = (),
) -> T:
    deadline = time.monotonic() + timeout_s
    while True:
        last: object
        try:
            value = check()
        except ignore as exc:
            last = exc
        else:
            if value:
                return value
            last = value
        if time.monotonic() >= deadline:
            raise AssertionError(_failure(what, timeout_s, last))
        time.sleep(interval_s)


def _failure(what: str, timeout_s: float, last: object) -> str:
    return f"{what} not reached within {timeout_s:g}s (last: {last!r})"

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
async def until(check: Callable[[], Awaitable[T]], *args: Any, **kw: Any) -> T: ...


@overload
async def until(check: Callable[[], T], *args: Any, **kw: Any) -> T: ...


async def until(check: Callable[[], Any], *args: Any, **kw: Any) -> Any:
    """`_Poll`'s arguments: timeout_s=5.0, what="condition", interval_s, ignore=()."""
    poll = _Poll(*args, **kw)
    while not await poll.done_async(check):  # noqa: ASYNC110 (polling is the point)
        await asyncio.sleep(poll.interval_s)
    return poll.value


def until_sync(check: Callable[[], T], *args: Any, **kw: Any) -> T:
    """The same without an event loop."""
    poll = _Poll(*args, **kw)
    while not poll.done(check):
        time.sleep(poll.interval_s)
    value: T = poll.value
    return value


class _Poll:
    """One wait: judges each try, keeps the truthy value, fails the test past the deadline."""

    def __init__(
        self,
        timeout_s: float = 5.0,
        what: str = "condition",
        interval_s: float = INTERVAL_S,
        ignore: Ignored = (),
    ) -> None:
        self._deadline = time.monotonic() + timeout_s
        self._timeout_s = timeout_s
        self._what = what
        self.interval_s = interval_s
        self._ignore = ignore
        self.value: Any = None

    def done(self, check: Callable[[], Any]) -> bool:
        try:
            return self._judge(check())
        except self._ignore as exc:
            return self._judge(None, exc)

    async def done_async(self, check: Callable[[], Any]) -> bool:
        try:
            value = check()
            return self._judge(await value if inspect.isawaitable(value) else value)
        except self._ignore as exc:
            return self._judge(None, exc)

    def _judge(self, value: Any, error: BaseException | None = None) -> bool:
        if error is None and value:
            self.value = value
            return True
        if time.monotonic() >= self._deadline:
            last = value if error is None else error
            raise AssertionError(
                f"{self._what} not reached within {self._timeout_s:g}s (last: {last!r})"
            )
        return False

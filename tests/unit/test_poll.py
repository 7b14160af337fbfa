"""The suite's poll-until helper: what it returns, when it fails, which errors it waits out."""

from __future__ import annotations

import pytest

from tests.poll import until, until_sync


async def test_returns_the_first_truthy_value_of_a_plain_or_async_check() -> None:
    calls: list[int] = []

    def third_time() -> int:
        calls.append(1)
        return len(calls) if len(calls) >= 3 else 0

    async def at_once() -> str:
        return "yes"

    assert await until(third_time, interval_s=0) == 3
    assert await until(at_once) == "yes"
    assert until_sync(lambda: [1]) == [1]


async def test_fails_past_the_timeout_saying_what_and_the_last_value() -> None:
    with pytest.raises(AssertionError, match=r"^the thing not reached within 0.05s \(last: 0\)$"):
        await until(lambda: 0, timeout_s=0.05, what="the thing")
    with pytest.raises(AssertionError, match=r"^the thing not reached within 0.05s \(last: ''\)$"):
        until_sync(lambda: "", timeout_s=0.05, what="the thing")


async def test_ignored_errors_mean_not_yet_and_others_end_the_wait_at_once() -> None:
    attempts: list[int] = []

    def listening_on_the_third_try() -> bool:
        attempts.append(1)
        if len(attempts) < 3:
            raise ConnectionRefusedError("not listening yet")
        return True

    assert until_sync(listening_on_the_third_try, interval_s=0, ignore=OSError)

    def refused() -> bool:
        raise ConnectionRefusedError("not listening yet")

    with pytest.raises(AssertionError, match="not listening yet"):  # the last error, reported
        await until(refused, timeout_s=0.05, ignore=OSError)
    with pytest.raises(ConnectionRefusedError):  # not ignored: raised at once
        await until(refused, timeout_s=60, ignore=KeyError)
    with pytest.raises(ConnectionRefusedError):
        until_sync(refused, timeout_s=60, ignore=(KeyError, ValueError))

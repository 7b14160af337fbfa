"""The access log: the same line `logging` would write, in batches, in order with other lines."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import re
from collections.abc import Iterator

import pytest

from gateway import logs
from gateway.logs import AccessLog
from tests.poll import until

LINE = re.compile(
    r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO \[\d+\] gateway\.access: req_1 POST /v1 200$"
)


@contextlib.contextmanager
def configured() -> Iterator[io.StringIO]:
    """Logging as `logs.setup()` configures it, into a string. Inside the test's body: pytest
    adds its own capture handlers to the root logger around each test."""
    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    out = io.StringIO()
    handler = logs._Handler(out)
    handler.setFormatter(logging.Formatter(logs.FORMAT.format(pid=1)))
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    try:
        yield out
    finally:
        root.handlers[:] = saved
        root.setLevel(level)


async def test_lines_are_written_in_batches_within_the_flush_interval() -> None:
    with configured() as stream:
        log = AccessLog()
        log.write("req_1 POST /v1 200")
        log.write("req_1 POST /v1 200")
        assert stream.getvalue() == ""  # not yet: one write for the batch
        written = await until(stream.getvalue, AccessLog.FLUSH_S + 0.1, "the flush")
        lines = written.splitlines()
    assert len(lines) == 2 and all(LINE.match(line) for line in lines), lines


async def test_other_records_flush_pending_lines_first() -> None:
    with configured() as stream:
        log = AccessLog()
        log.open()  # as the app's lifespan does
        log.write("req_1 POST /v1 200")
        assert stream.getvalue() == ""
        logging.getLogger("gateway.test").warning("after")
        lines = stream.getvalue().splitlines()
        log.close()
    assert LINE.match(lines[0]) and lines[1].endswith("WARNING [1] gateway.test: after"), lines


def test_without_the_gateways_logging_setup_lines_go_through_logging(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.access")
    AccessLog().write("req_1 POST /v1 200")
    assert [r.getMessage() for r in caplog.records] == ["req_1 POST /v1 200"]


def test_a_level_above_info_silences_it() -> None:
    with configured() as stream:
        logging.getLogger().setLevel(logging.WARNING)
        log = AccessLog()
        log.write("req_1 POST /v1 200")
        log.flush()
        assert stream.getvalue() == ""


def test_a_flush_due_on_a_loop_that_ended_is_scheduled_again() -> None:
    log = AccessLog()

    async def write() -> None:
        log.write("req_1 POST /v1 200")

    async def write_and_wait(stream: io.StringIO) -> None:
        log.write("req_1 POST /v1 200")
        await until(lambda: stream.getvalue().count("\n") >= 2, AccessLog.FLUSH_S + 0.1, "both")

    with configured() as stream:
        asyncio.run(write())  # the loop ends before its flush is due
        asyncio.run(write_and_wait(stream))  # a new loop: the next line schedules one
        lines = stream.getvalue().splitlines()
    assert len(lines) == 2 and all(LINE.match(line) for line in lines), lines

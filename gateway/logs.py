"""How log lines look: one format for every process, workers included (they are spawned fresh
and configure themselves through `setup()` from the app factory). Nothing happens at import:
`setup()` is called by the command line (or the worker factory), and the app opens its
`AccessLog` in its lifespan and closes (flushes) it there.

The access log writes one line per request, so it skips the logging module's machinery on the
hot path (a record, a formatter, a write and a flush per line: 9% of a plain request's CPU,
measured): `AccessLog` formats the line itself, in the same format, and writes lines in batches
at most `AccessLog.FLUSH_S` apart, as nginx's `access_log ... buffer= flush=` does. Any other log
record first flushes what is pending, so lines stay in order. When logging was configured by
someone else (an embedding app, a test harness), access lines go through `logging` as usual.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import TextIO

LEVEL_ENV = "GATEWAY_LOG_LEVEL"
FORMAT = "%(asctime)s %(levelname)s [{pid}] %(name)s: %(message)s"
ACCESS_LOGGER = "gateway.access"
AUDIT_LOGGER = "gateway.audit"  # admin changes: written at any --log-level


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """The root handler `setup()` installs: other records flush pending access lines first."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self.before_emit: list[Callable[[], None]] = []  # the open access logs' flushes

    def emit(self, record: logging.LogRecord) -> None:
        for flush in self.before_emit:
            flush()
        super().emit(record)


def setup(level: str | None = None) -> None:
    """The root handler and level, once per process (`serve` passes the level on to workers
    in $GATEWAY_LOG_LEVEL)."""
    level = (level or os.environ.get(LEVEL_ENV) or "info").upper()
    root = logging.getLogger()
    if not root.handlers:
        handler = _Handler(sys.stderr)
        handler.setFormatter(logging.Formatter(FORMAT.format(pid=os.getpid())))
        root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger(AUDIT_LOGGER).setLevel(logging.INFO)


class AccessLog:
    """One line per request: `write(message)`, the same line `logging` would have written."""

    FLUSH_S = 0.2
    MAX_LINES = 256

    def __init__(self) -> None:
        self.logger = logging.getLogger(ACCESS_LOGGER)
        self._lines: list[str] = []
        self._second = -1
        self._stamp = ""
        self._prefix = f" INFO [{os.getpid()}] {ACCESS_LOGGER}: "
        self._lock = threading.Lock()  # other threads' log records flush too (`_Handler`)
        self._timer_loop: asyncio.AbstractEventLoop | None = None  # where a flush is due
        self._handler: _Handler | None = None

    def open(self) -> None:
        """From the app's lifespan: other log records flush pending lines first."""
        root = logging.getLogger()
        for handler in root.handlers:
            if isinstance(handler, _Handler):
                handler.before_emit.append(self.flush)
                self._handler = handler
                break

    def close(self) -> None:
        """From the app's lifespan: write what is pending; nothing is held after this."""
        if self._handler is not None:
            with contextlib.suppress(ValueError):
                self._handler.before_emit.remove(self.flush)
            self._handler = None
        self.flush()

    def _direct(self) -> logging.StreamHandler | None:  # type: ignore[type-arg]
        """The handler to write through when `setup()` configured logging and nobody changed
        it since."""
        root = logging.getLogger()
        log = self.logger
        if (
            len(root.handlers) == 1
            and type(root.handlers[0]) is _Handler
            and not log.handlers
            and log.propagate
            and not log.filters
        ):
            return root.handlers[0]
        return None

    def write(self, message: str) -> None:
        if not self.logger.isEnabledFor(logging.INFO):
            return
        if self._direct() is None:
            self.flush()
            self.logger.info("%s", message)
            return
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
        msecs = int((now - second) * 1000)
        with self._lock:
            self._lines.append(f"{self._stamp},{msecs:03d}{self._prefix}{message}\n")
            pending = len(self._lines)
        if pending >= self.MAX_LINES:
            self.flush()
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop: nothing would flush later
            self.flush()
            return
        if self._timer_loop is not loop:  # none scheduled, or on a loop that is gone
            self._timer_loop = loop
            loop.call_later(self.FLUSH_S, self.flush)

    def flush(self) -> None:
        with self._lock:
            self._timer_loop = None
            if not self._lines:
                return
            lines, self._lines = self._lines, []
        handler = self._direct()
        if handler is None:  # logging was reconfigured meanwhile
            for line in lines:
                self.logger.info("%s", line.split(self._prefix, 1)[-1].rstrip("\n"))
            return
        with handler.lock or contextlib.nullcontext():
            try:
                handler.stream.write("".join(lines))
                handler.stream.flush()
            except (OSError, ValueError):  # a closed stderr must not break requests
                pass

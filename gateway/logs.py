"""How log lines look: one format for every process, workers included (they are spawned fresh
and configure themselves through `setup()` from the app factory)."""

from __future__ import annotations

import logging
import os
import sys

LEVEL_ENV = "GATEWAY_LOG_LEVEL"
FORMAT = "%(asctime)s %(levelname)s [{pid}] %(name)s: %(message)s"


def setup(level: str | None = None) -> None:
    level = (level or os.environ.get(LEVEL_ENV) or "info").upper()
    os.environ[LEVEL_ENV] = level  # inherited by worker processes
    # One access-log line per request makes log records a hot path. Skip what no line shows: the
    # caller's frame, thread and process lookups (the pid is written into the format instead;
    # each worker calls this itself). See "Optimization" in the logging HOWTO.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    root = logging.getLogger()
    if not root.handlers:
        fmt = FORMAT.format(pid=os.getpid())
        logging.basicConfig(level=level, format=fmt, stream=sys.stderr)
    root.setLevel(level)

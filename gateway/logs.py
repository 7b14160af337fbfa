"""How log lines look: one format for every process, workers included (they are spawned fresh
and configure themselves through `setup()` from the app factory)."""

from __future__ import annotations

import logging
import os
import sys

LEVEL_ENV = "GATEWAY_LOG_LEVEL"
FORMAT = "%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"


def setup(level: str | None = None) -> None:
    level = (level or os.environ.get(LEVEL_ENV) or "info").upper()
    os.environ[LEVEL_ENV] = level  # inherited by worker processes
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=level, format=FORMAT, stream=sys.stderr)
    root.setLevel(level)

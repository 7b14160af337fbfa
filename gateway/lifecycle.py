"""Process life: draining on SIGTERM, and reloading the config on SIGHUP or when it changes.

SIGTERM does not stop the server at once. The gateway turns unready (`/readyz` 503), answers new
requests with 503 (so a load balancer or client retries elsewhere), lets the requests and
streams in flight finish within `server.shutdown_grace_s`, and only then lets uvicorn exit; the
limiter slots are released as each request ends. A second SIGTERM, or SIGINT, exits at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import FrameType

import uvicorn

from gateway.config import ConfigError, load_settings
from gateway.runtime import Runtime

logger = logging.getLogger(__name__)

PROBE_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


class Lifecycle:
    """Shared by the server and the app: whether we drain, and how many requests are open."""

    def __init__(self) -> None:
        self.draining = False
        # Called when the grace period ends with requests in flight; each returns how many
        # streams it ended with an error event (the proxy's cut_streams).
        self.on_grace_over: list[Callable[[], int]] = []
        self.active = 0  # requests in progress, probes excluded
        self.idle = asyncio.Event()  # set whenever no request is in progress
        self.idle.set()

    def enter(self) -> None:
        self.active += 1
        self.idle.clear()

    def leave(self) -> None:
        self.active -= 1
        if self.active == 0:
            self.idle.set()


class GracefulServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, lifecycle: Lifecycle, grace_s: float) -> None:
        super().__init__(config)
        self.lifecycle = lifecycle
        self.grace_s = grace_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drainer: asyncio.Task[None] | None = None

    async def serve(self, sockets: list[object] | None = None) -> None:  # type: ignore[override]
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)  # type: ignore[arg-type]

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig == signal.SIGTERM and not self.lifecycle.draining and self._loop is not None:
            self.lifecycle.draining = True
            logger.info(
                "SIGTERM: draining (%d request(s) in flight, grace %.0fs)",
                self.lifecycle.active,
                self.grace_s,
            )
            self._loop.call_soon_threadsafe(self._start_drain, sig, frame)
            return
        super().handle_exit(sig, frame)

    def _start_drain(self, sig: int, frame: FrameType | None) -> None:
        self._drainer = asyncio.ensure_future(self._drain(sig, frame))

    async def _drain(self, sig: int, frame: FrameType | None) -> None:
        try:
            async with asyncio.timeout(self.grace_s):
                await self.lifecycle.idle.wait()
        except TimeoutError:
            pass
        if self.lifecycle.active:
            cut = sum(hook() for hook in self.lifecycle.on_grace_over)
            logger.warning(
                "grace period over: %d request(s) cut (%d stream(s) ended with an error event)",
                self.lifecycle.active,
                cut,
            )
        else:
            logger.info("drained: every request finished")
        super().handle_exit(sig, frame)


def _fingerprint(paths: tuple[str, ...]) -> tuple[tuple[str, bytes | None], ...]:
    """Each file's SHA-256, None if it cannot be read. A change is a change of the bytes, whatever
    the mtime says: a copy that keeps it (`cp -p`, a restore), a clock step, or two writes
    within one tick of a coarse mtime must not leave a revoked key valid."""
    digests: list[tuple[str, bytes | None]] = []
    for path in paths:
        try:
            digests.append((path, hashlib.sha256(Path(path).read_bytes()).digest()))
        except OSError:
            digests.append((path, None))
    return tuple(digests)


async def watch_config(runtime: Runtime, poll_s: float, wake: asyncio.Event) -> None:
    """Reload when the content of the config file or of a keys file changes (checked every
    poll_s), or on `wake` (set by SIGHUP). A reload that failed is tried again at every poll
    until one succeeds (it may wait on a keys file not yet written, or one not watched yet), its
    failure logged once, not per poll. A poll reads and hashes each file, off the event loop."""
    seen = await asyncio.to_thread(_fingerprint, runtime.settings.files)
    failed: str | None = None  # what the last reload's failure said, until one succeeds
    while True:
        try:
            async with asyncio.timeout(poll_s if poll_s > 0 else None):
                await wake.wait()
        except TimeoutError:
            pass
        forced = wake.is_set()
        wake.clear()
        files = runtime.settings.files
        now = await asyncio.to_thread(_fingerprint, files)
        if forced or now != seen or failed is not None:
            why = "SIGHUP" if forced else "file changed" if now != seen else "retrying"
            failed = await _reload(runtime, why, None if forced else failed)
            if runtime.settings.files != files:  # a reload that names other keys files
                now = await asyncio.to_thread(_fingerprint, runtime.settings.files)
            seen = now


async def _reload(runtime: Runtime, why: str, failed: str | None) -> str | None:
    """Read the config off the event loop and apply it; None once that succeeds, else what
    failed. A failure is logged once: a retry that fails as `failed` did says nothing."""
    if failed is None:  # a retry logs only what it changes: its success, or a new failure
        logger.info("config %s: reloading", why)
    try:
        runtime.apply(await asyncio.to_thread(load_settings, runtime.settings.source))
    except ConfigError as exc:
        problem = "; ".join(exc.problems)
        if problem != failed:
            logger.error("config reload refused, the running config stays in force: %s", problem)
        return problem
    except Exception as exc:  # a bug must not end live reloads for the life of the process
        failure = f"{type(exc).__name__}: {exc}"
        if failure != failed:
            logger.exception("config reload failed; the running config stays in force")
        return failure
    return None


@contextlib.asynccontextmanager
async def reloading(runtime: Runtime) -> AsyncIterator[None]:
    """While the app runs: reload on SIGHUP, and on file changes when it has config files.
    The signal handler and the watcher go away with the app."""
    wake = asyncio.Event()
    loop = asyncio.get_running_loop()
    try:
        loop.add_signal_handler(signal.SIGHUP, wake.set)
        handled = True
    except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, or no signals
        handled = False
    watcher = None
    if runtime.settings.files:
        poll_s = runtime.settings.server.reload_poll_s
        watcher = asyncio.create_task(watch_config(runtime, poll_s, wake), name="config-watch")
    try:
        yield
    finally:
        if watcher is not None:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
        if handled:
            loop.remove_signal_handler(signal.SIGHUP)

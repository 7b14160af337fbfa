"""The safety nets of a relayed stream, on one timer per stream (see `StreamWatch`)."""

from __future__ import annotations

import asyncio
import math

# A client that stops reading a stream without disconnecting (a suspended process, a stream
# left unclosed) would hold its slot for ever: past upstream's own silence limit plus this, it
# is treated as gone.
CLIENT_STALL_MARGIN_S = 5.0


class StreamWatch:
    """The two safety nets of a relayed stream, on one timer per stream.

    - upstream silent: no chunk for `read_timeout_s` while no send to the client waits: the
      relay ends with an error event;
    - client stalled: one send has waited `read_timeout_s + CLIENT_STALL_MARGIN_S`: the client
      is treated as gone.

    A check every `min(read_timeout_s, CLIENT_STALL_MARGIN_S) / 2` (2.5 s by default) compares
    counters the relay bumps, instead of timer handles re-armed around every chunk (ours, and
    aiohttp's `sock_read`: 7% of a stream's CPU, measured). Each fires at most two checks late.
    """

    UPSTREAM = "upstream"
    CLIENT = "client"
    SHUTDOWN = "shutdown"

    __slots__ = (
        "_handle",
        "_last",
        "_loop",
        "_patience",
        "_period",
        "_quiet",
        "_silence",
        "_stuck",
        "_task",
        "begun",
        "ended",
        "fired",
        "received",
    )

    def __init__(self, read_timeout_s: float) -> None:
        self.received = 0  # upstream chunks taken
        self.begun = self.ended = 0  # sends to the client started and finished
        self.fired: str | None = None
        self._period = min(read_timeout_s, CLIENT_STALL_MARGIN_S) / 2
        self._silence = math.ceil(read_timeout_s / self._period)  # quiet checks that are too many
        self._patience = math.ceil((read_timeout_s + CLIENT_STALL_MARGIN_S) / self._period)
        self._last = (-1, -1)  # (received, begun) at the last check
        self._quiet = 0  # checks in a row that saw nothing received and no send waiting
        self._stuck = 0  # checks in a row that saw the same send waiting
        self._loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        self._task = task
        self._handle = self._loop.call_later(self._period, self._check)

    def cut(self) -> None:
        """End the stream now, with an error event: the gateway is going away."""
        if self.fired is None:
            self.fired = self.SHUTDOWN
            self._handle.cancel()
            self._task.cancel()

    def _check(self) -> None:
        received, begun = self.received, self.begun
        if begun != self.ended:
            self._quiet = 0
            self._stuck = self._stuck + 1 if begun == self._last[1] else 0
            if self._stuck >= self._patience:
                self.fired = self.CLIENT
        else:
            self._stuck = 0
            self._quiet = self._quiet + 1 if received == self._last[0] else 0
            if self._quiet >= self._silence:
                self.fired = self.UPSTREAM
        if self.fired:
            self._task.cancel()
            return
        self._last = (received, begun)
        self._handle = self._loop.call_later(self._period, self._check)

    def close(self) -> None:
        self._handle.cancel()

"""The safety nets of a relayed stream, and its keep-alives, on one timer per stream (see
`StreamWatch`)."""

from __future__ import annotations

import asyncio
import math

# A client that stops reading a stream without disconnecting (a suspended process, a stream
# left unclosed) would hold its slot for ever: past upstream's own silence limit plus this, it
# is treated as gone.
CLIENT_STALL_MARGIN_S = 5.0


class StreamWatch:
    """The two safety nets of a relayed stream, and its keep-alives, on one timer per stream.

    - upstream silent: no chunk for `read_timeout_s` while no send to the client waits: the
      relay ends with an error event;
    - client stalled: one send has waited `read_timeout_s + CLIENT_STALL_MARGIN_S`: the client
      is treated as gone;
    - keep-alive due: no chunk for `keepalive_s` (and none since the last keep-alive) while no
      send waits: the relay sends an SSE comment and goes on. A keep-alive is not upstream data:
      it leaves the silence count alone, so a silent upstream is still cut at `read_timeout_s`.

    A check every `min(read_timeout_s, CLIENT_STALL_MARGIN_S, keepalive_s) / 2` (2.5 s by
    default) compares counters the relay bumps, instead of timer handles re-armed around every
    chunk (ours, and aiohttp's `sock_read`: 7% of a stream's CPU, measured). Each fires at most
    two checks late. Each firing cancels the relay's task, which is then waiting on upstream or
    on a send; the relay reads `fired` to know why (KEEPALIVE: it clears it and goes on).
    """

    UPSTREAM = "upstream"
    CLIENT = "client"
    SHUTDOWN = "shutdown"
    KEEPALIVE = "keepalive"

    __slots__ = (
        "_handle",
        "_idle",
        "_last",
        "_loop",
        "_patience",
        "_period",
        "_quiet",
        "_silence",
        "_stuck",
        "_task",
        "_warm",
        "begun",
        "ended",
        "fired",
        "received",
    )

    def __init__(self, read_timeout_s: float, keepalive_s: float, quiet_s: float = 0.0) -> None:
        """`quiet_s`: how long upstream has already been silent (before the first chunk)."""
        self.received = 0  # upstream chunks taken
        self.begun = self.ended = 0  # sends to the client started and finished
        self.fired: str | None = None
        self._period = min(read_timeout_s, CLIENT_STALL_MARGIN_S, keepalive_s) / 2
        self._silence = math.ceil(read_timeout_s / self._period)  # quiet checks that are too many
        self._patience = math.ceil((read_timeout_s + CLIENT_STALL_MARGIN_S) / self._period)
        self._warm = math.ceil(keepalive_s / self._period)  # quiet checks between keep-alives
        self._last = (0, -1)  # (received, begun) at the last check
        self._quiet = int(quiet_s / self._period)  # checks in a row: nothing received, no send
        self._idle = 0  # the same, since the last keep-alive
        self._stuck = 0  # checks in a row that saw the same send waiting
        self._loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        self._task = task
        self._handle = self._loop.call_later(self._period, self._check)

    def cut(self) -> None:
        """End the stream now, with an error event: the gateway is going away."""
        if self.fired in (None, self.KEEPALIVE):
            if self.fired is None:  # else the keep-alive's cancellation is still on its way
                self._task.cancel()
            self.fired = self.SHUTDOWN
            self._handle.cancel()

    def _check(self) -> None:
        self._handle = self._loop.call_later(self._period, self._check)
        if self.fired is not None:  # a keep-alive the relay has not taken yet
            return
        received, begun = self.received, self.begun
        if begun != self.ended:
            self._quiet = self._idle = 0
            self._stuck = self._stuck + 1 if begun == self._last[1] else 0
            if self._stuck >= self._patience:
                self.fired = self.CLIENT
        else:
            self._stuck = 0
            still = received == self._last[0]
            self._quiet = self._quiet + 1 if still else 0
            self._idle = self._idle + 1 if still else 0
            if self._quiet >= self._silence:
                self.fired = self.UPSTREAM
            elif self._idle >= self._warm:
                self.fired = self.KEEPALIVE
                self._idle = 0
        self._last = (received, begun)
        if self.fired is not None:
            if self.fired != self.KEEPALIVE:
                self._handle.cancel()
            self._task.cancel()

    def close(self) -> None:
        self._handle.cancel()

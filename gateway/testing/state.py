"""What one fake upstream remembers: queued faults, recorded requests, in-flight counts, stats,
the prompt prefix cache.

One ``FakeState`` per app, reached through ``request.app[STATE]``. ``POST /_fake/reset`` clears
faults, records, highest-in-flight figures, counts and the prefix cache; what is in flight
belongs to requests still being answered, and completion ids keep counting.
"""

from __future__ import annotations

import asyncio
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any, Final

from aiohttp import web

from gateway.testing.faults import Fault
from gateway.testing.prefix_cache import PrefixCache
from gateway.testing.settings import FakeSettings

RECORD_LIMIT: Final = 2000
COUNTS: Final = ("requests", "completed", "rejected_429", "disconnects")


@dataclass
class FakeState:
    """Everything the fake remembers; one per app, reached through ``STATE``."""

    settings: FakeSettings
    faults: deque[Fault] = field(default_factory=deque)
    records: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=RECORD_LIMIT))
    inflight: Counter[str] = field(default_factory=Counter)
    inflight_project: Counter[str] = field(default_factory=Counter)
    max_inflight: dict[str, int] = field(default_factory=dict)
    max_inflight_project: dict[str, int] = field(default_factory=dict)
    counts: Counter[str] = field(default_factory=Counter)  # the COUNTS, for stats
    last_id: int = 0
    closing: asyncio.Event = field(default_factory=asyncio.Event)
    prefix_cache: PrefixCache = field(default_factory=PrefixCache)

    def admit(self, key: str, project: str) -> bool:
        s = self.settings
        limit_project = s.project_concurrency
        if self.inflight[key] >= s.concurrency or (
            limit_project is not None and self.inflight_project[project] >= limit_project
        ):
            return False
        self.inflight[key] += 1
        self.inflight_project[project] += 1
        self.max_inflight[key] = max(self.max_inflight.get(key, 0), self.inflight[key])
        self.max_inflight_project[project] = max(
            self.max_inflight_project.get(project, 0), self.inflight_project[project]
        )
        return True

    def release(self, key: str, project: str) -> None:
        self.inflight[key] -= 1
        self.inflight_project[project] -= 1

    def next_fault(self) -> Fault | None:
        if not self.faults:
            return None
        head = self.faults[0]
        head.remaining -= 1
        if head.remaining <= 0:
            self.faults.popleft()
        return head

    def pending(self) -> int:
        return sum(f.remaining for f in self.faults)

    def reset(self) -> None:
        self.faults.clear()
        self.records.clear()
        self.max_inflight.clear()
        self.max_inflight_project.clear()
        self.counts.clear()
        self.prefix_cache.clear()


STATE: Final = web.AppKey("fake_upstream_state", FakeState)

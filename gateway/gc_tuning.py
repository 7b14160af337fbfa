"""The cyclic garbage collector, tuned for a long-running server while the app runs, and put
back as it was when the app stops (`tuned()`, entered by the lifespan).

p99 spikes come from the collector walking every object the app made at start-up (measured:
19 ms -> 3.4 ms p99 at 16 connections): those are frozen out of its reach, and the young
generation is collected less often, since a request makes few cycles. With such thresholds full
collections are rare, and aiohttp leaves a reference cycle behind each upstream connection that
closes (measured: RSS +2.4 MiB over a million requests, all of it collectable): a full
collection once a minute keeps that flat; with the start-up objects frozen it takes about 5 ms.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator

GEN0_THRESHOLD = 50_000
SWEEP_S = 60.0


@contextlib.asynccontextmanager
async def tuned() -> AsyncIterator[None]:
    before = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(GEN0_THRESHOLD, before[1], before[2])
    sweeper = asyncio.create_task(_sweep(), name="gc-sweep")
    try:
        yield
    finally:
        sweeper.cancel()
        await asyncio.gather(sweeper, return_exceptions=True)
        gc.set_threshold(*before)
        gc.unfreeze()


async def _sweep() -> None:
    while True:
        await asyncio.sleep(SWEEP_S)
        gc.collect()

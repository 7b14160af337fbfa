"""The control API under ``/_fake/``: queue faults, read stats and records, reset.

No authentication: it is for the tests and for local use, never exposed. ``stats.requests``
counts every chat request, authenticated or not; ``records`` hold those past authentication,
each with its lower-cased ``headers``, its parsed ``body`` as sent (``cache_salt`` included) and
its ``status`` (0 when no response was sent).
"""

from __future__ import annotations

import json

from aiohttp import web

from gateway.testing.errors import error
from gateway.testing.faults import parse_fault
from gateway.testing.state import COUNTS, STATE


async def add_faults(request: web.Request) -> web.StreamResponse:
    """``POST /_fake/faults``: queue ``{"faults": [...]}``; answers how many are pending."""
    state = request.app[STATE]
    try:
        body = json.loads(await request.read())
        specs = body.get("faults") if isinstance(body, dict) else None
        if not isinstance(specs, list):
            raise ValueError('expected {"faults": [{"kind": ..., "count": 1, ...}]}')
        faults = [parse_fault(spec) for spec in specs]
    except ValueError as exc:
        return error(400, str(exc), "invalid_request_error", None, "faults")
    state.faults.extend(faults)
    return web.json_response({"queued": state.pending()})


async def stats(request: web.Request) -> web.StreamResponse:
    """``GET /_fake/stats``: in flight now and at most, counts, faults pending, cached prefixes."""
    s = request.app[STATE]
    return web.json_response(
        {
            "inflight": dict(s.inflight),
            "max_inflight": s.max_inflight,
            "max_inflight_project": s.max_inflight_project,
            **{name: s.counts[name] for name in COUNTS},
            "faults_pending": s.pending(),
            "prefix_cache_entries": len(s.prefix_cache),
        }
    )


async def requests(request: web.Request) -> web.StreamResponse:
    """``GET /_fake/requests``: the recorded chat requests, oldest first."""
    return web.json_response({"data": list(request.app[STATE].records)})


async def reset(request: web.Request) -> web.StreamResponse:
    """``POST /_fake/reset``: forget faults, records, stats and cached prefixes (``FakeState``)."""
    request.app[STATE].reset()
    return web.json_response({"reset": True})

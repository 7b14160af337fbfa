"""The recent-requests ring: bounded, newest first, per tenant, its cost as charged, its error
counts over the window, and nothing in it that is a key, a prompt or an answer."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import pytest

from gateway import recent as recent_module
from gateway.config import Model, parse_settings
from gateway.cost import Usage, cost_usd
from gateway.exchange import Result
from gateway.recent import Finished, Recent
from gateway.record import RequestRecord
from tests.procs import LLAMA, base_config

SETTINGS = parse_settings(base_config("http://127.0.0.1:9"))
PRICE = SETTINGS.models[LLAMA]


def record(
    tenant: str = "search", request_id: str = "req_1", key_id: str = "key_a"
) -> RequestRecord:
    r = RequestRecord(request_id)
    r.authenticated(SETTINGS.tenants[tenant], SETTINGS, key_id)
    r.model = LLAMA
    return r


class _Call:
    """What `Recent.add` reads of a Call: whether it streamed and its price."""

    def __init__(self, stream: bool, price: Model | None) -> None:
        self.stream = stream
        self.price = price


def FakeCall(stream: bool = True, price: Model | None = PRICE) -> Any:
    return _Call(stream, price)


def ok(usage: Usage | None = None, **kw: Any) -> Result:
    return Result(200, elapsed_s=0.25, queue_s=0.01, attempts=1, usage=usage, **kw)


def test_the_ring_keeps_the_newest_entries_up_to_its_size() -> None:
    ring = Recent(size=3)
    for i in range(5):
        ring.add(record(request_id=f"req_{i}"), FakeCall(), ok())
    assert [e.request_id for e in ring.newest()] == ["req_4", "req_3", "req_2"]


def test_each_tenant_sees_only_its_own_and_find_takes_the_newest_of_an_id() -> None:
    ring = Recent()
    ring.add(record("search", "req_x"), FakeCall(), ok(Usage(1, 1)))
    ring.add(record("ads", "req_y"), FakeCall(), ok())
    ring.add(record("search", "req_x"), FakeCall(), ok(Usage(2, 2)))
    assert [e.tenant for e in ring.newest("search")] == ["search", "search"]
    assert [e.request_id for e in ring.newest("ads")] == ["req_y"]
    found = ring.find("search", "req_x")
    assert found is not None and found.result.usage == Usage(2, 2)
    assert ring.find("ads", "req_x") is None  # another tenant's id is not found
    assert ring.tenants() == {"search", "ads"}


def test_a_busy_tenant_never_pushes_a_quiet_ones_requests_out_of_its_view() -> None:
    ring = Recent(size=10, tenant_size=4)
    for i in range(3):
        ring.add(record("ads", f"quiet_{i}"), FakeCall(), ok())
    for i in range(50):
        ring.add(record("search", f"busy_{i}"), FakeCall(), ok())
    # Every tenant's list: the newest 10, all the busy tenant's.
    assert [e.request_id for e in ring.newest()][:2] == ["busy_49", "busy_48"]
    assert len(list(ring.newest())) == 10
    assert all(e.tenant == "search" for e in ring.newest())
    # The quiet tenant still sees (and finds) its own; the busy one its last 4.
    assert [e.request_id for e in ring.newest("ads")] == ["quiet_2", "quiet_1", "quiet_0"]
    assert ring.find("ads", "quiet_0") is not None
    assert [e.request_id for e in ring.newest("search")] == [f"busy_{i}" for i in (49, 48, 47, 46)]
    assert ring.find("search", "busy_45") is None
    assert list(ring.newest("nobody")) == [] and ring.tenants() == {"ads", "search"}


def test_the_cost_is_the_one_charged_or_worked_out_as_settle_does() -> None:
    ring = Recent()
    usage = Usage(1000, 500, cached_tokens=0)
    ring.add(record(request_id="a"), FakeCall(), ok(usage, charged=True, cost_usd=0.5))
    ring.add(record(request_id="b"), FakeCall(), ok(usage))
    ring.add(record(request_id="c"), FakeCall(price=None), ok(usage))
    ring.add(record(request_id="d"), FakeCall(), ok(None))
    costs = {e.request_id: e.as_json()["cost_usd"] for e in ring.newest()}
    assert costs == {"a": 0.5, "b": cost_usd(PRICE, usage), "c": None, "d": None}
    assert costs["b"] == pytest.approx(1500 * 0.22 / 1e6)


def test_an_entry_is_what_the_access_log_shows_and_nothing_more() -> None:
    ring = Recent()
    usage = Usage(12, 8, estimated=3)
    result = Result(
        502,
        "upstream_error",
        elapsed_s=1.2345,
        queue_s=0.0456,
        attempts=3,
        usage=usage,
        first_byte_s=0.5,
    )
    ring.add(record(), FakeCall(stream=True), result)
    entry = next(ring.newest()).as_json()
    at = entry.pop("finished_at")
    assert abs(at - time.time()) < 5
    assert entry == {
        "object": "gateway.request",
        "id": "req_1",
        "tenant": "search",
        "key_id": "key_a",
        "model": LLAMA,
        "stream": True,
        "status": 502,
        "reason": "upstream_error",
        "attempts": 3,
        "queue_ms": 46,
        "latency_ms": 1234,
        "first_byte_ms": 500,
        "prompt_tokens": 12,
        "completion_tokens": 8,
        "estimated_tokens": 3,
        "cost_usd": cost_usd(PRICE, usage),
    }
    # The entry holds no Call (its body, its headers with the account's W&B key): only these.
    assert [f.name for f in dataclasses.fields(Finished)] == [
        "at",
        "request_id",
        "tenant",
        "key_id",
        "model",
        "stream",
        "price",
        "result",
    ]


def test_a_request_never_understood_has_no_model_stream_or_tokens() -> None:
    ring = Recent()
    r = record()
    r.model = "-"
    ring.add(r, None, Result(400, "bad_request", 0.001))
    entry = next(ring.newest()).as_json()
    assert (entry["model"], entry["stream"], entry["prompt_tokens"], entry["cost_usd"]) == (
        "-",
        None,
        None,
        None,
    )


def test_errors_are_counted_by_tenant_and_reason_over_the_window() -> None:
    now = [1_000_000 * 60.0]
    ring = Recent(window_minutes=5, clock=lambda: now[0])
    fail = Result(429, "queue_timeout", 1.0)
    ring.add(record("search"), FakeCall(), fail)
    ring.add(record("search"), FakeCall(), Result(502, "upstream_error", 1.0))
    ring.add(record("search"), FakeCall(), fail)
    ring.add(record("ads"), FakeCall(), fail)
    ring.add(record("ads"), FakeCall(), ok())
    assert ring.errors() == {
        "search": {"queue_timeout": 2, "upstream_error": 1},
        "ads": {"queue_timeout": 1},
    }
    assert list(ring.errors()["search"]) == ["queue_timeout", "upstream_error"]  # most first
    assert ring.errors("ads") == {"ads": {"queue_timeout": 1}}
    now[0] += 4 * 60  # still within five one-minute buckets
    ring.add(record("ads"), FakeCall(), fail)
    assert ring.errors("ads") == {"ads": {"queue_timeout": 2}}
    now[0] += 60  # the first minute has left the window
    assert ring.errors() == {"ads": {"queue_timeout": 1}}
    ring.add(record("ads"), FakeCall(), fail)
    assert len(ring._errors) <= 5  # old buckets are dropped, not kept forever


def test_a_record_without_a_tenant_is_not_kept() -> None:
    ring = Recent()
    ring.add(RequestRecord("req_z"), None, Result(401, "invalid_api_key"))
    assert list(ring.newest()) == [] and ring.errors() == {}


def test_appending_keeps_both_rings_at_their_bounds() -> None:
    """No timing here (an add took 0.5 us measured in-process, against the 460 us of CPU a
    request costs in `make bench`): the rings never grow past their sizes, however many adds."""
    ring = Recent()
    r, call, result = record(), FakeCall(), ok(Usage(1, 1))
    for _ in range(recent_module.SIZE * 3):
        ring.add(r, call, result)
    assert len(list(ring.newest())) == recent_module.SIZE
    assert len(list(ring.newest("search"))) == recent_module.TENANT_SIZE

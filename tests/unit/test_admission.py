"""`Admission`: what a tenant may hold in one process, and that every ticket gives it all back."""

from __future__ import annotations

import pytest

from gateway.admission import Admission
from gateway.config import parse_settings
from gateway.errors import Overloaded, PayloadTooLarge, TenantQueueFull
from gateway.responses import content_length
from tests.procs import base_config

SETTINGS = parse_settings(base_config("http://upstream.invalid", tenants__ads__max_queue=2))
ADS, SEARCH, LIMITED = (SETTINGS.tenants[n] for n in ("ads", "search", "limited"))


def test_max_queue_counts_requests_until_their_tickets_close() -> None:
    admission = Admission(1000)
    first, second = admission.enter(ADS, None), admission.enter(ADS, 10)
    with pytest.raises(TenantQueueFull) as info:
        admission.enter(ADS, None)
    assert info.value.status == 429 and info.value.headers["retry-after"] == "1"
    assert "tenants.ads.max_queue" in info.value.message
    admission.enter(SEARCH, None).close()  # another tenant is not counted with it
    first.close()
    first.close()  # twice is once
    admission.enter(ADS, None).close()
    second.close()
    assert admission.requests("ads") == 0 and admission.held == 0


def test_a_tenant_holds_half_the_body_bytes_at_most_and_the_process_all() -> None:
    admission = Admission(1000)
    with admission.enter(ADS, 500):
        with pytest.raises(TenantQueueFull):
            admission.enter(ADS, 1)  # past its half: its own fault
        chunked = admission.enter(SEARCH, None)
        chunked.grow(400)
        with pytest.raises(Overloaded) as info:
            admission.enter(LIMITED, 101)  # past the whole: nobody's fault in particular
        assert info.value.status == 503 and info.value.code == "overloaded"
        with pytest.raises(TenantQueueFull):
            chunked.grow(101)
        chunked.close()
    assert admission.held == 0 and admission.requests("search") == 0
    assert admission.requests("limited") == 0  # a refused entry leaves nothing behind


def test_a_ticket_that_reserved_nothing_closes_cleanly() -> None:
    admission = Admission(1000)
    admission.enter(ADS, None).close()  # a chunked body refused at its first chunk
    assert admission.held == 0


def test_a_declared_length_past_the_body_limit_is_413_before_admission() -> None:
    with pytest.raises(PayloadTooLarge):
        content_length([(b"content-length", b"99999999999999999999")], 1000)
    assert content_length([(b"content-length", b"1000")], 1000) == 1000
    assert content_length([(b"transfer-encoding", b"chunked")], 1000) is None


def test_max_queue_defaults_to_the_tenants_slots_and_64_more() -> None:
    assert SETTINGS.tenants["search"].max_queue == SETTINGS.tenants["search"].max_concurrency + 64
    assert ADS.max_queue == 2  # as written

"""Spend as W&B bills it: every request that reached W&B is charged (the ways of leaving early),
cached and reasoning tokens priced to the exact figure, the cost header against /v1/usage,
the per-tenant cache salt, and past months."""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from gateway.chat_body import estimate_prompt_tokens
from gateway.cost import decimal
from tests.e2e.helpers import client, faults, prompt_tokens, seen
from tests.e2e.test_usage import metric, samples
from tests.poll import until_sync
from tests.procs import (
    ADS_KEY,
    LIMITED_KEY,
    LLAMA,
    PHI,
    SEARCH_KEY,
    Proc,
    base_config,
    start_gateway,
)

LLAMA_PRICE = 0.22  # in and out, per million tokens (base_config)
PHI_PRICES = (0.08, 0.02, 0.35)  # in, cached in, out
LONG = [{"role": "user", "content": "tokens " * 2000}]  # about 3,500 tokens, as estimated


def config(fake: Proc, **overrides: Any) -> dict[str, Any]:
    cfg = base_config(fake.url, upstream__sse_keepalive_s=0.3, **overrides)
    cfg["models"][PHI]["cached_input_usd_per_mtok"] = PHI_PRICES[1]
    return cfg


@pytest.fixture
def gw(fake: Proc) -> Iterator[Proc]:
    proc = start_gateway(config(fake, upstream__read_timeout_s=1.5))
    yield proc
    proc.stop()


def usage(gateway: Proc, key: str = SEARCH_KEY, **params: str) -> dict[str, Any]:
    r = httpx.get(
        gateway.url + "/v1/usage", params=params, headers={"Authorization": f"Bearer {key}"}
    )
    assert r.status_code == 200, r.text
    data: dict[str, Any] = r.json()
    return data


def chat(gateway: Proc, body: dict[str, Any], key: str = SEARCH_KEY, **kw: Any) -> httpx.Response:
    return httpx.post(
        gateway.url + "/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {key}"},
        **kw,
    )


# --- every request that reached W&B is charged ------------------------------------------------


def estimated_cost(messages: list[dict[str, Any]], completion: int = 0) -> float:
    return (estimate_prompt_tokens(messages) + completion) * LLAMA_PRICE / 1e6


def leave_early(gateway: Proc, body: dict[str, Any], read_first: bool = False) -> None:
    """Send the request and go away: after its first bytes, or before any."""
    url = gateway.url + "/v1/chat/completions"
    auth = {"Authorization": f"Bearer {SEARCH_KEY}"}
    with httpx.Client(timeout=httpx.Timeout(5.0, read=1.5)) as http:
        try:
            with http.stream("POST", url, json=body, headers=auth) as r:
                if read_first:
                    assert r.status_code == 200
                    next(r.iter_raw())  # the keep-alive comment: headers and a first byte
                    return
                r.read()
        except httpx.ReadTimeout:
            pass


def charged_at_least(gateway: Proc, usd: float) -> dict[str, Any]:
    return until_sync(
        lambda: (u := usage(gateway))["spend_usd"] >= usd - 1e-12 and u,
        what=f"a spend of at least ${usd}",
    )


@pytest.mark.parametrize(
    ("stream", "knobs", "read_first"),
    [
        (True, {"delay_s": 3}, False),  # client gone before the first byte
        (True, {"think_s": 3}, True),  # gone after the keep-alive, before any content
        (False, {"delay_s": 3}, False),  # a whole answer abandoned
    ],
    ids=["stream-before-first-byte", "stream-before-first-content", "non-stream-abandoned"],
)
def test_a_client_gone_early_is_charged_the_prompt(
    gw: Proc, fake: Proc, stream: bool, knobs: dict[str, Any], read_first: bool
) -> None:
    body = {"model": LLAMA, "messages": LONG, "stream": stream, "x_fake": knobs}
    leave_early(gw, body, read_first)
    got = charged_at_least(gw, estimated_cost(LONG))
    assert got["models"][LLAMA]["estimated_tokens"] >= estimate_prompt_tokens(LONG)
    assert len(seen(fake)) == 1  # W&B had it: that is what is billed
    s = samples(gw)
    assert metric(s, "gateway_estimated_tokens_total", model=LLAMA) >= estimate_prompt_tokens(LONG)


def test_a_stream_upstream_cut_is_charged_what_it_relayed(gw: Proc, fake: Proc) -> None:
    faults(fake, {"kind": "cut", "after": 2})
    chunks = []
    with pytest.raises(openai.APIError):  # the SDK reads the gateway's error event
        for chunk in client(gw).chat.completions.create(model=LLAMA, messages=LONG, stream=True):
            chunks.append(chunk)
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) == 2
    got = charged_at_least(gw, estimated_cost(LONG, completion=2))
    assert got["models"][LLAMA]["completion_tokens"] == 2


def test_an_upstream_silent_past_the_read_timeout_is_charged(gw: Proc, fake: Proc) -> None:
    r = chat(gw, {"model": LLAMA, "messages": LONG, "x_fake": {"delay_s": 3}}, timeout=10)
    assert r.status_code == 504
    charged_at_least(gw, estimated_cost(LONG))


def test_a_refused_or_unreached_request_is_not_charged(gw: Proc, fake: Proc) -> None:
    faults(fake, {"kind": "403"}, {"kind": "500", "count": 3})  # W&B's errors bill nothing
    assert chat(gw, {"model": LLAMA, "messages": LONG}).status_code == 502  # not the caller's
    assert chat(gw, {"model": LLAMA, "messages": LONG}).status_code == 502  # 3 attempts
    assert len(seen(fake)) == 4
    time.sleep(0.2)
    assert usage(gw)["spend_usd"] == 0


# --- cached and reasoning tokens, the cost header --------------------------------------------


def phi_cost(prompt: int, cached: int, completion: int) -> float:
    fresh, cached_price, out = PHI_PRICES
    return round(((prompt - cached) * fresh + cached * cached_price + completion * out) / 1e6, 10)


def test_cached_and_reasoning_tokens_are_priced_to_the_figure(gw: Proc) -> None:
    messages = [{"role": "user", "content": "price the cached part of this prompt"}]
    prompt = prompt_tokens(messages)
    r = chat(
        gw,
        {
            "model": PHI,
            "messages": messages,
            "x_fake": {"cached_tokens": 5, "reasoning_tokens": 3, "tokens": 4},
        },
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["usage"]["prompt_tokens_details"] == {"cached_tokens": 5}
    assert body["usage"]["completion_tokens_details"] == {"reasoning_tokens": 3}
    assert body["choices"][0]["message"]["reasoning"]  # passed through untouched
    first = phi_cost(prompt, 5, 7)
    assert r.headers["x-gateway-cost-usd"] == decimal(first)
    # the same in a stream, whose reasoning chunks reach the client as W&B sent them
    stream = client(gw).chat.completions.create(
        model=PHI,
        messages=messages,
        stream=True,
        extra_body={"x_fake": {"cached_tokens": 2, "reasoning_tokens": 3, "tokens": 4}},
    )
    reasoning = [getattr(c.choices[0].delta, "reasoning", None) for c in stream if c.choices]
    assert len([r for r in reasoning if r]) == 3
    second = phi_cost(prompt, 2, 7)
    got = until_sync(
        lambda: (u := usage(gw))["models"].get(PHI, {}).get("completion_tokens") == 14 and u,
        what="both requests counted",
    )
    assert got["models"][PHI] == {
        "prompt_tokens": 2 * prompt,
        "completion_tokens": 14,
        "cached_prompt_tokens": 7,
        "reasoning_tokens": 6,
        "estimated_tokens": 0,
        "spend_usd": pytest.approx(first + second, abs=1e-12),
    }
    s = samples(gw)
    labels = {"tenant": "search", "model": PHI}
    assert metric(s, "gateway_tokens_total", kind="cached_prompt", **labels) == 7
    assert metric(s, "gateway_tokens_total", kind="reasoning", **labels) == 6
    assert metric(s, "gateway_tokens_total", kind="prompt", **labels) == 2 * prompt
    assert metric(s, "gateway_spend_usd_total", **labels) == pytest.approx(first + second)


def test_the_cost_header_adds_up_to_the_usage(gw: Proc) -> None:
    total = 0.0
    for n in range(1, 6):
        messages = [{"role": "user", "content": "word " * n}]
        r = chat(gw, {"model": LLAMA, "messages": messages, "x_fake": {"tokens": n}})
        cost = r.headers["x-gateway-cost-usd"]
        assert "e" not in cost.lower() and float(cost) == pytest.approx(
            (prompt_tokens(messages) + n) * LLAMA_PRICE / 1e6, abs=1e-10
        )
        total += float(cost)
    assert usage(gw)["spend_usd"] == pytest.approx(total, abs=1e-12)


def test_an_unpriced_model_has_no_cost_header(fake: Proc) -> None:
    cfg = config(fake)
    del cfg["models"][PHI]["input_usd_per_mtok"]
    gateway = start_gateway(cfg)
    try:
        r = chat(gateway, {"model": PHI, "messages": LONG[:1]})
        assert r.status_code == 200 and "x-gateway-cost-usd" not in r.headers
    finally:
        gateway.stop()


# --- the cache salt --------------------------------------------------------------------------


def sent_salts(fake: Proc) -> list[object]:
    return [r["body"].get("cache_salt") for r in seen(fake)]


def test_each_tenant_gets_its_own_stable_cache_salt(gw: Proc, fake: Proc) -> None:
    body = {"model": LLAMA, "messages": [{"role": "user", "content": "a shared system prompt"}]}
    for key in (SEARCH_KEY, SEARCH_KEY, ADS_KEY):
        assert chat(gw, body, key).status_code == 200
    stream = {**body, "stream": True}
    assert chat(gw, stream, ADS_KEY).status_code == 200
    search, again, ads, ads_stream = sent_salts(fake)
    assert isinstance(search, str) and len(search) >= 32
    assert search == again and ads == ads_stream and search != ads
    assert "search" not in search and "ads" not in str(ads)
    # W&B's prompt cache is shared only within one salt: ads does not hit search's prefix
    probe = {"model": LLAMA, "messages": [{"role": "user", "content": "a secret prompt"}]}
    cached = [
        chat(gw, probe, key).json()["usage"].get("prompt_tokens_details", {})
        for key in (SEARCH_KEY, SEARCH_KEY, ADS_KEY)
    ]
    assert cached == [{}, {"cached_tokens": prompt_tokens(probe["messages"])}, {}]


def test_a_client_salt_is_kept_and_a_tenant_may_turn_the_salt_off(fake: Proc) -> None:
    gateway = start_gateway(config(fake, tenants__ads__cache_salt=False))
    try:
        messages = [{"role": "user", "content": "hi"}]
        own = {"model": LLAMA, "messages": messages, "cache_salt": "mine"}
        assert chat(gateway, own).status_code == 200
        assert chat(gateway, {"model": LLAMA, "messages": messages}, ADS_KEY).status_code == 200
        assert sent_salts(fake) == ["mine", None]
    finally:
        gateway.stop()


# --- months ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "month", ["2026-13", "26-01", "2026-1", "x" * 65, "2026-01-01", "２０２６-01"]
)
def test_a_bad_month_is_a_400(gw: Proc, month: str) -> None:
    r = httpx.get(
        gw.url + "/v1/usage",
        params={"month": month},
        headers={"Authorization": f"Bearer {SEARCH_KEY}"},
    )
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "month" and r.json()["error"]["type"]


def test_a_past_month_is_its_own_and_has_no_remaining_budget(fake: Proc) -> None:
    gateway = start_gateway(config(fake, tenants__ads__monthly_budget_usd=1.0))
    try:
        assert chat(gateway, {"model": LLAMA, "messages": LONG[:1]}, ADS_KEY).status_code == 200
        now = usage(gateway, ADS_KEY)
        assert now["spend_usd"] > 0 and now["remaining_usd"] == pytest.approx(
            1.0 - now["spend_usd"]
        )
        assert usage(gateway, ADS_KEY, month=now["month"]) == now  # asked by name: the same
        past = usage(gateway, ADS_KEY, month="2025-01")
        assert (past["month"], past["spend_usd"], past["models"]) == ("2025-01", 0, {})
        assert past["budget_usd"] == 1.0 and past["remaining_usd"] is None
    finally:
        gateway.stop()


# --- the budget is checked once the request holds its slot -------------------------------------


def test_a_request_queued_behind_the_one_that_spends_the_budget_is_refused(fake: Proc) -> None:
    """`limited` has one slot and a budget that one request spends: a second request sent while
    the first is in flight queues under the budget, but is checked again when it gets the slot,
    and is refused then, before W&B sees it."""
    messages = [{"role": "user", "content": "spend it all"}]
    cost = (prompt_tokens(messages) + 8) * LLAMA_PRICE / 1e6
    gateway = start_gateway(config(fake, tenants__limited__monthly_budget_usd=cost / 2))
    try:
        body = {"model": "gpt-4o-mini", "messages": messages, "x_fake": {"delay_s": 1.0}}
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            first = pool.submit(chat, gateway, body, LIMITED_KEY)
            until_sync(lambda: len(seen(fake)) == 1, what="the first request upstream")
            second = pool.submit(chat, gateway, body, LIMITED_KEY)
            answers = [first.result(timeout=10), second.result(timeout=10)]
        assert [r.status_code for r in answers] == [200, 429]
        assert answers[1].json()["error"]["code"] == "insufficient_quota"
        assert int(answers[1].headers["x-gateway-queue-ms"]) >= 50  # it did queue first
        assert len(seen(fake)) == 1
    finally:
        gateway.stop()

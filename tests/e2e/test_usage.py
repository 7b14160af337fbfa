"""Tokens, spend and errors in Prometheus and /v1/usage, to the exact figure; budgets; admin."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from gateway.keys import hash_key
from tests.e2e.helpers import USER, client, faults, prompt_tokens
from tests.poll import until_sync
from tests.procs import (
    ADS_KEY,
    LLAMA,
    LLAMA70,
    PHI,
    SEARCH_KEY,
    Proc,
    base_config,
    start_gateway,
)

ADMIN_KEY = "sk-gw-test-admin"
PRICES = {LLAMA: (0.22, 0.22), PHI: (0.08, 0.35)}


def samples(gateway: Proc) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = httpx.get(gateway.url + "/metrics").text
    out: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for name, labels, value in re.findall(r"^(\w+)\{(.*)\} (\S+)$", text, re.M):
        pairs = frozenset(re.findall(r'(\w+)="([^"]*)"', labels))
        out[(name, pairs)] = float(value)
    return out


def metric(
    s: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return s.get((name, frozenset(labels.items())), 0.0)


@pytest.fixture
def fresh(fake: Proc) -> Iterator[Proc]:
    """A gateway whose counters start at zero."""
    config = base_config(fake.url, server__admin_keys=[hash_key(ADMIN_KEY)])
    config["tenants"]["ads"]["monthly_budget_usd"] = 0.000004
    proc = start_gateway(config)
    yield proc
    proc.stop()


def test_exact_tokens_and_spend_after_a_mix(fresh: Proc, fake: Proc) -> None:
    c = client(fresh)
    long_user = [{"role": "user", "content": "count every token of this longer prompt please"}]
    expected: dict[str, list[int]] = {LLAMA: [0, 0], PHI: [0, 0], LLAMA70: [0, 0]}

    def add(model: str, prompt: int, completion: int) -> None:
        expected[model][0] += prompt
        expected[model][1] += completion

    # 1. plain, through an alias
    c.chat.completions.create(model="gpt-4o-mini", messages=USER)
    add(LLAMA, prompt_tokens(USER), 8)
    # 2. stream without include_usage: the gateway asks for it, the client does not see it
    chunks: list[Any] = list(
        c.chat.completions.create(model=LLAMA, messages=long_user, stream=True)
    )
    assert all(ch.usage is None for ch in chunks) and all(ch.choices for ch in chunks)
    add(LLAMA, prompt_tokens(long_user), 8)
    # 3. stream with include_usage
    chunks = list(
        c.chat.completions.create(
            model=PHI, messages=USER, stream=True, stream_options={"include_usage": True}
        )
    )
    assert chunks[-1].usage is not None
    add(PHI, prompt_tokens(USER), 8)
    # 4. retried once, counted once
    faults(fake, {"kind": "500"})
    c.chat.completions.create(model=PHI, messages=USER, max_tokens=3)
    add(PHI, prompt_tokens(USER), 3)
    # 5. failed: no tokens
    faults(fake, {"kind": "quota"})
    with pytest.raises(openai.RateLimitError):
        c.chat.completions.create(model=LLAMA, messages=USER)
    # 6. cut after 3 words: estimated, 3 completion tokens and ceil(chars / 4) prompt tokens
    faults(fake, {"kind": "cut", "after": 3})
    with pytest.raises(openai.APIError):
        list(c.chat.completions.create(model=LLAMA, messages=long_user, stream=True))
    estimated_prompt = math.ceil(len(long_user[0]["content"]) / 4)
    add(LLAMA, estimated_prompt, 3)
    # 7. a model upstream offers but the config has no price for
    c.chat.completions.create(model=LLAMA70, messages=USER, n=2)
    add(LLAMA70, prompt_tokens(USER), 16)

    s = samples(fresh)
    for model, (prompt, completion) in expected.items():
        label = model if model in PRICES else "other"
        assert (
            metric(s, "gateway_tokens_total", tenant="search", model=label, kind="prompt") == prompt
        )
        assert (
            metric(s, "gateway_tokens_total", tenant="search", model=label, kind="completion")
            == completion
        )
    for model, (inp, outp) in PRICES.items():
        prompt, completion = expected[model]
        usd = (prompt * inp + completion * outp) / 1e6
        assert metric(s, "gateway_spend_usd_total", tenant="search", model=model) == pytest.approx(
            usd, rel=1e-9
        )
    assert metric(s, "gateway_unpriced_tokens_total", model="other") == sum(expected[LLAMA70])
    assert metric(s, "gateway_estimated_tokens_total", model=LLAMA) == estimated_prompt + 3
    assert metric(s, "gateway_requests_total", tenant="search", model=LLAMA, status="200") == 3
    assert metric(s, "gateway_requests_total", tenant="search", model=LLAMA, status="429") == 1
    assert (
        metric(s, "gateway_errors_total", tenant="search", model=LLAMA, reason="upstream_quota")
        == 1
    )
    assert metric(s, "gateway_errors_total", tenant="search", model=LLAMA, reason="stream_cut") == 1
    assert (
        metric(s, "gateway_upstream_requests_total", account="main", model=PHI, status="500") == 1
    )
    assert (
        metric(s, "gateway_upstream_requests_total", account="main", model=PHI, status="200") == 2
    )
    assert metric(s, "gateway_retries_total", model=PHI, reason="upstream_5xx") == 1
    assert metric(s, "gateway_time_to_first_token_seconds_count", model=LLAMA) == 2

    usage = httpx.get(fresh.url + "/v1/usage", headers={"Authorization": f"Bearer {SEARCH_KEY}"})
    body = usage.json()
    assert body["tenant"] == "search" and body["budget_usd"] is None
    for model in PRICES:
        row = body["models"][model]
        assert [row["prompt_tokens"], row["completion_tokens"]] == expected[model]
        assert row["spend_usd"] == pytest.approx(
            metric(s, "gateway_spend_usd_total", tenant="search", model=model), rel=1e-9
        )
    assert body["models"]["other"]["spend_usd"] == 0
    assert body["concurrency"] == {"limit": 4, "inflight": 0, "queued": 0}


def test_client_without_include_usage_sees_what_upstream_would_send(
    fresh: Proc, fake: Proc
) -> None:
    request = {"model": LLAMA, "messages": USER, "stream": True}

    def normalise(text: str) -> str:
        return re.sub(r'"(id|created)":\s*("[^"]*"|\d+)', "", text)

    direct = httpx.post(
        fake.url + "/v1/chat/completions",
        json=request,
        headers={"Authorization": "Bearer wandb-test-key-0123456789", "OpenAI-Project": "a/b"},
    ).text
    via = httpx.post(
        fresh.url + "/v1/chat/completions",
        json=request,
        headers={"Authorization": f"Bearer {SEARCH_KEY}"},
    ).text
    assert "usage" not in via
    assert normalise(via) == normalise(direct)


def test_budget_cuts_off_before_upstream(fresh: Proc, fake: Proc) -> None:
    c = client(fresh, key=ADS_KEY)
    c.chat.completions.create(model=LLAMA, messages=USER)  # 13 tokens = $0.00000286: under
    c.chat.completions.create(model=LLAMA, messages=USER)  # admitted under, finishes over
    before = httpx.get(fake.url + "/_fake/stats").json()["requests"]
    resp = httpx.post(
        fresh.url + "/v1/chat/completions",
        json={"model": LLAMA, "messages": USER},
        headers={"Authorization": f"Bearer {ADS_KEY}"},
    )
    assert resp.status_code == 429
    error = resp.json()["error"]
    assert (error["type"], error["code"]) == ("insufficient_quota", "insufficient_quota")
    assert "monthly budget of $0.00" in error["message"]
    assert resp.headers["x-should-retry"] == "false"
    assert httpx.get(fake.url + "/_fake/stats").json()["requests"] == before
    s = samples(fresh)
    assert (
        metric(s, "gateway_errors_total", tenant="ads", model=LLAMA, reason="budget_exceeded") == 1
    )
    assert metric(s, "gateway_tenant_budget_usd", tenant="ads") == 0.000004
    spent = 2 * (prompt_tokens(USER) + 8) * 0.22 / 1e6
    assert metric(s, "gateway_tenant_month_spend_usd", tenant="ads") == pytest.approx(spent)
    usage = httpx.get(fresh.url + "/v1/usage", headers={"Authorization": f"Bearer {ADS_KEY}"})
    assert usage.json()["remaining_usd"] == 0
    assert usage.json()["budget_usd"] == 0.000004
    client(fresh).chat.completions.create(model=LLAMA, messages=USER)  # others unaffected


def test_admin_usage_needs_an_admin_key(fresh: Proc) -> None:
    client(fresh).chat.completions.create(model=LLAMA, messages=USER)
    url = fresh.url + "/admin/usage"
    assert httpx.get(url).status_code == 401
    refused = httpx.get(url, headers={"Authorization": f"Bearer {SEARCH_KEY}"})
    assert refused.status_code == 403
    assert refused.json()["error"]["type"] == "permission_error"
    ok = httpx.get(url, headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert ok.status_code == 200
    body = ok.json()
    assert set(body["tenants"]) == {"search", "ads", "limited"}
    assert body["tenants"]["search"]["models"][LLAMA]["completion_tokens"] == 8
    assert body["accounts"]["main"]["limit"] == 4
    # an admin key is not a tenant key
    assert (
        httpx.get(
            fresh.url + "/v1/models", headers={"Authorization": f"Bearer {ADMIN_KEY}"}
        ).status_code
        == 401
    )


def test_unknown_models_share_one_label(fresh: Proc) -> None:
    for i in range(5):
        with pytest.raises(openai.NotFoundError):
            client(fresh).chat.completions.create(model=f"random/model-{i}", messages=USER)
    s = samples(fresh)
    assert metric(s, "gateway_requests_total", tenant="search", model="other", status="404") == 5
    assert not any("random/model" in str(key) for key in s)


def test_totals_are_summed_over_workers(fake: Proc) -> None:
    gw = start_gateway(base_config(fake.url), "--workers", "2")
    try:
        for _ in range(12):
            client(gw).chat.completions.create(model=LLAMA, messages=USER)
        for _ in range(3):
            client(gw).chat.completions.create(model=LLAMA, messages=USER)
        until_sync(  # access lines are written in batches, 0.2 s apart
            lambda: len(set(re.findall(r"\[(\d+)\] gateway.access: \S+ POST", gw.logs()))) >= 2,
            what="both workers serving requests",
        )
        for _ in range(4):  # whichever worker answers, it reports the sum over both
            s = samples(gw)
            assert (
                metric(s, "gateway_requests_total", tenant="search", model=LLAMA, status="200")
                == 15
            )
            assert (
                metric(s, "gateway_tokens_total", tenant="search", model=LLAMA, kind="completion")
                == 120
            )
    finally:
        gw.stop()


def test_every_metric_the_dashboard_and_alerts_query_is_exported(fresh: Proc) -> None:
    from tests.unit.test_deploy import queried_metrics

    client(fresh).chat.completions.create(model=LLAMA, messages=USER)
    text = httpx.get(fresh.url + "/metrics").text
    exported = set(re.findall(r"^# TYPE (\w+) ", text, re.M))
    exported |= {name.removesuffix("_total") for name in exported}
    wanted = queried_metrics()
    assert wanted, "the dashboard and the rules query nothing?"
    missing = {m for m in wanted if m not in exported and m.removesuffix("_total") not in exported}
    assert missing == set()


def test_a_budgeted_tenant_may_not_use_unpriced_models(fresh: Proc, fake: Proc) -> None:
    resp = httpx.post(
        fresh.url + "/v1/chat/completions",
        json={"model": LLAMA70, "messages": USER},
        headers={"Authorization": f"Bearer {ADS_KEY}"},
    )
    assert resp.status_code == 403
    assert resp.json()["error"]["code"] == "model_not_priced"
    assert httpx.get(fake.url + "/_fake/stats").json()["requests"] == 0

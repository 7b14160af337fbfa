"""A tenant's view in Chromium: its own usage and requests and no other tenant anywhere, a
refused key's message, staying signed in across a reload and nothing left after signing out;
and the playground on two models at once, its answers and token counts as the API gives them,
the gateway's errors (a refusal, and an SSE error event) shown as the gateway words them."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from playwright.async_api import expect

from tests.browser.conftest import Ui
from tests.e2e.helpers import USER, client, faults, prompt_tokens
from tests.procs import ADS_KEY, LIMITED_KEY, LLAMA, PHI, SEARCH_KEY, Proc

SYSTEM = "You answer briefly."
PROMPT = "Name three colours of the rainbow"
OTHERS = ("ads", "limited")


async def own(gateway: Proc, path: str, key: str = SEARCH_KEY) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        r = await http.get(path, headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 200, r.text
    answer: dict[str, Any] = r.json()
    return answer


async def config_key_ids(gateway: Proc, tenants: tuple[str, ...]) -> list[str]:
    """The others' key ids, as an admin reads them."""
    from tests.browser.conftest import ADMIN_KEY

    listed = await own(gateway, "/admin/keys", ADMIN_KEY)
    return [k["id"] for k in listed["data"] if k["tenant"] in tenants]


async def test_a_tenant_sees_its_own_figures_and_no_other_tenant(
    ui: Ui, ui_gateway: Proc, tmp_path: Path
) -> None:
    client(ui_gateway, ADS_KEY).chat.completions.create(model=LLAMA, messages=USER)
    client(ui_gateway, LIMITED_KEY).chat.completions.create(model="gpt-4o-mini", messages=USER)
    client(ui_gateway, SEARCH_KEY).chat.completions.create(model=PHI, messages=USER)
    page = ui.page

    await ui.sign_in("sk-gw-not-a-key-of-this-gateway", None)
    async with httpx.AsyncClient(base_url=ui_gateway.url) as http:
        refused = await http.get(
            "/admin/usage", headers={"Authorization": "Bearer sk-gw-not-a-key-of-this-gateway"}
        )
    await expect(page.locator("#signin-error")).to_have_text(refused.json()["error"]["message"])
    assert await page.evaluate("sessionStorage.length") == 0  # a refused key is not kept

    await ui.sign_in(SEARCH_KEY, "tenant")
    await expect(page.locator("#who")).to_have_text("tenant search")
    usage = await own(ui_gateway, "/v1/usage")
    mine = await own(ui_gateway, "/v1/requests")
    assert mine["data"] and all(e["tenant"] == "search" for e in mine["data"])
    rows = page.locator("#own-requests tr[data-request-id]")
    await expect(rows).to_have_count(len(mine["data"]))
    assert [await r.get_attribute("data-request-id") for r in await rows.all()] == [
        e["id"] for e in mine["data"]
    ]
    spend = await page.locator("[data-card=spend] .amount").inner_text()
    assert math.isclose(float(spend[1:]), usage["spend_usd"], rel_tol=5e-3)
    pool = usage["concurrency"]
    await expect(page.locator("[data-card=inflight] .value")).to_have_text(
        f"{pool['inflight']} / {pool['limit']}"
    )
    phi = page.locator(f"#own-models tr[data-model='{PHI}']")
    await expect(phi.locator(".in")).to_have_text(str(usage["models"][PHI]["prompt_tokens"]))
    await expect(phi.locator(".out")).to_have_text(str(usage["models"][PHI]["completion_tokens"]))
    await expect(page.locator("#model-list input[name=model]").first).to_be_attached()
    await ui.shot(tmp_path, "tenant")

    others = [*OTHERS, *await config_key_ids(ui_gateway, OTHERS)]
    html, text = await page.content(), await page.locator("body").inner_text()
    for name in others:
        pattern = re.compile(rf"\b{re.escape(name)}\b")
        assert not pattern.search(html) and not pattern.search(text), name
        for body in await ui.bodies():
            assert not pattern.search(body), (name, body[:200])
    assert not [u for u in ui.urls if "/admin/" in u and not u.endswith("/admin/usage")]

    await page.reload()  # the tab keeps its session
    await expect(page.locator("#tenant-view")).to_be_visible()
    await page.click("#signout")
    await expect(page.locator("#signin-view")).to_be_visible()
    assert await page.evaluate("sessionStorage.length") == 0
    assert usage["tenant"] not in await page.locator("main").inner_text()
    assert await page.locator("#own-requests tr[data-request-id]").count() == 0
    assert ui.navigations == 2  # the first load and the reload, nothing else
    await ui.assert_no_secret()


async def figures(panel: Any) -> dict[str, str]:
    names = await panel.locator(".figures dd").evaluate_all(
        "(dds) => dds.map((d) => d.dataset.figure)"
    )
    values = await panel.locator(".figures dd").all_inner_texts()
    return dict(zip(names, values, strict=True))


async def run(ui: Ui, *models: str, max_tokens: int = 6) -> None:
    page = ui.page
    form = page.locator("form#playground")
    for value in await form.locator("input[name=model]:checked").evaluate_all(
        "(boxes) => boxes.map((b) => b.value)"
    ):
        await form.locator(f"input[name=model][value='{value}']").uncheck()
    for model in models:
        await form.locator(f"input[name=model][value='{model}']").check()
    await form.locator("textarea[name=system]").fill(SYSTEM)
    await form.locator("textarea[name=prompt]").fill(PROMPT)
    await form.locator("input[name=temperature]").fill("0.2")
    await form.locator("input[name=max_tokens]").fill(str(max_tokens))
    await form.locator("button[type=submit]").click()
    for model in models:
        panel = page.locator(f"#answers [data-model='{model}']")
        await expect(panel).to_have_attribute("data-state", re.compile("done|failed"))
        await expect(panel.locator("[data-figure=cost_usd]")).not_to_have_text("…")


async def last_event_error(gateway: Proc, model: str) -> str:
    """The message of the SSE error event a stream ends with."""
    body = {"model": model, "messages": USER, "stream": True}
    headers = {"Authorization": f"Bearer {SEARCH_KEY}"}
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        r = await http.post("/v1/chat/completions", json=body, headers=headers)
    events = [line[6:] for line in r.text.splitlines() if line.startswith("data: ")]
    message: str = json.loads(events[-1])["error"]["message"]
    return message


async def test_the_playground_runs_two_models_side_by_side(
    ui: Ui, ui_gateway: Proc, tmp_path: Path
) -> None:
    page = ui.page
    await ui.sign_in(SEARCH_KEY, "tenant")
    boxes = page.locator("form#playground input[name=model]")
    listed = await own(ui_gateway, "/v1/models")
    assert await boxes.evaluate_all("(bs) => bs.map((b) => b.value)") == [
        m["id"] for m in listed["data"]
    ]
    for model in (LLAMA, PHI, "gpt-4o-mini"):  # three at most: the rest are disabled
        await page.locator(f"input[name=model][value='{model}']").check()
    assert await page.locator("input[name=model]:disabled").count() == await boxes.count() - 3
    await page.locator("input[name=model][value='gpt-4o-mini']").uncheck()
    assert await page.locator("input[name=model]:disabled").count() == 0

    await run(ui, LLAMA, PHI)
    recent = {e["model"]: e for e in (await own(ui_gateway, "/v1/requests?limit=2"))["data"]}
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": PROMPT}]
    for model in (LLAMA, PHI):
        panel = page.locator(f"#answers [data-model='{model}']")
        await expect(panel).to_have_attribute("data-state", "done")
        same = client(ui_gateway).chat.completions.create(
            model=model, messages=messages, temperature=0.2, max_tokens=6
        )
        assert await panel.locator(".answer").inner_text() == same.choices[0].message.content
        shown = await figures(panel)
        assert same.usage is not None
        assert shown["prompt_tokens"] == str(same.usage.prompt_tokens)
        assert same.usage.prompt_tokens == prompt_tokens(messages)  # the fake's formula
        assert shown["completion_tokens"] == str(same.usage.completion_tokens) == "6"
        assert shown["finish_reason"] == "length"  # max tokens went through
        entry = recent[model]
        assert (entry["prompt_tokens"], entry["completion_tokens"], entry["stream"]) == (
            prompt_tokens(messages),
            6,
            True,
        )
        assert math.isclose(float(shown["cost_usd"][1:]), entry["cost_usd"], rel_tol=5e-3)
        first, total = (float(shown[k].removesuffix(" ms")) for k in ("ttft_ms", "total_ms"))
        assert 0 < first <= total
    newest = page.locator("#own-requests tr[data-request-id]").first  # the table caught up
    latest = (await own(ui_gateway, "/v1/requests?limit=1"))["data"][0]["id"]
    await expect(newest).to_have_attribute("data-request-id", latest)
    await ui.shot(tmp_path, "playground")
    await ui.assert_no_secret()


async def test_the_playground_shows_the_gateways_errors(
    ui: Ui, ui_gateway: Proc, ui_fake: Proc
) -> None:
    page = ui.page
    await ui.sign_in(SEARCH_KEY, "tenant")
    faults(ui_fake, {"kind": "quota", "count": 1})
    await run(ui, LLAMA)
    faults(ui_fake, {"kind": "quota", "count": 1})
    with pytest.raises(openai.RateLimitError) as refused:
        client(ui_gateway).chat.completions.create(model=LLAMA, messages=USER)
    expected = refused.value.body["message"]  # type: ignore[index]
    panel = page.locator(f"#answers [data-model='{LLAMA}']")
    await expect(panel).to_have_attribute("data-state", "failed")
    await expect(panel.locator(".error")).to_have_text(expected)

    faults(ui_fake, {"kind": "cut", "after": 2, "count": 1})
    await run(ui, PHI)
    panel = page.locator(f"#answers [data-model='{PHI}']")
    await expect(panel).to_have_attribute("data-state", "failed")
    await expect(panel.locator(".answer")).to_have_text("Hello from")  # what came before
    cut = (await own(ui_gateway, "/v1/requests?limit=1"))["data"][0]
    assert (cut["status"], cut["reason"]) == (200, "stream_cut")
    assert cut["estimated_tokens"] > 0  # W&B had it: charged as estimated, and shown
    cost = (await figures(panel))["cost_usd"]
    assert math.isclose(float(cost[1:]), cut["cost_usd"], rel_tol=5e-3)
    faults(ui_fake, {"kind": "cut", "after": 2, "count": 1})
    await expect(panel.locator(".error")).to_have_text(await last_event_error(ui_gateway, PHI))
    await ui.assert_no_secret()

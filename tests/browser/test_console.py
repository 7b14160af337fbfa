"""The operator console in Chromium, signed in with an admin key: every tenant with the figures
`/admin/usage` and `/admin/requests` give at that moment (spend, requests held in flight and
queued, tokens, errors), the account pool, the recent requests; and keys created, rotated and
revoked from the page, checked with the official SDK."""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from playwright.async_api import Error as PlaywrightError
from playwright.async_api import expect

from tests.browser.conftest import ADMIN_KEY, Ui
from tests.e2e.helpers import USER, client, faults
from tests.procs import ADS_KEY, LIMITED_KEY, LLAMA, PHI, SEARCH_KEY, Proc

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
HOLD_S = 4.0  # how long the fake holds each of ads' slow requests

READ_TENANTS = """() => Object.fromEntries(
  [...document.querySelectorAll("#tenants tr[data-tenant]")].map((tr) => [tr.dataset.tenant, {
    inflight: tr.querySelector(".inflight").innerText.trim(),
    queued: tr.querySelector(".queued").innerText.trim(),
    spend: tr.querySelector(".spend .amount").innerText.trim(),
    tokens: Object.fromEntries([...tr.querySelectorAll(".model-tokens")].map((m) =>
      [m.dataset.model, [m.querySelector(".in").innerText, m.querySelector(".out").innerText]])),
    errors: Object.fromEntries([...tr.querySelectorAll(".errors [data-reason]")].map((e) =>
      [e.dataset.reason, e.innerText])),
  }]))"""
READ_PAGE = f"""() => ({{
  tenants: ({READ_TENANTS})(),
  account: [...document.querySelectorAll("#accounts tr[data-account=main] td")]
    .map((td) => td.innerText.trim()),
  requests: [...document.querySelectorAll("#requests tr[data-request-id]")]
    .map((tr) => tr.dataset.requestId),
}})"""


async def admin(gateway: Proc, path: str, key: str = ADMIN_KEY) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=gateway.url, headers=bearer(key)) as http:
        r = await http.get(path)
    assert r.status_code == 200, r.text
    answer: dict[str, Any] = r.json()
    return answer


def dollars(text: str) -> float:
    assert text.startswith("$"), text
    return float(text[1:])


def differences(usage: dict[str, Any], recent: dict[str, Any], page: dict[str, Any]) -> list[str]:
    """What the page shows that the APIs do not say now (empty: they agree)."""
    found: list[str] = []
    shown = page["tenants"]
    if set(shown) != set(usage["tenants"]):
        return [f"tenants {sorted(shown)} != {sorted(usage['tenants'])}"]
    errors = recent["errors"]["tenants"]
    for name, t in usage["tenants"].items():
        row, pool = shown[name], t["concurrency"]
        want = {
            "inflight": f"{pool['inflight']} / {pool['limit']}",
            "queued": str(pool["queued"]),
            "tokens": {
                m: [f"{v['prompt_tokens']:,}", f"{v['completion_tokens']:,}"]
                for m, v in t["models"].items()
            },
            "errors": {r: f"{r}: {n}" for r, n in errors.get(name, {}).items()},
        }
        got = {k: row[k] for k in want}
        if got != want:
            found.append(f"{name}: {got} != {want}")
        if not math.isclose(dollars(row["spend"]), t["spend_usd"], rel_tol=5e-3, abs_tol=5e-5):
            found.append(f"{name}: spend {row['spend']} != {t['spend_usd']}")
    account = usage["accounts"]["main"]
    limit = str(account["limit"])
    if account["limit"] < account["max_concurrency"]:
        limit = f"{account['limit']} of {account['max_concurrency']} (backed off)"
    want_account = ["main", limit, str(account["inflight"]), str(account["queued"])]
    if page["account"] != want_account:
        found.append(f"account {page['account']} != {want_account}")
    if page["requests"] != [e["id"] for e in recent["data"]]:
        found.append("recent requests differ")
    return found


async def agreeing(ui: Ui, gateway: Proc, also: Any, timeout_s: float = 10.0) -> dict[str, Any]:
    """Poll until the page shows what the APIs answer at that moment and `also(usage)` holds;
    the page refreshes itself every 2 s."""
    deadline = time.monotonic() + timeout_s
    while True:
        usage = await admin(gateway, "/admin/usage")
        recent = await admin(gateway, "/admin/requests")
        found = differences(usage, recent, await ui.page.evaluate(READ_PAGE))
        if not found and also(usage):
            return usage
        if time.monotonic() > deadline:
            pytest.fail(f"the console never showed what the API said: {found}")
        await asyncio.sleep(0.1)


def slow_ads(gateway: Proc) -> str:
    answer = client(gateway, ADS_KEY).chat.completions.create(
        model=LLAMA, messages=USER, extra_body={"x_fake": {"delay_s": HOLD_S}}
    )
    return answer.choices[0].message.content or ""


async def test_the_console_shows_every_tenant_as_the_admin_api_has_it(
    ui: Ui, ui_gateway: Proc, ui_fake: Proc, tmp_path: Path
) -> None:
    search = client(ui_gateway, SEARCH_KEY)
    search.chat.completions.create(model=LLAMA, messages=USER)
    search.chat.completions.create(model=PHI, messages=USER)
    client(ui_gateway, LIMITED_KEY).chat.completions.create(model="gpt-4o-mini", messages=USER)
    faults(ui_fake, {"kind": "500", "count": 3})  # the first try and both retries
    with pytest.raises(openai.InternalServerError):
        search.chat.completions.create(model=LLAMA, messages=USER)

    await ui.sign_in(ADMIN_KEY, "console")
    await expect(ui.page.locator("#who")).to_have_text("operator console")
    with ThreadPoolExecutor(3) as pool:  # ads may run 2: two in flight, one queued
        held = [pool.submit(slow_ads, ui_gateway) for _ in range(3)]

        def ads_held(usage: dict[str, Any]) -> bool:
            pools = usage["tenants"]["ads"]["concurrency"], usage["accounts"]["main"]
            return (pools[0]["inflight"], pools[0]["queued"], pools[1]["inflight"]) == (2, 1, 2)

        usage = await agreeing(ui, ui_gateway, ads_held)
        assert usage["tenants"]["search"]["spend_usd"] > 0
        assert usage["tenants"]["limited"]["spend_usd"] > 0
        errors = ui.page.locator("#tenants tr[data-tenant=search] .errors")
        await expect(errors).to_have_text("upstream_5xx: 1")
        bar = ui.page.locator("#tenants tr[data-tenant=search] .spend meter")
        assert float(await bar.get_attribute("max") or 0) == 5.0  # against its budget
        await ui.shot(tmp_path, "console")
        assert [f.result() for f in held] == ["Hello from the fake W&B upstream for testing"] * 3

    await agreeing(ui, ui_gateway, lambda u: u["tenants"]["ads"]["concurrency"]["inflight"] == 0)
    assert ui.navigations == 1  # refreshed in place, never reloaded
    await ui.assert_no_secret()


async def test_a_backed_off_account_shows_its_limit_in_force(
    ui: Ui, ui_gateway: Proc, ui_fake: Proc
) -> None:
    """W&B's concurrency 429 halves the account's limit for a while (see Concurrency); the
    console shows the limit in force against the configured one, as /admin/usage has them."""
    await ui.sign_in(ADMIN_KEY, "console")
    faults(ui_fake, {"kind": "429", "count": 1})  # retried: the request still succeeds
    client(ui_gateway, SEARCH_KEY).chat.completions.create(model=LLAMA, messages=USER)
    main = (await admin(ui_gateway, "/admin/usage"))["accounts"]["main"]
    assert (main["limit"], main["max_concurrency"]) == (2, 4)  # grows back one slot per 5 s
    limit = ui.page.locator("#accounts tr[data-account=main] .limit")
    await expect(limit).to_have_text("2 of 4 (backed off)")


async def test_keys_are_created_rotated_and_revoked_from_the_page(ui: Ui, ui_gateway: Proc) -> None:
    page = ui.page
    await ui.sign_in(ADMIN_KEY, "console")
    await page.select_option("#key-create select[name=tenant]", "ads")
    await page.fill("#key-create input[name=name]", "made-in-the-ui")
    await page.click("#key-create button[type=submit]")
    first = await shown_secret(ui)
    listed = (await admin(ui_gateway, "/admin/keys"))["data"]
    made = next(k for k in listed if k["name"] == "made-in-the-ui")
    assert (made["tenant"], made["status"]) == ("ads", "active")
    assert await page.locator("#new-key .for").inner_text() == f"ads (made-in-the-ui, {made['id']})"
    assert (await admin(ui_gateway, "/v1/usage", first))["tenant"] == "ads"
    chat = client(ui_gateway, first).chat.completions.create(model=LLAMA, messages=USER)
    assert chat.choices[0].message.content
    await page.click("#new-key .dismiss")
    await expect(page.locator("#new-key")).to_be_hidden()
    row = page.locator(f"#keys tr[data-key-id={made['id']}]")
    await expect(row.locator("td").nth(4)).to_have_text("active")

    await row.locator("button[data-action=ask-rotate]").click()
    confirm = page.locator(f"#keys tr[data-confirm={made['id']}]")
    await confirm.locator("input[name=grace_s]").fill("0")
    await confirm.locator("button[data-action=rotate]").click()
    second = await shown_secret(ui)
    assert second != first
    rotated = await admin(ui_gateway, f"/admin/keys/{made['id']}")
    new_id = rotated["replaced_by"]
    assert new_id and new_id != made["id"]
    assert client(ui_gateway, second).chat.completions.create(model=LLAMA, messages=USER)
    assert refusal(ui_gateway, first) == "key_revoked"  # no grace: refused at once
    await page.click("#new-key .dismiss")

    new_row = page.locator(f"#keys tr[data-key-id={new_id}]")
    await new_row.locator("button[data-action=ask-revoke]").click()
    await page.locator(f"#keys tr[data-confirm={new_id}] button[data-action=revoke]").click()
    await expect(new_row.locator("td").nth(4)).to_have_text("revoked")
    await expect(new_row.locator("button")).to_have_count(0)  # nothing more to do with it
    assert (await admin(ui_gateway, f"/admin/keys/{new_id}"))["status"] == "revoked"
    assert refusal(ui_gateway, second) == "key_revoked"
    await ui.assert_no_secret(first, second)


async def test_a_refused_key_change_shows_the_gateways_message(ui: Ui, ui_gateway: Proc) -> None:
    await ui.sign_in(ADMIN_KEY, "console")
    await ui.page.evaluate("document.querySelector('#key-create [name=name]').maxLength = 100")
    await ui.page.fill("#key-create input[name=name]", "x" * 65)  # past the API's bound
    await ui.page.click("#key-create button[type=submit]")
    async with httpx.AsyncClient(base_url=ui_gateway.url, headers=ADMIN) as http:
        r = await http.post("/admin/keys", json={"tenant": "ads", "name": "x" * 65})
    assert r.status_code == 400
    await expect(ui.page.locator("#keys-error")).to_have_text(r.json()["error"]["message"])
    await expect(ui.page.locator("#new-key")).to_be_hidden()


def slowed(delay_s: float, on: list[bool]) -> Any:
    """A route handler that holds each request `delay_s` while `on[0]`, then lets it go (and
    lets the browser's closing end what is still held)."""

    async def handle(route: Any) -> None:
        if on[0]:
            await asyncio.sleep(delay_s)
        with contextlib.suppress(PlaywrightError):
            await route.continue_()

    return handle


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def shown_secret(ui: Ui) -> str:
    box = ui.page.locator("#new-key .secret")
    await expect(box).to_have_text(re.compile(r"^sk-gw-\S{20,}$"))
    return await box.inner_text()


def refusal(gateway: Proc, key: str) -> str | None:
    """The 401's code for this key, or None while it is accepted."""
    try:
        client(gateway, key).chat.completions.create(model=LLAMA, messages=USER)
    except openai.AuthenticationError as exc:
        return str(exc.code)
    return None


async def test_signing_out_and_in_while_a_refresh_is_pending_leaves_one_refresh_loop(
    ui: Ui,
) -> None:
    """The console refreshes every 2 s; a refresh still waiting for its answers when the user
    signs out (and in again) must end there, not carry on beside the new session's loop."""
    page = ui.page
    slowing = [True]
    slow = slowed(1.5, slowing)

    await page.route("**/admin/requests*", slow)
    await ui.sign_in(ADMIN_KEY, "console")  # its first refresh is now waiting on /admin/requests
    await page.click("#signout")
    await ui.sign_in(ADMIN_KEY, "console")
    await asyncio.sleep(2.0)  # the first session's refresh has had its answers by now
    slowing[0] = False
    asked: list[float] = []

    def note(request: Any) -> None:
        if "/admin/requests" in request.url:
            asked.append(time.monotonic())

    page.on("request", note)
    await asyncio.sleep(6.1)
    # One loop asks every 2 s: three times in 6 s (four at a boundary); two loops: six.
    assert 2 <= len(asked) <= 4, asked
    assert ui.errors == []


async def test_a_double_click_makes_one_key_and_one_rotation(ui: Ui, ui_gateway: Proc) -> None:
    page = ui.page
    slow = slowed(0.5, [True])  # the answer takes long enough for a second click

    await ui.sign_in(ADMIN_KEY, "console")
    await page.route("**/admin/keys**", slow)
    await page.select_option("#key-create select[name=tenant]", "ads")
    await page.fill("#key-create input[name=name]", "clicked-twice")
    await page.dblclick("#key-create button[type=submit]")
    await shown_secret(ui)
    await page.click("#new-key .dismiss")
    made = [
        k for k in (await admin(ui_gateway, "/admin/keys"))["data"] if k["name"] == "clicked-twice"
    ]
    assert len(made) == 1, made

    row = page.locator(f"#keys tr[data-key-id={made[0]['id']}]")
    await row.locator("button[data-action=ask-rotate]").click()
    await page.locator(
        f"#keys tr[data-confirm={made[0]['id']}] button[data-action=rotate]"
    ).dblclick()
    await shown_secret(ui)
    named = [
        k for k in (await admin(ui_gateway, "/admin/keys"))["data"] if k["name"] == "clicked-twice"
    ]
    assert len(named) == 2, named  # the old key and one new one
    assert ui.errors == []


async def test_a_blank_grace_asks_again_rather_than_revoking_at_once(
    ui: Ui, ui_gateway: Proc
) -> None:
    page = ui.page
    async with httpx.AsyncClient(base_url=ui_gateway.url, headers=ADMIN) as http:
        made = (await http.post("/admin/keys", json={"tenant": "ads", "name": "blank"})).json()
    await ui.sign_in(ADMIN_KEY, "console")
    row = page.locator(f"#keys tr[data-key-id={made['id']}]")
    await row.locator("button[data-action=ask-rotate]").click()
    confirm = page.locator(f"#keys tr[data-confirm={made['id']}]")
    await confirm.locator("input[name=grace_s]").fill("")
    await confirm.locator("button[data-action=rotate]").click()
    await expect(page.locator("#keys-error")).to_contain_text("how many seconds")
    await expect(confirm).to_be_visible()  # still asking
    key = await admin(ui_gateway, f"/admin/keys/{made['id']}")
    assert key["status"] == "active" and not key.get("replaced_by")
    assert refusal(ui_gateway, made["key"]) is None  # the key still works

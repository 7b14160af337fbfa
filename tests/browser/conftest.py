"""The `/ui` pages in a real headless Chromium (Debian's `chromium`, which `make chromium`
installs; Playwright for Python drives it, never a browser of its own), against a real gateway
and the fake upstream over loopback, started once for these tests.

Each test gets a fresh browser and page (`ui`), which records every URL the page requests and
every JSON answer it reads, so a test can assert what never appears there: a key, another
tenant. Screenshots go under the test's tmp_path, and also to `$UI_SCREENSHOTS` when it is set
(`UI_SCREENSHOTS=docs pytest tests/browser` refreshes the README's pictures).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import Page, Response, async_playwright, expect

from gateway.keys import hash_key
from tests.e2e.helpers import OPEN_CLIENTS
from tests.procs import (
    ADS_KEY,
    LIMITED_KEY,
    SEARCH_KEY,
    Proc,
    base_config,
    start_fake,
    start_gateway,
)

CHROMIUM = "/usr/bin/chromium"
# Root needs --no-sandbox; the network flags keep Chromium from calling anywhere by itself.
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Playwright's `expect` waits 5 s by default, the page's own waits 15 s: on a loaded 2-core
# runner the first is too short for a refresh that comes every 2 s, so both wait 15 s.
expect.set_options(timeout=15_000)
ADMIN_KEY = "sk-gw-test-admin-ui"
KEYS = (ADMIN_KEY, SEARCH_KEY, ADS_KEY, LIMITED_KEY)
VIEWPORT = {"width": 1280, "height": 900}


@pytest.fixture(scope="session")
def ui_fake() -> Iterator[Proc]:
    proc = start_fake(concurrency=8)
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def ui_gateway(ui_fake: Proc, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    config = base_config(
        ui_fake.url,
        server__admin_keys=[hash_key(ADMIN_KEY)],
        server__keys_store=str(tmp_path_factory.mktemp("ui-keys") / "gateway.keys.json"),
        tenants__search__monthly_budget_usd=5.0,
    )
    proc = start_gateway(config)
    yield proc
    proc.stop()


class Ui:
    """One page of the console, and what it did."""

    def __init__(self, page: Page, gateway: Proc) -> None:
        self.page = page
        self.gateway = gateway
        self.urls: list[str] = []
        self.answers: list[Response] = []
        self.errors: list[str] = []
        self.navigations = 0
        page.on("request", lambda r: self.urls.append(r.url))
        page.on("response", self._answered)
        page.on("pageerror", lambda e: self.errors.append(str(e)))
        page.on("framenavigated", self._navigated)

    def _answered(self, response: Response) -> None:
        path = response.url.removeprefix(self.gateway.url)
        if path.startswith(("/v1/", "/admin/")) and "chat/completions" not in path:
            self.answers.append(response)

    def _navigated(self, frame: Any) -> None:
        if frame == self.page.main_frame:
            self.navigations += 1

    async def sign_in(self, key: str, view: str | None) -> None:
        """Open /ui, type the key, sign in; wait for `view` (`console`, `tenant`) to show."""
        if not self.page.url.endswith("/ui"):
            await self.page.goto(self.gateway.url + "/ui")
        await self.page.fill("input[name=key]", key)
        await self.page.click("#signin button[type=submit]")
        if view is not None:
            await expect(self.page.locator(f"#{view}-view")).to_be_visible()

    async def shot(self, tmp_path: Path, name: str) -> Path:
        path = tmp_path / f"ui-{name}.png"
        await self.page.screenshot(path=str(path), full_page=True)
        assert path.stat().st_size > 10_000
        if os.environ.get("UI_SCREENSHOTS"):
            shutil.copy(path, Path(os.environ["UI_SCREENSHOTS"]) / path.name)
        return path

    async def bodies(self) -> list[str]:
        """The JSON answers the page read (chat streams aside)."""
        return [await r.text() for r in self.answers]

    async def assert_no_secret(self, *more: str) -> None:
        """No key in any URL the page asked for, in a cookie, in localStorage, in the page's
        HTML or in the files it is made of."""
        secrets = [*KEYS, *more]
        assert self.urls
        for url in self.urls:
            assert not any(s in url for s in secrets), url
        assert await self.page.evaluate("document.cookie") == ""
        assert await self.page.evaluate("localStorage.length") == 0
        assert await self.page.context.cookies() == []
        html = await self.page.content()
        assert not any(s in html for s in secrets)
        for url in {u for u in self.urls if "/ui" in u}:
            async with httpx.AsyncClient() as http:
                served = (await http.get(url)).text
            assert not any(s in served for s in secrets), url
            assert not re.search(r"sk-gw-[A-Za-z0-9_-]{8,}", served), url
        assert self.errors == []


@pytest.fixture
async def ui(ui_gateway: Proc) -> AsyncIterator[Ui]:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: `make chromium` installs Debian's package")
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        context = await browser.new_context(viewport=VIEWPORT)  # type: ignore[arg-type]
        page = await context.new_page()
        page.set_default_timeout(15_000)
        try:
            yield Ui(page, ui_gateway)
        finally:
            await browser.close()


@pytest.fixture(autouse=True)
def clean_fake(ui_fake: Proc) -> Iterator[None]:
    httpx.post(ui_fake.url + "/_fake/reset").raise_for_status()
    yield
    while OPEN_CLIENTS:
        OPEN_CLIENTS.pop().close()

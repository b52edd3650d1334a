"""The console in a real browser: Debian's chromium driven by playwright, over real HTTP.

Asserts what a person sees on each page (text, a drawn plotly chart) and saves a
screenshot of each under tests/artifacts/. Skipped only where /usr/bin/chromium is missing
(.ci/run installs it where apt is available).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from temporalio.client import Client

from cascade.infra.db import Database
from cascade.infra.settings import Settings
from tests.helpers import serve_app
from tests.test_console import fill_console_history
from webhooks.app import create_app
from webhooks.keys import create_key

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).parent / "artifacts"

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason=f"no chromium at {CHROMIUM} (install: apt-get install -y chromium)"
)
async_playwright = pytest.importorskip("playwright.async_api", reason="playwright is not installed").async_playwright


@pytest.fixture
async def site(client: Client, settings: Settings, db: Database) -> AsyncIterator[tuple[str, str]]:
    await fill_console_history(db)
    key, _ = await create_key(db, "shop1")
    async with serve_app(create_app(settings, client=client, db=db)) as url:
        yield url, key


async def test_a_marketer_logs_in_and_reads_every_page(site: tuple[str, str]) -> None:
    url, key = site
    ARTIFACTS.mkdir(exist_ok=True)
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 900})
            # Offline: any request that leaves 127.0.0.1 (a CDN) fails the test.
            outside: list[str] = []
            page.on("request", lambda req: None if req.url.startswith(url) else outside.append(req.url))

            await page.goto(f"{url}/console/")
            assert page.url.startswith(f"{url}/console/login")
            await page.screenshot(path=ARTIFACTS / "console-login.png")
            await page.fill("input[name=api_key]", "csk_wrong_key")
            await page.click("button[type=submit]")
            assert "not valid" in await page.inner_text("[role=alert]")
            await page.fill("input[name=api_key]", key)
            await page.click("button[type=submit]")

            await page.wait_for_selector("#channel-funnel .main-svg")
            assert (await page.inner_text("h1")).startswith("Overview: last 30 days (since ")
            # Nothing rolled up in the background yet: the page says its figures are live.
            assert (await page.inner_text("#freshness")).startswith("Live: every figure")
            assert await page.inner_text("#sent") == "4"
            assert await page.inner_text("#conversions") == "1"
            await page.screenshot(path=ARTIFACTS / "console-overview.png", full_page=True)

            await page.click("a:text-is('winback')")
            await page.wait_for_selector("#step-funnel .main-svg")
            assert "Journey winback" in await page.inner_text("h1")
            assert await page.inner_text("#entered") == "2"
            await page.screenshot(path=ARTIFACTS / "console-journey.png", full_page=True)

            await page.click("header a:text-is('Running journeys')")
            links = await page.eval_on_selector_all("td a[target=_blank]", "els => els.map(e => e.href)")
            assert any("query=Journey%3D%22winback%22" in link for link in links)
            assert any("query=CustomerId%3D%22bob%22" in link for link in links)
            await page.screenshot(path=ARTIFACTS / "console-running.png", full_page=True)

            await page.click("header a:text-is('Customers')")
            await page.fill("input[name=id]", "ann")
            await page.click("button:text-is('Show')")
            timeline = await page.inner_text("#timeline")
            assert "purchase" in timeline and "journey started" in timeline and "clicked" in timeline
            await page.screenshot(path=ARTIFACTS / "console-customer.png", full_page=True)

            # No journey of this history ran an experiment: the page says so (the arms'
            # table is checked over HTTP in test_console.py).
            await page.click("header a:text-is('Experiments')")
            assert "No experiment has had an entrant yet" in await page.inner_text("main")

            await page.click("header a:text-is('Forecast')")
            await page.select_option("select[name=journey]", "winback")
            await page.fill("input[name=audience]", "2000")
            await page.click("button:text-is('Forecast')")
            await page.wait_for_selector("#forecast .main-svg", timeout=60_000)
            rows = await page.eval_on_selector_all(
                "#scenarios tbody tr td:first-child", "els => els.map(e => e.innerText)"
            )
            assert rows == ["pessimistic", "neutral", "optimistic"]
            assert "Thin history" in await page.inner_text("main")
            await page.screenshot(path=ARTIFACTS / "console-forecast.png", full_page=True)

            await page.click("header button:text-is('Log out (shop1)')")
            await page.goto(f"{url}/console/running")
            assert page.url.startswith(f"{url}/console/login")
            assert outside == []
        finally:
            await browser.close()

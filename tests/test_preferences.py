"""The preference centre in a real browser (Debian chromium, JavaScript off), and routing obeying it.

The webhooks app runs under uvicorn on 127.0.0.1 with real SQLite; the page is reached
the way a customer reaches it: the unsubscribe link of a message they got.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from playwright.async_api import async_playwright
from sqlmodel import select
from temporalio.client import Client

from activities.routing import RoutingActivities
from cascade.infra.db import Database
from cascade.infra.settings import Settings
from cascade.tracking.tokens import Purpose, sign_token, tracking_id
from models.journey import ChannelName
from models.routing import ChooseChannelInput
from models.tables import Consent, Customer, Delivery, PreferenceChange, TrackedMessage
from tests.conftest import seed
from tests.helpers import serve_app
from webhooks.app import create_app

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).parent / "artifacts"


async def _unsubscribe_token(db: Database, settings: Settings, cid: str) -> str:
    """A message sent to `cid` by email, and its unsubscribe token (as the send activity signs it)."""
    key = f"journey/prefs/{cid}/run/0"
    async with db.session() as session:
        session.add(
            Delivery(
                idempotency_key=key,
                workflow_id=f"journey/prefs/{cid}",
                run_id="run",
                journey="prefs",
                step=0,
                customer_id=cid,
                channel="email",
                status="sent",
            )
        )
        session.add(TrackedMessage(tracking_id=tracking_id(key), idempotency_key=key, links=[]))
    expires = datetime.now(UTC) + timedelta(days=30)
    return sign_token(settings.tracking_secret.get_secret_value(), Purpose.UNSUBSCRIBE, tracking_id(key), expires)


@pytest.fixture
async def site(client: Client, settings: Settings, db: Database) -> AsyncIterator[str]:
    async with serve_app(create_app(settings, client=client, db=db)) as url:
        yield url


async def _consents(db: Database, cid: str) -> dict[tuple[str, str], Consent]:
    async with db.session() as session:
        rows = (await session.exec(select(Consent).where(Consent.customer_id == cid))).all()
    return {(c.channel, c.topic): c for c in rows}


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium is not installed at /usr/bin/chromium")
async def test_customer_chooses_channels_and_preferred_channel_in_a_browser_without_javascript(
    site, db, settings, unique_id
):
    await seed(db, unique_id, email=f"{unique_id}@example.com", telegram="100200300", sms="+14155552671")
    token = await _unsubscribe_token(db, settings, unique_id)
    ARTIFACTS.mkdir(exist_ok=True)
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        page = await (await browser.new_context(java_script_enabled=False)).new_page()
        await page.goto(f"{site}/u/{token}")
        await page.get_by_role("link", name="Choose which messages you get instead").click()
        assert await page.get_by_role("heading").inner_text() == "Your message preferences"
        telegram_offers = page.get_by_label("Telegram: Offers and news")
        assert await telegram_offers.is_checked()
        assert await page.get_by_label("Email: Orders and receipts").is_checked()
        await telegram_offers.uncheck()
        await page.get_by_label("Prefer SMS").check()
        await page.get_by_role("button", name="Save my choices").click()
        status = await page.get_by_role("status").inner_text()
        await page.screenshot(path=str(ARTIFACTS / "preference_centre.png"), full_page=True)
        # The page shown after saving reads the stored choices back.
        assert not await page.get_by_label("Telegram: Offers and news").is_checked()
        assert await page.get_by_label("Prefer SMS").is_checked()
        await browser.close()
    assert status == "Saved: telegram/marketing: off, preferred: sms."

    consents = await _consents(db, unique_id)
    withdrawn = consents[("telegram", "marketing")]
    assert not withdrawn.granted and withdrawn.source == "preference centre" and withdrawn.changed_at is not None
    assert consents[("sms", "marketing")].granted
    async with db.session() as session:
        customer = await session.get(Customer, unique_id)
        changes = (await session.exec(select(PreferenceChange).where(PreferenceChange.customer_id == unique_id))).all()
    assert customer is not None and customer.preferred_channel == "sms"
    assert [(c.name, c.value, c.source) for c in changes] == [("preferred_channel", "sms", "preference centre")]

    # Routing obeys: telegram is out (no consent), sms carries the preference boost.
    decision = await RoutingActivities(db, settings).choose_channel(
        ChooseChannelInput(
            customer_id=unique_id,
            journey="promo",
            workflow_id="wf",
            run_id="run",
            step=0,
            idempotency_key="wf/run/0",
            channels=[ChannelName.TELEGRAM, ChannelName.SMS, ChannelName.EMAIL],
            at=datetime.now(UTC),
        )
    )
    assert decision.unusable == {"telegram": "no consent"}
    sms = next(r for r in decision.ranked if r.channel == "sms")
    assert "preferred x1.5" in sms.reason


async def test_a_choice_that_does_not_fit_is_refused_and_changes_nothing(site, db, settings, unique_id):
    await seed(db, unique_id, email=f"{unique_id}@example.com", sms="+14155552671")
    token = await _unsubscribe_token(db, settings, unique_id)
    before = await _consents(db, unique_id)
    async with httpx.AsyncClient(base_url=site) as http:
        page = await http.get(f"/u/{token}/preferences")
        assert page.status_code == 200 and "Telegram" not in page.text
        vk = await http.post(f"/u/{token}/preferences", data={"accept": ["vk:marketing", "sms:marketing"]})
        assert vk.status_code == 422 and "Nothing was changed. accept.vk: no address on this channel" in vk.text
        muted = await http.post(
            f"/u/{token}/preferences", data={"accept": ["email:marketing"], "preferred_channel": "sms"}
        )
        assert muted.status_code == 422 and "preferred_channel: a preferred channel must accept messages" in muted.text
        forged = await http.get(f"/u/{token[:-2]}xx/preferences")
        assert forged.status_code == 404 and "Traceback" not in forged.text
        refused = await _consents(db, unique_id)
        stop = await http.post(f"/u/{token}/preferences", data={"accept": ["email:transactional"], "action": "none"})
        assert stop.status_code == 200
    assert {k: (v.granted, v.changed_at) for k, v in refused.items()} == {
        k: (v.granted, v.changed_at) for k, v in before.items()
    }
    final = await _consents(db, unique_id)
    assert not final[("email", "marketing")].granted and not final[("sms", "marketing")].granted
    # Not ticked: receipts declined on sms too, by the customer's own choice.
    assert not final[("sms", "transactional")].granted and ("email", "transactional") not in final

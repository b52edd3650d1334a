"""Tracking links end to end: a real journey on the dev server, its message from the sandbox
outbox, the links in it followed over HTTP (uvicorn on 127.0.0.1)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlmodel import select

from cascade.infra.db import Database
from cascade.infra.settings import Settings
from cascade.tracking.tokens import PIXEL_GIF
from models.journey import Outcome
from models.tables import Consent, EngagementEvent, SandboxMessage
from starter import start_journey
from tests.conftest import seed
from tests.helpers import contact, deliveries, eventually, outbox, serve_app, spec
from webhooks.app import create_app
from worker import build_worker
from workflows.cascade import CascadeJourney

pytestmark = pytest.mark.integration


@pytest.fixture
async def web(dev_server, settings: Settings, db: Database) -> AsyncIterator[httpx.AsyncClient]:
    async with (
        build_worker(dev_server.client, settings, db),
        serve_app(create_app(settings, client=dev_server.client, db=db)) as url,
    ):
        settings.public_url = url  # links in messages point at this server
        async with httpx.AsyncClient(base_url=url) as http:
            yield http


async def _events(db: Database) -> list[EngagementEvent]:
    async with db.session() as session:
        return list((await session.exec(select(EngagementEvent))).all())


async def _journey(dev_server: Any, settings: Settings, db: Database, unique_id: str, await_: str = "clicked") -> Any:
    await seed(db, unique_id, email="ann@example.com", sms="+14155552671")
    journey = spec("email", "sms", wait="1h", await_=await_)
    journey.steps[0].content.html = '<p>Hi</p><a href="https://shop.example/sale?x=1">Sale</a>'
    handle = await start_journey(unique_id, journey, client=dev_server.client, db=db, settings=settings)
    messages = await eventually(lambda: _outbox_or_none(db))
    return handle, messages[0]


async def _outbox_or_none(db: Database) -> list[SandboxMessage] | None:
    rows = await outbox(db)
    return rows or None


def _link(html: str, kind: str) -> str:
    found = re.findall(rf'"(http://127\.0\.0\.1:\d+/{kind}/[^"]+)"', html)
    assert found, html
    return str(found[0])


async def test_click_redirects_to_the_original_link_with_utm_and_ends_the_journey(
    dev_server, web, settings, db, unique_id
):
    handle, message = await _journey(dev_server, settings, db, unique_id)
    click = _link(message.html, "t/c")
    reply = await web.get(click.removeprefix(str(web.base_url)))
    assert reply.status_code == 302
    assert reply.headers["location"] == (
        "https://shop.example/sale?x=1&utm_source=email&utm_medium=email&utm_campaign=test&utm_content=step0"
    )
    result = await handle.result()
    assert result.outcome == Outcome.REACTED and result.reaction == "clicked"
    [row, *_] = await deliveries(db, handle.id)
    assert row.clicked_at is not None and [e.type for e in await _events(db)] == ["clicked"]


async def test_forged_tokens_get_404_and_no_signal_and_the_pixel_is_always_a_gif(
    dev_server, web, settings, db, unique_id
):
    handle, message = await _journey(dev_server, settings, db, unique_id, await_="opened")
    click = _link(message.html, "t/c").removeprefix(str(web.base_url))
    token = click.rsplit("/", 1)[1]
    forged = token[:-2] + ("AA" if token[-2:] != "AA" else "BB")
    for path in (f"/t/c/{forged}", "/t/c/https:%2F%2Fevil.example", "/t/c/" + "A" * 52, "/u/" + forged):
        reply = await web.get(path)
        assert reply.status_code == 404, path
        assert "location" not in reply.headers and "evil" not in reply.text
    assert (await web.get(f"/t/c/{forged}")).json()["error"] == "token: no such link"
    bad_pixel = await web.get(f"/t/o/{forged}.gif")
    assert bad_pixel.status_code == 200 and bad_pixel.content == PIXEL_GIF
    assert bad_pixel.headers["content-type"] == "image/gif" and "no-store" in bad_pixel.headers["cache-control"]
    state = await handle.query(CascadeJourney.state)
    assert state.outcome is None and state.steps[0].reaction is None
    assert await _events(db) == []

    # The real pixel: an open, recorded once per load but signalled once.
    pixel = _link(message.html, "t/o").removeprefix(str(web.base_url))
    for _ in range(2):
        reply = await web.get(pixel)
        assert reply.content == PIXEL_GIF
    result = await handle.result()
    assert result.outcome == Outcome.REACTED and result.reaction == "opened"
    assert [e.type for e in await _events(db)] == ["opened", "opened"]


async def test_one_click_unsubscribe_is_idempotent_and_ends_the_journey(dev_server, web, settings, db, unique_id):
    handle, message = await _journey(dev_server, settings, db, unique_id)
    unsubscribe = _link(message.html, "u").removeprefix(str(web.base_url))
    assert unsubscribe in message.body  # the text part carries it too
    page = await web.get(unsubscribe)
    assert page.status_code == 200 and '<form method="post">' in page.text
    assert (await contact(db, unique_id, "email")).status == "valid"  # GET changes nothing

    for _ in range(2):
        reply = await web.post(
            unsubscribe,
            content=b"List-Unsubscribe=One-Click",
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
        assert reply.status_code == 200 and "unsubscribed" in reply.text
    result = await handle.result()
    assert result.outcome == Outcome.UNSUBSCRIBED
    assert (await contact(db, unique_id, "email")).status == "unsubscribed"
    async with db.session() as session:
        consent = (
            await session.exec(select(Consent).where(Consent.customer_id == unique_id, Consent.channel == "email"))
        ).one()
    assert consent.granted is False and consent.source == "list-unsubscribe"
    assert [e.type for e in await _events(db)] == ["unsubscribed"]

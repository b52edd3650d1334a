"""POST /v1/events with API keys, and provider receipts in their real formats with real signatures."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from pydantic import SecretStr
from sqlmodel import col, select

from cascade.infra.db import Database
from cascade.infra.settings import Settings, VkSettings
from cascade.profiles.privacy import erase_customer
from models.journey import Outcome
from models.tables import Customer, EngagementEvent
from starter import start_journey
from tests.conftest import seed
from tests.doubles.vk import VkDouble
from tests.helpers import contact, deliveries, eventually, serve_app, spec
from webhooks.app import create_app
from webhooks.keys import create_key, revoke_key
from worker import build_worker
from workflows.cascade import CascadeJourney

pytestmark = pytest.mark.integration
SECRET = "provider-secret"


@pytest.fixture
async def web(dev_server, settings: Settings, any_db: Database) -> AsyncIterator[httpx.AsyncClient]:
    for name in (
        "mailgun_signing_key",
        "twilio_auth_token",
        "telegram_secret",
        "whatsapp_app_secret",
        "viber_auth_token",
    ):
        setattr(settings, f"webhook_{name}", SecretStr(SECRET))
    settings.webhook_vk_secret, settings.webhook_vk_confirmation = SecretStr(SECRET), "a1b2c3"
    settings.webhook_whatsapp_verify_token = SecretStr("verify-me")
    async with (
        build_worker(dev_server.client, settings, any_db),
        serve_app(create_app(settings, client=dev_server.client, db=any_db)) as url,
    ):
        settings.public_url = url
        async with httpx.AsyncClient(base_url=url) as http:
            yield http


async def _events(db: Database) -> list[EngagementEvent]:
    async with db.session() as session:
        return list((await session.exec(select(EngagementEvent).order_by(col(EngagementEvent.id)))).all())


async def _sent(db: Database, handle: Any, step: int = 0) -> str:
    async def ready() -> str | None:
        rows = await deliveries(db, handle.id)
        return rows[step].provider_message_id if len(rows) > step and rows[step].status == "sent" else None

    return await eventually(ready)


async def test_events_need_a_key_are_idempotent_and_a_purchase_converts(dev_server, web, settings, any_db, unique_id):
    await seed(any_db, unique_id, email="ann@example.com")
    handle = await start_journey(
        unique_id,
        spec("email", wait="1h", convert_on=["purchase"]),
        client=dev_server.client,
        db=any_db,
        settings=settings,
    )
    await _sent(any_db, handle)
    key, _ = await create_key(any_db, "shop1")
    purchase = {
        "event_id": "ord-1",
        "customer_id": unique_id,
        "type": "purchase",
        "properties": {"amount": 42.5, "loyalty_points": 10},
    }

    for headers in (
        {},
        {"X-API-Key": "csk_nope_nope"},
        {"Authorization": "Bearer " + key[:-1] + ("y" if key.endswith("x") else "x")},
    ):
        reply = await web.post("/v1/events", json=purchase, headers=headers)
        assert reply.status_code == 401 and "authorization" in reply.json()["error"]
    bad = await web.post("/v1/events", json={**purchase, "properties": {"amount": -1}}, headers={"X-API-Key": key})
    assert bad.status_code == 422 and "properties.amount" in bad.json()["error"]
    bad_type = await web.post("/v1/events", json={**purchase, "type": "Bad Type"}, headers={"X-API-Key": key})
    assert bad_type.status_code == 422 and bad_type.json()["fields"][0]["field"] == "type"
    assert await _events(any_db) == [] and (await handle.query(CascadeJourney.state)).outcome is None

    first = await web.post("/v1/events", json=purchase, headers={"Authorization": f"Bearer {key}"})
    assert first.status_code == 202 and first.json()["status"] == "accepted"
    assert first.json()["signalled"] == [handle.id]
    again = await web.post("/v1/events", json=purchase, headers={"X-API-Key": key})
    assert again.status_code == 202 and again.json() == {
        "event_id": "ord-1",
        "status": "duplicate",
        "signalled": [],
        "started": [],
        "detail": "already received; nothing done",
    }
    result = await handle.result()
    assert result.outcome == Outcome.REACTED and result.reaction == "converted"
    async with any_db.session() as session:
        customer = await session.get(Customer, unique_id)
    assert customer and customer.purchase_count == 1 and customer.loyalty_points == 10
    assert [e.event_id for e in await _events(any_db)] == ["shop1:ord-1"]

    batch = {
        "events": [
            {"event_id": "v-1", "customer_id": unique_id, "type": "page_viewed", "properties": {"url": "https://s/p"}},
            {"event_id": "ord-1", "customer_id": unique_id, "type": "purchase"},
            {"event_id": "x-1", "customer_id": "nobody", "type": "wishlist_added"},
        ]
    }
    reply = await web.post("/v1/events/batch", json=batch, headers={"X-API-Key": key})
    assert reply.status_code == 202
    assert [r["status"] for r in reply.json()["results"]] == ["accepted", "duplicate", "unknown_customer"]
    too_many = {"events": [batch["events"][0]] * 1001}
    assert (await web.post("/v1/events/batch", json=too_many, headers={"X-API-Key": key})).status_code == 422

    await revoke_key(any_db, key.split("_")[1])
    revoked = await web.post("/v1/events", json={**purchase, "event_id": "ord-2"}, headers={"X-API-Key": key})
    assert revoked.status_code == 401


def _twilio(url: str, params: dict[str, str]) -> str:
    payload = url + "".join(k + params[k] for k in sorted(params))
    return base64.b64encode(hmac.new(SECRET.encode(), payload.encode(), hashlib.sha1).digest()).decode()


async def test_signed_receipts_signal_and_bad_signatures_change_nothing(dev_server, web, settings, any_db, unique_id):
    await seed(any_db, unique_id, sms="+14155552671", viber="vb-user-1")
    journey = spec("sms", "viber", wait="1h", await_="opened")
    handle = await start_journey(unique_id, journey, client=dev_server.client, db=any_db, settings=settings)
    sid = await _sent(any_db, handle)

    # Bad or missing signatures: 401, nothing written, nothing signalled.
    params = {"MessageSid": sid, "MessageStatus": "delivered", "AccountSid": "AC1"}
    url = f"{settings.public_url}/v1/receipts/sms/twilio"
    form = {"content-type": "application/x-www-form-urlencoded"}
    body = {"entry": [{"changes": [{"value": {"statuses": [{"id": sid, "status": "read", "timestamp": "1"}]}}]}]}
    raw = json.dumps(body).encode()
    refused = [
        await web.post(
            url, content=urlencode(params), headers={**form, "X-Twilio-Signature": _twilio(url + "x", params)}
        ),
        await web.post(url, content=urlencode(params), headers=form),
        await web.post("/v1/receipts/whatsapp", content=raw, headers={"X-Hub-Signature-256": "sha256=00"}),
        await web.post("/v1/receipts/viber", content=raw, headers={"X-Viber-Content-Signature": "bad"}),
        await web.post(
            "/v1/receipts/telegram", json={"update_id": 1}, headers={"X-Telegram-Bot-Api-Secret-Token": "no"}
        ),
        await web.post("/v1/receipts/vk", json={"type": "message_deny", "object": {"user_id": 1}, "secret": "no"}),
        await web.post(
            "/v1/receipts/email/mailgun",
            json={
                "signature": {"timestamp": str(int(time.time())), "token": "t1", "signature": "bad"},
                "event-data": {"event": "delivered", "message": {"headers": {"message-id": sid}}},
            },
        ),
    ]
    assert [r.status_code for r in refused] == [401] * len(refused), [r.text for r in refused]
    assert await _events(any_db) == []
    assert (await handle.query(CascadeJourney.state)).steps[0].reaction is None

    # Twilio "delivered" (signed over URL + sorted params) is recorded, once.
    signed = {**form, "X-Twilio-Signature": _twilio(url, params)}
    for _ in range(2):
        ok = await web.post("/v1/receipts/sms/twilio", content=urlencode(params), headers=signed)
        assert ok.status_code == 200, ok.text
    assert [e.type for e in await _events(any_db)] == ["delivered"]
    assert (await deliveries(any_db, handle.id))[0].delivered_at is not None

    # WhatsApp-format "read" for the same message id: the journey (await opened) reacts.
    sig = "sha256=" + hmac.new(SECRET.encode(), raw, hashlib.sha256).hexdigest()
    ok = await web.post("/v1/receipts/whatsapp", content=raw, headers={"X-Hub-Signature-256": sig})
    assert ok.status_code == 200, ok.text
    result = await handle.result()
    assert result.outcome == Outcome.REACTED and result.reaction == "opened"

    # Viber "unsubscribed": the contact point is marked, idempotently.
    unsub = json.dumps({"event": "unsubscribed", "timestamp": 1, "user_id": "vb-user-1"}).encode()
    viber_sig = hmac.new(SECRET.encode(), unsub, hashlib.sha256).hexdigest()
    for expected in ("unsubscribed", "already unsubscribed"):
        ok = await web.post("/v1/receipts/viber", content=unsub, headers={"X-Viber-Content-Signature": viber_sig})
        assert ok.json() == {"status": expected}
    assert (await contact(any_db, unique_id, "viber")).status == "unsubscribed"

    # Handshakes: VK confirmation string, WhatsApp verify token.
    confirm = await web.post("/v1/receipts/vk", json={"type": "confirmation", "group_id": 1})
    assert confirm.text == "a1b2c3"
    verify = {"hub.mode": "subscribe", "hub.verify_token": "verify-me", "hub.challenge": "1158201444"}
    assert (await web.get("/v1/receipts/whatsapp", params=verify)).text == "1158201444"
    wrong = await web.get("/v1/receipts/whatsapp", params={**verify, "hub.verify_token": "x"})
    assert wrong.status_code == 403


async def test_a_vk_read_callback_opens_the_message_the_adapter_sent(dev_server, settings, any_db, unique_id):
    """The real VK adapter (against its double) sends; VK's `message_read` names the bare id."""
    vk = VkDouble()
    async with vk.serve():
        settings = settings.model_copy(
            update={
                "channel_vk": "vk",
                "vk": VkSettings(base_url=vk.url, access_token=SecretStr(vk.access_token)),
                "webhook_vk_secret": SecretStr(SECRET),
            }
        )
        async with (
            build_worker(dev_server.client, settings, any_db),
            serve_app(create_app(settings, client=dev_server.client, db=any_db)) as url,
            httpx.AsyncClient(base_url=url) as web,
        ):
            await seed(any_db, unique_id, vk="123456")
            journey = spec("vk", wait="1h", await_="opened")
            handle = await start_journey(unique_id, journey, client=dev_server.client, db=any_db, settings=settings)
            message_id = await _sent(any_db, handle)
            assert message_id.startswith("vk-") and len(vk.messages) == 1
            read = {
                "type": "message_read",
                "group_id": 1,
                "event_id": f"ev-{unique_id}",
                "secret": SECRET,
                "object": {"from_id": 123456, "peer_id": 123456, "read_message_id": int(message_id[3:])},
            }
            answer = await web.post("/v1/receipts/vk", json=read)
            assert answer.status_code == 200 and answer.text == "ok"
            # Real time on the dev server: the step waits an hour unless the read counts.
            result = await asyncio.wait_for(handle.result(), timeout=20)
    assert result.outcome == Outcome.REACTED and result.reaction == "opened"
    assert (await deliveries(any_db, handle.id))[0].opened_at is not None


async def test_a_blocked_telegram_bot_blocks_the_contact_and_stop_unsubscribes(web, any_db, unique_id):
    await seed(any_db, unique_id, telegram="5551", email="ann@example.com")
    headers = {"X-Telegram-Bot-Api-Secret-Token": SECRET}
    kicked = {
        "update_id": 7,
        "my_chat_member": {"chat": {"id": 5551, "type": "private"}, "new_chat_member": {"status": "kicked"}},
    }
    reply = await web.post("/v1/receipts/telegram", json=kicked, headers=headers)
    assert reply.status_code == 200 and reply.json() == {"status": "blocked"}
    # A blocked bot reaches nobody, not even with an order update.
    assert (await contact(any_db, unique_id, "telegram")).status == "blocked"
    again = await web.post("/v1/receipts/telegram", json=kicked, headers=headers)
    assert again.json() == {"status": "already blocked"}
    stranger = {"update_id": 8, "message": {"chat": {"id": 999}, "text": "/stop"}}
    assert (await web.post("/v1/receipts/telegram", json=stranger, headers=headers)).json() == {
        "status": "unknown contact"
    }
    assert (await contact(any_db, unique_id, "email")).status == "valid"


async def test_an_event_starts_the_journeys_it_triggers_and_a_purchase_ends_them(dev_server, web, any_db, unique_id):
    await seed(any_db, unique_id, email="ann@example.com")
    key, _ = await create_key(any_db, "shop1")
    cart = {"event_id": "cart-9", "customer_id": unique_id, "type": "cart_abandoned"}
    cart["properties"] = {"cart_id": "c9", "cart_value": 120}
    reply = await web.post("/v1/events", json=cart, headers={"X-API-Key": key})
    workflow_id = f"journey/abandoned_cart/{unique_id}/c9"
    assert reply.status_code == 202 and reply.json()["started"] == [workflow_id]
    # The same event again is a duplicate: nothing new starts.
    assert (await web.post("/v1/events", json=cart, headers={"X-API-Key": key})).json()["started"] == []

    purchase = {"event_id": "ord-9", "customer_id": unique_id, "type": "purchase", "properties": {"amount": 120}}
    bought = await web.post("/v1/events", json=purchase, headers={"X-API-Key": key})
    assert bought.status_code == 202 and workflow_id in bought.json()["signalled"]
    result = await dev_server.client.get_workflow_handle(workflow_id).result()
    assert result["outcome"] == Outcome.REACTED and result["reaction"] == "converted"


async def test_events_about_an_erased_customer_write_nothing_back(web, any_db, unique_id):
    await seed(any_db, unique_id, email="ann@example.com")
    await erase_customer(any_db, unique_id)
    key, _ = await create_key(any_db, "shop1")
    viewed = {"event_id": "v-9", "customer_id": unique_id, "type": "page_viewed", "properties": {"url": "https://s/p"}}
    reply = await web.post("/v1/events", json=viewed, headers={"X-API-Key": key})
    assert reply.status_code == 404
    async with any_db.session() as session:
        customer = await session.get(Customer, unique_id)
    assert customer is not None and customer.attributes == {}
    assert await _events(any_db) == []


async def test_a_retry_after_a_failed_routing_starts_the_journeys(dev_server, web, any_db, unique_id, monkeypatch):
    from temporalio.service import RPCError, RPCStatusCode

    import webhooks.api_events as api_events

    await seed(any_db, unique_id, email="ann@example.com")
    key, _ = await create_key(any_db, "shop1")
    from cascade.journeys.triggers import start_planned as real_start

    async def engine_down(*args: Any, **kwargs: Any) -> Any:
        raise RPCError("connection refused", RPCStatusCode.UNAVAILABLE, b"")

    monkeypatch.setattr(api_events, "start_planned", engine_down)
    cart = {"event_id": "cart-7", "customer_id": unique_id, "type": "cart_abandoned"}
    cart["properties"] = {"cart_id": "c7", "cart_value": 30}
    failed = await web.post("/v1/events", json=cart, headers={"X-API-Key": key})
    assert failed.status_code == 503 and "retry" in failed.json()["error"]
    assert [e.event_id for e in await _events(any_db)] == ["shop1:cart-7"]  # stored once

    monkeypatch.setattr(api_events, "start_planned", real_start)
    retried = await web.post("/v1/events", json=cart, headers={"X-API-Key": key})
    assert retried.status_code == 202 and retried.json()["status"] == "duplicate"
    assert retried.json()["started"] == [f"journey/abandoned_cart/{unique_id}/c7"]
    # Routed now: a third delivery of the same event does nothing.
    assert (await web.post("/v1/events", json=cart, headers={"X-API-Key": key})).json()["started"] == []
    await dev_server.client.get_workflow_handle(f"journey/abandoned_cart/{unique_id}/c7").cancel()

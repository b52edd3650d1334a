"""The journey activities against a real database: SQLite always, PostgreSQL when reachable."""

from __future__ import annotations

import asyncio

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.journey import JourneyActivities
from cascade.infra.db import Database
from cascade.infra.settings import Settings
from channels.base import Channel, OutboundMessage, SendReceipt
from channels.registry import build_channels
from channels.sandbox import SandboxChannel
from models.activities import CheckContactInput, SendMessageInput
from models.journey import ChannelName, MessageContent
from models.profiles import ContactIn
from models.tables import ContactStatus
from tests.conftest import seed
from tests.helpers import contact, deliveries, outbox


def _acts(db: Database) -> JourneyActivities:
    settings = Settings()
    return JourneyActivities(db, build_channels(settings, db), settings)


def _send_input(cid: str, channel: str = "email", step: int = 0) -> SendMessageInput:
    return SendMessageInput(
        idempotency_key=f"journey/t/{cid}/run-1/{step}",
        workflow_id=f"journey/t/{cid}",
        run_id="run-1",
        journey="t",
        step=step,
        customer_id=cid,
        channel=ChannelName(channel),
        content=MessageContent(subject="Hi {{ name }}", body="Hello {{ name }}, {{ city }}"),
        context={"city": "Kazan"},
    )


async def test_check_contact_reports_why_not(any_db, unique_id):
    await seed(
        any_db,
        unique_id,
        email="ann@example.com",
        sms=ContactIn(channel="sms", address="+14155552671", status=ContactStatus.BOUNCED),
        telegram=ContactIn(channel="telegram", address="1", consent=False),
    )
    env, acts = ActivityEnvironment(), _acts(any_db)

    async def check(channel: str, customer: str = unique_id):
        return await env.run(acts.check_contact, CheckContactInput(customer_id=customer, channel=channel))

    ok = await check("email")
    assert ok.usable and ok.reason is None and ok.contact_point_id is not None
    assert (await check("sms")).reason == "contact bounced"
    assert (await check("telegram")).reason == "no consent"
    assert (await check("viber")).reason == "no viber contact"
    assert (await check("email", "nobody")).reason == "unknown customer"


async def test_prefers_the_usable_contact_point(any_db, unique_id):
    await seed(
        any_db,
        unique_id,
        email=ContactIn(channel="email", address="old@example.com", status=ContactStatus.BOUNCED),
    )
    await seed(any_db, unique_id, email="new@example.com")
    result = await ActivityEnvironment().run(
        _acts(any_db).check_contact, CheckContactInput(customer_id=unique_id, channel=ChannelName.EMAIL)
    )
    assert result.usable


async def test_send_twice_with_one_key_sends_once(any_db, unique_id):
    await seed(any_db, unique_id, email="ann@example.com")
    env, acts = ActivityEnvironment(), _acts(any_db)
    first = await env.run(acts.send_message, _send_input(unique_id))
    again = await env.run(acts.send_message, _send_input(unique_id))
    assert first.status == again.status == "sent"
    assert again.duplicate and again.message_id == first.message_id
    sent = await outbox(any_db, "ann@")
    assert len(sent) == 1
    assert sent[0].subject == "Hi Ann" and sent[0].body.startswith("Hello Ann, Kazan\n\nUnsubscribe: http")
    [row] = await deliveries(any_db, f"journey/t/{unique_id}")
    assert row.status == "sent" and row.provider_message_id == first.message_id
    assert row.cost == Settings().channel_costs["email"] and row.content_hash


class CountingChannel:
    """Wraps a channel and counts provider calls (a slow provider, to widen the race)."""

    def __init__(self, inner: Channel) -> None:
        self.name, self.inner, self.calls = inner.name, inner, 0
        self.idempotent = inner.idempotent

    async def send(self, message: OutboundMessage) -> SendReceipt:
        self.calls += 1
        await asyncio.sleep(0.2)
        return await self.inner.send(message)


async def test_concurrent_attempts_call_the_provider_once(any_db, unique_id):
    """A retry racing a slow first attempt must not reach the provider a second time."""
    await seed(any_db, unique_id, email="ann@example.com")
    settings = Settings()
    counting = CountingChannel(SandboxChannel("email", any_db))
    acts = JourneyActivities(any_db, {"email": counting}, settings)
    results = await asyncio.gather(
        *(ActivityEnvironment().run(acts.send_message, _send_input(unique_id)) for _ in range(4)),
        return_exceptions=True,
    )
    assert counting.calls == 1
    sent = [r for r in results if not isinstance(r, BaseException)]
    busy = [r for r in results if isinstance(r, ApplicationError)]
    assert len(sent) + len(busy) == 4 and sent
    assert all(r.status == "sent" for r in sent)
    assert all(e.type == "SendInProgress" and not e.non_retryable for e in busy)
    # Once the first attempt finished, a retry gets its result without a new call.
    again = await ActivityEnvironment().run(acts.send_message, _send_input(unique_id))
    assert again.duplicate and counting.calls == 1
    assert len(await outbox(any_db, "ann@")) == 1
    [row] = await deliveries(any_db, f"journey/t/{unique_id}")
    assert row.status == "sent" and row.claimed_until is None


async def test_permanent_failure_marks_the_contact(any_db, unique_id):
    await seed(any_db, unique_id, sms="+15005550001")
    result = await ActivityEnvironment().run(_acts(any_db).send_message, _send_input(unique_id, "sms"))
    # The workflow is told a code; the provider's words stay in the delivery log.
    assert result.status == "failed" and result.reason == "invalid_address"
    point = await contact(any_db, unique_id, "sms")
    assert point.status == ContactStatus.INVALID and "21211" in (point.status_reason or "")
    [row] = await deliveries(any_db, f"journey/t/{unique_id}")
    assert row.status == "failed" and row.failed_at is not None
    assert row.failure_code == "invalid_address" and "21211" in (row.failure_reason or "")
    assert await outbox(any_db) == []
    # Loading the same profile again does not clear what the provider told us ...
    await seed(any_db, unique_id, sms="+15005550001")
    assert (await contact(any_db, unique_id, "sms")).status == ContactStatus.INVALID
    # ... only an explicit status does.
    await seed(any_db, unique_id, sms=ContactIn(channel="sms", address="+15005550001", status=ContactStatus.VALID))
    assert (await contact(any_db, unique_id, "sms")).status == ContactStatus.VALID


async def test_consent_withdrawn_after_the_check_means_no_send(any_db, unique_id):
    await seed(any_db, unique_id, email="ann@example.com")
    await seed(
        any_db,
        unique_id,
        email=ContactIn(channel="email", address="ann@example.com", status=ContactStatus.UNSUBSCRIBED),
    )
    result = await ActivityEnvironment().run(_acts(any_db).send_message, _send_input(unique_id))
    assert result.status == "skipped" and result.reason == "contact unsubscribed"
    assert await outbox(any_db) == []
    assert await deliveries(any_db, f"journey/t/{unique_id}") == []


@pytest.mark.parametrize("url", ["mysql://x/y", "oracle://a"])
def test_unsupported_database_urls_are_refused(url):
    with pytest.raises(ValueError, match="unsupported database"):
        Database.from_url(url)

"""CascadeJourney on the time-skipping test server with the real activities and SQLite.

Days of waiting pass in milliseconds: the server skips time whenever the only thing
left to do is a timer.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from temporalio.client import Client
from temporalio.service import RPCError

from analytics.funnel import FunnelQuery, funnel
from cascade.infra.db import Database
from cascade.infra.settings import Settings
from cascade.profiles.service import upsert_customer
from channels.base import Channel, OutboundMessage, SendReceipt, UnknownOutcomeError
from channels.registry import build_channels
from channels.sandbox import SandboxChannel
from models import search_attributes as sa
from models.events import CancelInput, EngagementInput, EngagementType
from models.journey import Outcome, StepStatus
from models.profiles import ContactIn, CustomerProfile
from models.tables import ContactStatus, Customer
from starter import TemplateFieldError, UnknownCustomerError, start_journey
from tests.conftest import seed
from tests.helpers import contact, deliveries, outbox, spec, wait_for_state
from worker import build_worker
from workflows.cascade import CascadeJourney

DAY = timedelta(days=1)
THREE = ("email", "telegram", "sms")


@pytest.fixture
async def run_worker(client: Client, settings: Settings, db: Database) -> AsyncIterator[None]:
    async with build_worker(client, settings, db):
        yield


async def _seed_all(db: Database, cid: str) -> None:
    await seed(db, cid, email=f"{cid}@example.com", telegram="100200300", sms="+14155552671")


async def _start(client: Client, db: Database, settings: Settings, cid: str, **kw):
    journey = kw.pop("journey", None) or spec(*THREE)
    return await start_journey(cid, journey, client=client, db=db, settings=settings, **kw)


async def test_reaction_on_first_step_stops_the_cascade(client, db, settings, run_worker, unique_id):
    await _seed_all(db, unique_id)
    handle = await _start(client, db, settings, unique_id)
    state = await wait_for_state(handle, lambda s: s.status == "waiting")
    assert state.current_step == 0 and state.steps[0].status == StepStatus.SENT

    await handle.signal(CascadeJourney.engagement, EngagementInput(type=EngagementType.OPENED, step=0))
    result = await handle.result()

    assert result.outcome == Outcome.REACTED
    assert result.reacted_step == 0 and result.reaction == "opened"
    assert [s.status for s in result.steps] == [StepStatus.SENT, StepStatus.PENDING, StepStatus.PENDING]
    sent = await outbox(db, unique_id)
    assert [m.channel for m in sent] == ["email"]
    assert sent[0].subject == "Hi Ann" and sent[0].body.startswith("email: hello, Ann!\n\nUnsubscribe: http")


async def test_full_escalation_when_nobody_reacts(client, db, settings, run_worker, unique_id):
    await _seed_all(db, unique_id)
    handle = await _start(client, db, settings, unique_id)
    result = await handle.result()

    assert result.outcome == Outcome.EXHAUSTED
    assert all(s.status == StepStatus.SENT for s in result.steps)
    sent = await outbox(db)
    assert [m.channel for m in sent] == list(THREE)
    assert [m.to_address for m in sent] == [f"{unique_id}@example.com", "100200300", "+14155552671"]
    # Each escalation happened one (virtual) day after the previous send.
    times = [s.sent_at for s in result.steps]
    assert all(t is not None for t in times)
    assert abs((times[1] - times[0]) - DAY) < timedelta(minutes=1)
    assert abs((times[2] - times[1]) - DAY) < timedelta(minutes=1)
    assert result.finished_at - times[2] >= DAY
    log = await deliveries(db, handle.id)
    assert [(d.step, d.channel, d.status) for d in log] == [
        (0, "email", "sent"),
        (1, "telegram", "sent"),
        (2, "sms", "sent"),
    ]
    assert [d.cost for d in log] == [settings.channel_costs[c] for c in THREE]


async def test_unusable_contacts_are_skipped_without_waiting(client, db, settings, run_worker, unique_id):
    await seed(
        db,
        unique_id,
        email=ContactIn(channel="email", address="ann@example.com", status=ContactStatus.UNSUBSCRIBED),
        telegram=ContactIn(channel="telegram", address="42", consent=False),
        sms="+14155552671",
    )
    handle = await _start(client, db, settings, unique_id)
    result = await handle.result()

    assert [s.status for s in result.steps] == [StepStatus.SKIPPED, StepStatus.SKIPPED, StepStatus.SENT]
    assert result.steps[0].reason == "contact unsubscribed"
    assert result.steps[1].reason == "no consent"
    assert result.steps[2].sent_at - result.started_at < timedelta(minutes=1)
    assert [m.channel for m in await outbox(db)] == ["sms"]
    # The run hands its skipped steps to the funnel when it ends (no delivery row has them).
    by_step = {r.key["step"]: r for r in await funnel(db, FunnelQuery(by=["step"]))}
    assert by_step[0].skipped_by_reason == {"contact unsubscribed": 1} and by_step[0].messages == 0
    assert by_step[1].skipped_by_reason == {"no consent": 1}
    assert (by_step[2].skipped, by_step[2].sent) == (0, 1)


async def test_customer_without_any_usable_contact_is_unreachable(client, db, settings, run_worker, unique_id):
    await seed(db, unique_id, vk="id777")
    result = await (await _start(client, db, settings, unique_id)).result()
    assert result.outcome == Outcome.UNREACHABLE
    assert [s.reason for s in result.steps] == ["no email contact", "no telegram contact", "no sms contact"]
    assert result.finished_at - result.started_at < timedelta(minutes=1)


async def test_permanent_failure_marks_contact_and_moves_on(client, db, settings, run_worker, unique_id):
    await seed(db, unique_id, email="ann+bounce@example.com", telegram="blocked-1", sms="+14155552671")
    result = await (await _start(client, db, settings, unique_id)).result()

    assert [s.status for s in result.steps] == [StepStatus.FAILED, StepStatus.FAILED, StepStatus.SENT]
    assert [s.reason for s in result.steps[:2]] == ["bounced", "blocked"]
    assert (await contact(db, unique_id, "email")).status == ContactStatus.BOUNCED
    assert (await contact(db, unique_id, "telegram")).status == ContactStatus.BLOCKED
    # Failures do not wait: the SMS went out at once.
    assert result.steps[2].sent_at - result.started_at < timedelta(minutes=1)
    log = await deliveries(db, f"journey/test/{unique_id}")
    assert [d.status for d in log] == ["failed", "failed", "sent"]


async def test_deadline_ends_the_journey(client, db, settings, run_worker, unique_id, ts_env):
    await _seed_all(db, unique_id)
    deadline = await ts_env.get_current_time() + timedelta(hours=36)
    result = await (await _start(client, db, settings, unique_id, deadline=deadline)).result()

    assert result.outcome == Outcome.DEADLINE
    assert [s.status for s in result.steps] == [StepStatus.SENT, StepStatus.SENT, StepStatus.PENDING]
    assert abs(result.finished_at - deadline) < timedelta(minutes=1)
    assert [m.channel for m in await outbox(db)] == ["email", "telegram"]


async def test_valid_for_in_the_definition_sets_the_deadline(client, db, settings, run_worker, unique_id):
    await _seed_all(db, unique_id)
    journey = spec(*THREE, valid_for="12h")
    result = await (await _start(client, db, settings, unique_id, journey=journey)).result()
    assert result.outcome == Outcome.DEADLINE
    assert abs((result.finished_at - result.started_at) - timedelta(hours=12)) < timedelta(minutes=1)
    assert [m.channel for m in await outbox(db)] == ["email"]


async def test_cancel_signal_stops_before_the_next_send(client, db, settings, run_worker, unique_id):
    await _seed_all(db, unique_id)
    handle = await _start(client, db, settings, unique_id)
    await wait_for_state(handle, lambda s: s.status == "waiting")
    await handle.signal(CascadeJourney.cancel, CancelInput(reason="customer called support"))
    result = await handle.result()
    assert result.outcome == Outcome.CANCELLED
    assert result.outcome_reason == "customer called support"
    assert [m.channel for m in await outbox(db)] == ["email"]


async def test_unsubscribe_ends_and_bounce_moves_on(client, db, settings, run_worker, unique_id):
    await _seed_all(db, unique_id)
    handle = await _start(client, db, settings, unique_id)
    await wait_for_state(handle, lambda s: s.status == "waiting")
    await handle.signal(CascadeJourney.engagement, EngagementInput(type=EngagementType.BOUNCED, step=0))
    state = await wait_for_state(handle, lambda s: s.current_step == 1 and s.status == "waiting")
    # The bounce moved the cascade on without waiting out the day.
    assert state.steps[1].sent_at - state.steps[0].sent_at < timedelta(minutes=1)  # type: ignore[operator]
    await handle.signal(CascadeJourney.engagement, EngagementInput(type=EngagementType.UNSUBSCRIBED, step=1))
    result = await handle.result()
    assert result.outcome == Outcome.UNSUBSCRIBED
    assert [m.channel for m in await outbox(db)] == ["email", "telegram"]


async def test_reaction_to_an_earlier_step_counts_and_weaker_ones_do_not(
    client, db, settings, run_worker, unique_id, ts_env
):
    await _seed_all(db, unique_id)
    handle = await _start(client, db, settings, unique_id)
    await wait_for_state(handle, lambda s: s.status == "waiting")
    # "delivered" is weaker than the awaited "opened": recorded, but the cascade goes on.
    await handle.signal(CascadeJourney.engagement, EngagementInput(type=EngagementType.DELIVERED, step=0))
    state = await wait_for_state(handle, lambda s: s.steps[0].reaction == "delivered")
    assert state.outcome is None
    # Let the day pass (skipped, not slept): the cascade escalates to Telegram ...
    await ts_env.sleep(DAY + timedelta(minutes=1))
    await wait_for_state(handle, lambda s: s.current_step == 1 and s.status == "waiting")
    # ... and then the email is opened after all: a reaction to an earlier step counts.
    await handle.signal(CascadeJourney.engagement, EngagementInput(type=EngagementType.OPENED, step=0))
    result = await handle.result()
    assert result.outcome == Outcome.REACTED and result.reacted_step == 0
    assert result.steps[2].status == StepStatus.PENDING


async def test_reactions_to_steps_not_sent_in_this_run_are_ignored(client, db, settings, run_worker, unique_id):
    await _seed_all(db, unique_id)
    handle = await _start(client, db, settings, unique_id)
    await wait_for_state(handle, lambda s: s.status == "waiting")
    await handle.signal(CascadeJourney.engagement, EngagementInput(type=EngagementType.CLICKED, step=2))
    await handle.signal(CascadeJourney.engagement, EngagementInput(type=EngagementType.OPENED, step=7))
    state = await handle.query(CascadeJourney.state)
    assert state.outcome is None and all(s.reaction is None for s in state.steps)
    await handle.signal(CascadeJourney.cancel, CancelInput())
    assert (await handle.result()).outcome == Outcome.CANCELLED


async def test_a_purchase_before_the_first_message_ends_the_journey(client, db, settings, unique_id):
    await _seed_all(db, unique_id)
    # No worker yet: the journey cannot have sent anything when the order arrives.
    handle = await _start(client, db, settings, unique_id)
    await handle.signal(CascadeJourney.engagement, EngagementInput(type=EngagementType.CONVERTED))
    async with build_worker(client, settings, db):
        result = await handle.result()
    assert result.outcome == Outcome.REACTED and result.reaction == "converted"
    assert result.outcome_reason == "converted before the first message"
    assert await outbox(db, unique_id) == []


async def test_query_reports_where_the_journey_stands(client, db, settings, run_worker, unique_id):
    await _seed_all(db, unique_id)
    handle = await _start(client, db, settings, unique_id)
    state = await wait_for_state(handle, lambda s: s.status == "waiting")
    log = await deliveries(db, handle.id)
    assert state.journey == "test" and state.customer_id == unique_id
    assert state.current_step == 0 and state.current_channel == "email"
    assert state.steps[0].message_id == log[0].provider_message_id
    desc = await handle.describe()
    assert desc.typed_search_attributes.get(sa.CUSTOMER_ID) == unique_id
    assert desc.typed_search_attributes.get(sa.JOURNEY_STATUS) == "waiting"
    assert desc.typed_search_attributes.get(sa.CHANNEL) == "email"
    await handle.signal(CascadeJourney.cancel, CancelInput())
    await handle.result()
    desc = await handle.describe()
    assert desc.typed_search_attributes.get(sa.JOURNEY_STATUS) == "cancelled"


async def test_duplicate_start_returns_the_running_journey(client, db, settings, run_worker, unique_id):
    await _seed_all(db, unique_id)
    first = await _start(client, db, settings, unique_id)
    second = await _start(client, db, settings, unique_id)
    assert first.id == second.id == f"journey/test/{unique_id}"
    assert first.result_run_id == second.result_run_id
    # Converted only once the first message is out: a conversion during the contact
    # check rightly stops the send (stop-before-send), which would make the count 0.
    await wait_for_state(first, lambda s: s.status == "waiting")
    await first.signal(CascadeJourney.engagement, EngagementInput(type=EngagementType.CONVERTED))
    await first.result()
    assert len(await outbox(db, unique_id)) == 1
    # With a key, the same journey may run again beside it (one per cart, say).
    keyed = await _start(client, db, settings, unique_id, key="cart-9")
    assert keyed.id == f"journey/test/{unique_id}/cart-9"
    await keyed.signal(CascadeJourney.cancel, CancelInput())
    await keyed.result()


class AcceptThenTimeOut:
    """A provider that accepts the message but whose answer is lost the first time."""

    def __init__(self, inner: Channel) -> None:
        self.name = inner.name
        self.idempotent = inner.idempotent
        self.inner = inner
        self.calls = 0

    async def send(self, message: OutboundMessage) -> SendReceipt:
        self.calls += 1
        receipt = await self.inner.send(message)
        if self.calls == 1:
            raise UnknownOutcomeError("read timeout after the request was sent")
        return receipt


async def test_retried_send_does_not_send_twice(client, db, settings, unique_id):
    await _seed_all(db, unique_id)
    channels: dict[str, Channel] = dict(build_channels(settings, db))
    flaky = AcceptThenTimeOut(SandboxChannel("email", db))
    channels["email"] = flaky
    async with build_worker(client, settings, db, channels):
        handle = await _start(client, db, settings, unique_id)
        state = await wait_for_state(handle, lambda s: s.status == "waiting")
        await handle.signal(CascadeJourney.engagement, EngagementInput(type=EngagementType.CLICKED, step=0))
        await handle.result()
    # The sandbox honours the key: the lost answer is retried with it ...
    assert flaky.calls == 2
    sent = await outbox(db, unique_id)
    assert len(sent) == 1  # ... and the customer got one email
    assert state.steps[0].message_id == sent[0].provider_message_id


class ReceiptOvertakesResult:
    """A provider whose "opened" receipt reaches the journey before the send's own result."""

    def __init__(self, inner: Channel, client: Client) -> None:
        self.name, self.inner, self.client = inner.name, inner, client
        self.idempotent = inner.idempotent

    async def send(self, message: OutboundMessage) -> SendReceipt:
        receipt = await self.inner.send(message)
        workflow_id = message.idempotency_key.rsplit("/", 2)[0]
        await self.client.get_workflow_handle(workflow_id).signal(
            CascadeJourney.engagement, EngagementInput(type=EngagementType.OPENED, step=0)
        )
        await asyncio.sleep(0.3)
        return receipt


async def test_a_receipt_that_overtakes_the_send_result_still_counts(client, db, settings, unique_id):
    await _seed_all(db, unique_id)
    channels: dict[str, Channel] = dict(build_channels(settings, db))
    channels["email"] = ReceiptOvertakesResult(SandboxChannel("email", db), client)
    async with build_worker(client, settings, db, channels):
        result = await (await _start(client, db, settings, unique_id)).result()
    assert result.outcome == Outcome.REACTED and result.reacted_step == 0
    assert result.finished_at - result.started_at < timedelta(hours=1)
    assert [m.channel for m in await outbox(db)] == ["email"]


async def test_a_template_field_nobody_has_is_refused_at_start(client, db, settings, run_worker, unique_id):
    await _seed_all(db, unique_id)
    journey = spec("email", "sms")
    journey.steps[0].content.body = "Your code: {{ coupon }}"
    with pytest.raises(TemplateFieldError, match=r"steps\.0\.content\.body.*'coupon'"):
        await _start(client, db, settings, unique_id, journey=journey)
    with pytest.raises(RPCError):
        await client.get_workflow_handle(f"journey/test/{unique_id}").describe()
    assert await outbox(db) == []


async def test_a_field_gone_by_send_time_fails_its_step_and_the_cascade_goes_on(
    client, db, settings, run_worker, unique_id, ts_env
):
    await _seed_all(db, unique_id)
    await upsert_customer(db, CustomerProfile(id=unique_id, attributes={"coupon": "SAVE5"}))
    journey = spec("email", "sms", wait="1d")
    journey.steps[1].content.body = "Your code: {{ coupon }}"
    handle = await _start(client, db, settings, unique_id, journey=journey)
    await wait_for_state(handle, lambda s: s.status == "waiting")
    # The attribute disappears while the journey waits (an admin edit, an import).
    async with db.session() as session:
        customer = await session.get(Customer, unique_id)
        assert customer is not None
        customer.attributes = {}
        session.add(customer)
    result = await handle.result()
    assert result.steps[1].status == StepStatus.FAILED
    assert "coupon" in (result.steps[1].reason or "")
    assert [m.channel for m in await outbox(db)] == ["email"]


async def test_context_fields_reach_the_template(client, db, settings, run_worker, unique_id):
    await _seed_all(db, unique_id)
    journey = spec("email")
    journey.steps[0].content.body = "{{ name }}, use {{ coupon }}"
    result = await (
        await _start(client, db, settings, unique_id, journey=journey, context={"coupon": "SAVE5"})
    ).result()
    assert result.outcome == Outcome.EXHAUSTED
    assert (await outbox(db))[0].body.startswith("Ann, use SAVE5\n\nUnsubscribe: ")


async def test_unknown_customer_starts_nothing(client, db, settings, unique_id):
    with pytest.raises(UnknownCustomerError, match=unique_id):
        await _start(client, db, settings, unique_id)
    with pytest.raises(RPCError):
        await client.get_workflow_handle(f"journey/test/{unique_id}").describe()

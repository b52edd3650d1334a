"""What a send's outcome does to the delivery log and the journey (issue 11, items 2, 3, 6, 16, 19).

Ambiguous provider outcomes (the request went out, no answer came back), a stop
that arrives during the contact check, early events of a skipped step, the
frequency cap under concurrent journeys, provider texts kept out of histories, and
configuration errors. Provider doubles are real HTTP/SMTP servers on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import os
import sys
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from sqlalchemy import event
from sqlmodel import select
from structlog.testing import capture_logs
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment

from activities.journey import JourneyActivities
from cascade.infra.db import Database
from cascade.infra.settings import PROJECT_ROOT, Settings, SmtpSettings, TelegramSettings, VkSettings
from cascade.infra.temporal import register_search_attributes
from channels.base import Channel, OutboundMessage, TransientSendError, UnknownOutcomeError
from channels.email import SmtpChannel
from channels.registry import build_channels
from channels.sandbox import SandboxChannel
from channels.telegram import TelegramChannel
from channels.vk import VkChannel
from models.activities import CheckContactInput, SendMessageInput, SettleDeliveryInput, StepRules
from models.events import CancelInput, EngagementInput, EngagementType
from models.journey import ChannelName, FrequencyCap, MessageContent, Outcome, StepStatus
from models.runs import RecordRunStartedInput
from models.tables import ChannelHealth, Delivery, JourneyRun
from starter import start_journey
from tests.codec import CODEC_CONVERTER, decrypt_history
from tests.conftest import binary, quiet_runtime, seed
from tests.doubles.sends import AnswerLost, DiesAfterTheCall, FirstSendStarted, SignalDuringCheck, SlowProvider
from tests.doubles.smtp import SmtpDouble, smtp_server
from tests.doubles.telegram import TelegramDouble
from tests.doubles.vk import VkDouble
from tests.helpers import deliveries, outbox, spec, wait_for_state
from worker import build_worker
from workflows.cascade import CascadeJourney

DAY = timedelta(days=1)
# The claim's lease (the heartbeat timeout) in the lease tests: short enough to wait out,
# long enough that a loaded machine does not end it between two steps of a test.
LEASE = 1.5


def _input(cid: str, channel: str = "telegram", journey: str = "t", **extra: Any) -> SendMessageInput:
    return SendMessageInput(
        idempotency_key=f"journey/{journey}/{cid}/run-1/0",
        workflow_id=f"journey/{journey}/{cid}",
        run_id="run-1",
        journey=journey,
        step=0,
        customer_id=cid,
        channel=ChannelName(channel),
        content=MessageContent(subject="Hi {{ name }}", body="Hello {{ name }}"),
        **extra,
    )


def _env(heartbeat: float | None = None, attempt: float = 5.0) -> ActivityEnvironment:
    """An activity environment with the timeouts a workflow would give the send."""
    env = ActivityEnvironment()
    env.info = dataclasses.replace(
        ActivityEnvironment.default_info(),
        heartbeat_timeout=timedelta(seconds=heartbeat) if heartbeat else None,
        start_to_close_timeout=timedelta(seconds=attempt),
    )
    return env


def _acts(db: Database, **channels: Channel) -> JourneyActivities:
    settings = Settings()
    return JourneyActivities(db, {**build_channels(settings, db), **channels}, settings)


@pytest.fixture
async def telegram() -> AsyncIterator[TelegramDouble]:
    double = TelegramDouble()
    async with double.serve():
        yield double


@pytest.fixture
async def vk() -> AsyncIterator[VkDouble]:
    double = VkDouble()
    async with double.serve():
        yield double


@pytest.fixture
def smtp(tmp_path: Path) -> Iterator[tuple[SmtpDouble, SmtpSettings]]:
    double = SmtpDouble()
    with smtp_server(double, tmp_path) as (port, ca):
        yield (
            double,
            SmtpSettings(
                host="127.0.0.1",
                port=port,
                username=double.username,
                password=SecretStr(double.password),
                ca_file=str(ca),
                timeout_seconds=1.0,
            ),
        )


def _telegram(double: TelegramDouble, token: str | None = None, timeout: float = 5.0) -> TelegramChannel:
    return TelegramChannel(
        TelegramSettings(base_url=double.url, bot_token=SecretStr(token or double.token), timeout_seconds=timeout)
    )


# --- Item 2: which failures may have reached the provider ---------------------------------


async def test_http_failures_are_sorted_by_whether_the_request_went_out(telegram):
    # The provider took the message and its answer never came: may have been sent.
    telegram.answer_delay = 2.0
    slow = _telegram(telegram, timeout=0.5)
    with pytest.raises(UnknownOutcomeError, match="no answer after the request was sent"):
        await slow.send(OutboundMessage(channel="telegram", to="1001", body="hi", idempotency_key="k/1"))
    await slow.aclose()
    assert len(telegram.messages) == 1

    # Nothing listens: the request never left, so a retry is safe.
    refused = TelegramChannel(TelegramSettings(base_url="http://127.0.0.1:9", bot_token=SecretStr("1:x")))
    with pytest.raises(TransientSendError):
        await refused.send(OutboundMessage(channel="telegram", to="1001", body="hi", idempotency_key="k/2"))
    await refused.aclose()

    # A server that reads the whole request and hangs up without answering (a reset).
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.transport.abort()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reset = TelegramChannel(TelegramSettings(base_url=f"http://127.0.0.1:{port}", bot_token=SecretStr("1:x")))
    try:
        with pytest.raises(UnknownOutcomeError):
            await reset.send(OutboundMessage(channel="telegram", to="1001", body="hi", idempotency_key="k/3"))
    finally:
        await reset.aclose()
        server.close()


async def test_smtp_lost_after_the_message_data_is_unknown_before_it_a_retry(smtp):
    double, settings = smtp
    double.answer_delay = 3.0  # "250 queued" comes after our 1 s timeout
    channel = SmtpChannel(settings)
    message = OutboundMessage(channel="email", to="ann@example.com", subject="Hi", body="hi", idempotency_key="k/1")
    try:
        with pytest.raises(UnknownOutcomeError, match="after the message data"):
            await channel.send(message)
        assert len(double.messages) == 1  # the relay has it
        # Refused at RCPT: the relay answered before any data went out.
        with pytest.raises(TransientSendError, match="451"):
            await channel.send(dataclasses.replace(message, to="grey@example.com"))
    finally:
        await channel.aclose()
    assert len(double.messages) == 1


async def test_an_unknown_outcome_without_provider_keys_is_recorded_once_and_never_repeated(
    any_db, unique_id, telegram
):
    await seed(any_db, unique_id, telegram="1001")
    telegram.answer_delay = 2.0
    acts = _acts(any_db, telegram=_telegram(telegram, timeout=0.5))
    first = await _env(heartbeat=10).run(acts.send_message, _input(unique_id))
    assert first.status == "unknown" and first.reason == "outcome_unknown"
    [row] = await deliveries(any_db, f"journey/t/{unique_id}")
    assert row.status == "unknown" and row.claimed_until is None and row.failure_code == "outcome_unknown"
    assert "no answer after the request was sent" in (row.failure_reason or "")
    # Temporal retrying the activity (or a replay) gets the same answer, no second call.
    again = await _env(heartbeat=10).run(acts.send_message, _input(unique_id))
    assert again.status == "unknown"
    assert len(telegram.received) == 1 and len(telegram.messages) == 1
    settled = await _env().run(acts.settle_delivery, SettleDeliveryInput(idempotency_key=row.idempotency_key))
    assert settled.status == "unknown"


async def test_an_unknown_outcome_on_vk_is_retried_with_the_same_random_id(any_db, unique_id, vk):
    await seed(any_db, unique_id, vk="7001")
    vk.answer_delay = 2.0
    channel = VkChannel(VkSettings(base_url=vk.url, access_token=SecretStr(vk.access_token), timeout_seconds=0.5))
    acts = _acts(any_db, vk=channel)
    with pytest.raises(ApplicationError) as lost:
        await _env(heartbeat=10).run(acts.send_message, _input(unique_id, "vk"))
    assert lost.value.type == "SendOutcomeUnknown" and not lost.value.non_retryable
    assert lost.value.message == "vk: outcome_unknown"  # no provider text in the history
    vk.answer_delay = 0.0
    result = await _env(heartbeat=10).run(acts.send_message, _input(unique_id, "vk"))
    assert result.status == "sent" and result.message_id == "vk-1"
    assert len(vk.received) == 2 and len(vk.messages) == 1
    assert len({r.form()["random_id"] for r in vk.received}) == 1
    [row] = await deliveries(any_db, f"journey/t/{unique_id}")
    assert row.status == "sent" and row.attempts == 2
    await channel.aclose()


@pytest.mark.parametrize("idempotent", [True, False], ids=["keyed-provider", "provider-without-keys"])
async def test_a_crash_between_the_call_and_the_sent_update(any_db, unique_id, idempotent):
    await seed(any_db, unique_id, email="ann@example.com")
    channel = DiesAfterTheCall(SandboxChannel("email", any_db), idempotent=idempotent)
    acts = _acts(any_db, email=channel)
    with pytest.raises(RuntimeError):
        await _env(heartbeat=LEASE).run(acts.send_message, _input(unique_id, "email"))
    [row] = await deliveries(any_db, f"journey/t/{unique_id}")
    assert row.status == "queued" and row.claimed_until is not None  # the dead attempt's claim
    # Before the lease (the heartbeat timeout) ends, another attempt waits.
    with pytest.raises(ApplicationError) as busy:
        await _env(heartbeat=LEASE).run(acts.send_message, _input(unique_id, "email"))
    assert busy.value.type == "SendInProgress"
    await asyncio.sleep(LEASE + 0.3)
    retry = await _env(heartbeat=LEASE).run(acts.send_message, _input(unique_id, "email"))
    if idempotent:
        # Called again with the same key; the provider answered with the first message.
        assert retry.status == "sent" and retry.duplicate and channel.calls == 2
    else:
        assert retry.status == "unknown" and channel.calls == 1
    assert len(await outbox(any_db, "ann@")) == 1
    [row] = await deliveries(any_db, f"journey/t/{unique_id}")
    assert row.status == ("sent" if idempotent else "unknown")


async def test_settling_asks_the_delivery_log(any_db, unique_id):
    await seed(any_db, unique_id, email="ann@example.com")
    channel = DiesAfterTheCall(SandboxChannel("email", any_db), idempotent=True)
    acts = _acts(any_db, email=channel)
    key = _input(unique_id, "email").idempotency_key

    async def settle(k: str = key) -> Any:
        return await _env().run(acts.settle_delivery, SettleDeliveryInput(idempotency_key=k))

    assert (await settle("journey/none/x/run/0")).status == "not_sent"
    with pytest.raises(RuntimeError):
        await _env(heartbeat=LEASE).run(acts.send_message, _input(unique_id, "email"))
    with pytest.raises(ApplicationError, match="still running"):
        await settle()  # the claim is live: an attempt may still finish
    await asyncio.sleep(LEASE + 0.3)
    settled = await settle()
    assert settled.status == "unknown" and settled.reason == "outcome_unknown"
    [row] = await deliveries(any_db, f"journey/t/{unique_id}")
    assert row.status == "unknown"
    # A message that did go out (its attempt's result lost to Temporal) is `sent`.
    delivered = await _env(heartbeat=5).run(acts.send_message, _input(unique_id, "email", "other"))
    assert delivered.status == "sent"
    settled = await settle(_input(unique_id, "email", "other").idempotency_key)
    assert (settled.status, settled.message_id) == ("sent", delivered.message_id)


async def test_the_claim_is_a_heartbeat_lease_renewed_while_a_long_send_runs(any_db, unique_id):
    await seed(any_db, unique_id, email="ann@example.com")
    slow = SlowProvider(SandboxChannel("email", any_db), seconds=3 * LEASE)
    acts = _acts(any_db, email=slow)
    env = _env(heartbeat=LEASE, attempt=30)
    beats: list[Any] = []
    env.on_heartbeat = lambda *details: beats.append(details)
    first = asyncio.create_task(env.run(acts.send_message, _input(unique_id, "email")))
    await slow.started.wait()
    [row] = await deliveries(any_db, f"journey/t/{unique_id}")
    assert row.claimed_until is not None and row.claimed_until - row.created_at < timedelta(seconds=3 * LEASE)
    # Long past the lease: still held, because the running attempt renews it.
    await asyncio.sleep(2 * LEASE)
    with pytest.raises(ApplicationError) as busy:
        await _env(heartbeat=LEASE).run(acts.send_message, _input(unique_id, "email"))
    assert busy.value.type == "SendInProgress"
    assert (await first).status == "sent"
    assert slow.calls == 1 and len(beats) >= 3


async def test_a_renewal_stuck_on_a_busy_database_does_not_hold_up_the_heartbeat(any_db, unique_id, monkeypatch):
    # A wake burst on SQLite: the renewal waits for a pooled connection or the write lock
    # longer than the heartbeat timeout. Temporal must still hear from the attempt, or it
    # retries a send that is alive (and about to go out).
    await seed(any_db, unique_id, email="ann@example.com")
    stuck = asyncio.Event()

    async def renew_waits_forever(*_: Any) -> None:
        stuck.set()
        await asyncio.Event().wait()

    monkeypatch.setattr("activities.journey.renew_claim", renew_waits_forever)
    slow = SlowProvider(SandboxChannel("email", any_db), seconds=3 * LEASE)
    env = _env(heartbeat=LEASE, attempt=30)
    beats: list[Any] = []
    env.on_heartbeat = lambda *details: beats.append(details)
    sent = await env.run(_acts(any_db, email=slow).send_message, _input(unique_id, "email"))
    assert stuck.is_set()
    # One beat per third of the lease across the whole call, the renewal hanging throughout.
    assert len(beats) >= 6
    assert sent.status == "sent" and slow.calls == 1
    [row] = await deliveries(any_db, f"journey/t/{unique_id}")
    assert row.status == "sent"


async def test_an_unknown_send_waits_like_a_sent_one_and_reactions_to_it_count(client, settings, db, unique_id, smtp):
    double, smtp_settings = smtp
    double.answer_delay = 3.0
    settings = settings.model_copy(update={"channel_email": "smtp", "smtp": smtp_settings})
    reacting, silent = unique_id, f"{unique_id}-s"
    # Different phones: profiles sharing one would be merged into one customer.
    for cid, phone in ((reacting, "+14155552671"), (silent, "+14155552672")):
        await seed(db, cid, email=f"{cid}@example.com", sms=phone)
    async with build_worker(client, settings, db):
        handle = await start_journey(reacting, spec("email", "sms"), client=client, db=db, settings=settings)
        state = await wait_for_state(handle, lambda s: s.status == "waiting")
        assert state.steps[0].status == StepStatus.UNKNOWN and state.steps[0].reason == "outcome_unknown"
        await handle.signal(CascadeJourney.engagement, EngagementInput(type=EngagementType.CLICKED, step=0))
        reacted = await handle.result()
        other = await (
            await start_journey(silent, spec("email", "sms"), client=client, db=db, settings=settings)
        ).result()
    assert reacted.outcome == Outcome.REACTED and reacted.reacted_step == 0
    assert [s.status for s in reacted.steps] == [StepStatus.UNKNOWN, StepStatus.PENDING]
    # Nobody reacted: the step's whole wait ran before the SMS, as after a sent email.
    assert [s.status for s in other.steps] == [StepStatus.UNKNOWN, StepStatus.SENT]
    assert other.steps[1].sent_at - other.steps[0].sent_at >= DAY
    assert other.outcome == Outcome.EXHAUSTED
    # One SMTP transaction per journey: an unknown email is never sent again.
    assert len(double.messages) == 2
    assert [d.status for d in await deliveries(db, handle.id)] == ["unknown"]


# --- Item 3: a stop during the check, early events of a skipped step ----------------------

# A journey with a step rule (a cap no test fills) keeps its contact-check activity; a
# plain one checks inside its send (patch `lean-steps`, tested below).
RULED: dict[str, Any] = {"frequency_cap": {"max": 100, "per": "1d"}}


@pytest.mark.parametrize(
    ("signal", "outcome"),
    [
        (CancelInput(reason="asked by support"), Outcome.CANCELLED),
        (EngagementInput(type=EngagementType.CONVERTED), Outcome.REACTED),
    ],
    ids=["cancel", "purchase"],
)
async def test_a_stop_during_the_contact_check_means_no_send(client, settings, db, unique_id, signal, outcome):
    await seed(db, unique_id, email=f"{unique_id}@example.com", sms="+14155552671")
    acts = SignalDuringCheck(db, settings, client, signal, on="email")
    async with build_worker(client, settings, db, journey_activities=acts):
        result = await (
            await start_journey(unique_id, spec("email", "sms", **RULED), client=client, db=db, settings=settings)
        ).result()
    assert result.outcome == outcome
    assert [s.status for s in result.steps] == [StepStatus.PENDING, StepStatus.PENDING]
    assert await outbox(db, unique_id) == []
    assert await deliveries(db, f"journey/test/{unique_id}") == []


async def test_events_held_for_a_skipped_step_do_not_count_for_the_next(client, settings, db, unique_id):
    # No email address: step 0 is skipped. An "opened" with no step arrives while it is
    # being checked, and is held for step 0's message, which never exists.
    await seed(db, unique_id, sms="+14155552671")
    acts = SignalDuringCheck(db, settings, client, EngagementInput(type=EngagementType.OPENED), on="email")
    async with build_worker(client, settings, db, journey_activities=acts):
        result = await (
            await start_journey(unique_id, spec("email", "sms", **RULED), client=client, db=db, settings=settings)
        ).result()
    assert [s.status for s in result.steps] == [StepStatus.SKIPPED, StepStatus.SENT]
    assert result.outcome == Outcome.EXHAUSTED and result.reaction is None
    assert result.finished_at - result.steps[1].sent_at >= DAY


async def test_a_plain_journey_checks_inside_its_send_and_records_its_run_there(client, settings, db, unique_id):
    """Lean steps: no check activity and no run-start activity; the same skips, one message each."""
    # No email address: step 0 is skipped for the reason the contact check gives.
    await seed(db, unique_id, sms="+14155552671")
    expected = await _env().run(
        _acts(db).check_contact, CheckContactInput(customer_id=unique_id, channel="email", topic="marketing")
    )
    assert not expected.usable and expected.reason
    async with build_worker(client, settings, db):
        journey = spec("email", "sms", wait="1h")
        handle = await start_journey(unique_id, journey, client=client, db=db, settings=settings)
        result = await handle.result()
    assert [s.status for s in result.steps] == [StepStatus.SKIPPED, StepStatus.SENT]
    assert result.steps[0].reason == expected.reason
    assert [(d.channel, d.status) for d in await deliveries(db, handle.id)] == [("sms", "sent")]
    scheduled = [
        e.activity_task_scheduled_event_attributes.activity_type.name
        for e in (await handle.fetch_history()).events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
    ]
    # The run's finish row is a local activity (patch "local-run-records"): not on the queue.
    assert scheduled == ["send_message", "send_message"]
    async with db.session() as session:
        [run] = (await session.exec(select(JourneyRun).where(JourneyRun.workflow_id == handle.id))).all()
    assert run.outcome == "exhausted" and run.finished_at is not None


async def test_the_run_rows_are_local_activities_not_queue_tasks(client, settings, db, unique_id):
    """Patch local-run-records: the run's start row (a journey that sleeps first writes it at
    once) and its finish row are local activities of the worker holding the journey: a
    marker each in the history, no task on the server's queue, no workflow task after it."""
    await seed(db, unique_id, email=f"{unique_id}@example.com")
    journey = spec("email", wait="1h")
    journey.steps[0].delay = timedelta(hours=2)
    async with build_worker(client, settings, db):
        handle = await start_journey(unique_id, journey, client=client, db=db, settings=settings)
        result = await handle.result()
    assert result.outcome == Outcome.EXHAUSTED
    events = (await handle.fetch_history()).events
    scheduled = [
        e.activity_task_scheduled_event_attributes.activity_type.name
        for e in events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
    ]
    assert scheduled == ["send_message"]
    local = [
        json.loads(e.marker_recorded_event_attributes.details["data"].payloads[0].data)["activity_type"]
        for e in events
        if e.event_type == EventType.EVENT_TYPE_MARKER_RECORDED
        and e.marker_recorded_event_attributes.marker_name == "core_local_activity"
    ]
    assert local == ["record_run_started", "record_run_finished"]
    # Patch lean-steps-3 (issue 17 B8): a new journey asks for one patch, which stands for
    # local-run-records too (one marker and one TemporalChangeVersion upsert, not two).
    patches = [
        json.loads(e.marker_recorded_event_attributes.details["patch-data"].payloads[0].data)["id"]
        for e in events
        if e.event_type == EventType.EVENT_TYPE_MARKER_RECORDED
        and e.marker_recorded_event_attributes.marker_name == "core_patch"
    ]
    assert patches == ["lean-steps-3"]
    async with db.session() as session:
        [run] = (await session.exec(select(JourneyRun).where(JourneyRun.workflow_id == handle.id))).all()
    assert run.outcome == "exhausted" and run.finished_at is not None


async def test_a_first_send_claims_its_row_in_the_insert(any_db, unique_id):
    """No cap to count: a new delivery row is inserted already claimed (one statement, not four)."""
    await seed(any_db, unique_id, email=f"{unique_id}@example.com")
    statements: list[str] = []

    def touching_deliveries(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        if " deliveries" in statement:
            statements.append(statement.split(None, 1)[0].upper())

    engines = any_db.sync_engines()
    for engine in engines:
        event.listen(engine, "before_cursor_execute", touching_deliveries)
    try:
        # A long attempt time: no lease renewal comes between the statements.
        result = await _env(attempt=60).run(_acts(any_db).send_message, _input(unique_id, "email"))
        assert result.status == "sent"
        # The existence check, the claimed insert, the settling update.
        assert statements == ["SELECT", "INSERT", "UPDATE"]
        [row] = await deliveries(any_db, "journey/t/" + unique_id)
        assert (row.status, row.attempts, row.claimed_until) == ("sent", 1, None)
        # A repeat of the same key finds the row and sends nothing again.
        statements.clear()
        again = await _env(attempt=60).run(_acts(any_db).send_message, _input(unique_id, "email"))
        assert again.status == "sent" and again.duplicate
        assert statements == ["SELECT"]
    finally:
        for engine in engines:
            event.remove(engine, "before_cursor_execute", touching_deliveries)
    assert len(await outbox(any_db, unique_id)) == 1


async def test_the_send_writes_the_run_row_it_carries_whether_it_sends_or_skips(any_db, unique_id):
    """The starter may die before its insert: the first send's transaction writes the row."""
    await seed(any_db, unique_id, email="ann@example.com")
    acts = _acts(any_db)

    def run(journey: str) -> RecordRunStartedInput:
        return RecordRunStartedInput(
            workflow_id=f"journey/{journey}/{unique_id}",
            run_id="run-1",
            journey=journey,
            customer_id=unique_id,
            workflow_type="CascadeJourney",
            started_at=datetime.now(UTC),
        )

    sent = await _env(heartbeat=5).run(
        acts.send_message, _input(unique_id, "email", "a", record_run=run("a"), unchecked=True)
    )
    # No phone number: skipped, and the row is written all the same.
    skipped = await _env(heartbeat=5).run(
        acts.send_message, _input(unique_id, "sms", "b", record_run=run("b"), unchecked=True)
    )
    # An unchecked send on a channel without an adapter is a skip, as the check says.
    unconfigured = await _env(heartbeat=5).run(
        JourneyActivities(any_db, {}, Settings()).send_message, _input(unique_id, "email", "c", unchecked=True)
    )
    assert sent.status == "sent" and skipped.status == "skipped"
    assert unconfigured.status == "skipped" and unconfigured.reason == "channel email not configured"
    async with any_db.session() as session:
        runs = (await session.exec(select(JourneyRun).where(JourneyRun.customer_id == unique_id))).all()
    assert sorted(r.journey for r in runs) == ["a", "b"]
    # A retry of the first send changes nothing: same result, one row, one message.
    again = await _env(heartbeat=5).run(
        acts.send_message, _input(unique_id, "email", "a", record_run=run("a"), unchecked=True)
    )
    assert again.status == "sent" and again.duplicate
    assert [d.status for d in await deliveries(any_db, f"journey/a/{unique_id}")] == ["sent"]


# --- Item 6: the frequency cap and the claim are one step ---------------------------------


async def test_concurrent_journeys_cannot_both_take_the_last_slot_of_the_cap(any_db, unique_id):
    """Four journeys of one customer send at once under a cap of one: one message goes out."""
    await seed(any_db, unique_id, email="ann@example.com")
    slow = SlowProvider(SandboxChannel("email", any_db), seconds=0.5)
    acts = _acts(any_db, email=slow)
    cap = FrequencyCap(max=1, per=timedelta(days=7))

    def send(journey: str) -> Any:
        return _env(heartbeat=5).run(acts.send_message, _input(unique_id, "email", journey, frequency_cap=cap))

    journeys = ["a", "b", "c", "d"]
    results = dict(zip(journeys, await asyncio.gather(*map(send, journeys), return_exceptions=True), strict=True))
    assert slow.calls == 1
    sent = [j for j, r in results.items() if not isinstance(r, BaseException) and r.status == "sent"]
    assert len(sent) == 1
    for journey, other in results.items():
        if journey in sent:
            continue
        # Either the cap was full already, or only with the first send in flight: then
        # the activity retries and learns it is full.
        if isinstance(other, ApplicationError):
            assert other.type == "SendInProgress" and not other.non_retryable
        else:
            assert not isinstance(other, BaseException) and other.status == "postponed"
        again = await send(journey)
        assert again.status == "postponed" and again.wake_at is not None
    async with any_db.session() as session:
        # Postponed sends leave no row behind: the delivery log holds the one message.
        first = (await session.exec(select(Delivery))).one()
    assert first.status == "sent"
    assert first.sent_at is not None
    sent_at = first.sent_at if first.sent_at.tzinfo else first.sent_at.replace(tzinfo=UTC)
    assert abs(again.wake_at - (sent_at + cap.per)) < timedelta(seconds=1)
    assert slow.calls == 1 and len(await outbox(any_db)) == 1
    # A transactional message is not capped.
    transactional = _input(unique_id, "email", "order-status", frequency_cap=cap, topic="transactional")
    assert (await _env(heartbeat=5).run(acts.send_message, transactional)).status == "sent"
    assert slow.calls == 2


async def test_a_message_of_unknown_fate_counts_against_the_cap(any_db, unique_id):
    await seed(any_db, unique_id, email="ann@example.com")
    lost = AnswerLost(SandboxChannel("email", any_db))
    acts = _acts(any_db, email=lost)
    cap = FrequencyCap(max=1, per=timedelta(days=7))
    first = await _env(heartbeat=5).run(acts.send_message, _input(unique_id, "email", "a", frequency_cap=cap))
    assert first.status == "unknown"
    now = datetime.now(UTC)
    rules = StepRules(at=now, frequency_cap=cap)
    check = await _env().run(acts.check_contact, CheckContactInput(customer_id=unique_id, channel="email", rules=rules))
    assert not check.usable and check.wake_at is not None and check.wake_at - now > timedelta(days=6)
    second = await _env(heartbeat=5).run(acts.send_message, _input(unique_id, "email", "b", frequency_cap=cap))
    assert second.status == "postponed" and lost.calls == 1


@pytest.fixture
async def fresh_clock() -> AsyncIterator[Client]:
    """A time-skipping server of its own, whose clock starts at the real one.

    The cap compares the journey's clock with the delivery log's real send times;
    the shared server's clock has run days ahead of them by now.
    """
    env = await WorkflowEnvironment.start_time_skipping(
        data_converter=CODEC_CONVERTER,
        test_server_existing_path=binary("temporal-test-server"),
        runtime=quiet_runtime(),
    )
    await register_search_attributes(env.client)
    yield env.client
    await env.shutdown()


async def test_a_cap_filled_by_another_journey_first_postpones_the_send(fresh_clock, settings, db, unique_id):
    client = fresh_clock
    await seed(db, unique_id, email=f"{unique_id}@example.com", sms="+14155552671")
    cap = {"max": 1, "per": "7d"}
    slow = SlowProvider(SandboxChannel("email", db), seconds=1.0)
    async with build_worker(client, settings, db, journey_activities=FirstSendStarted(db, settings, slow)):
        first = await start_journey(
            unique_id, spec("email", name="cap-a", frequency_cap=cap), client=client, db=db, settings=settings
        )
        second = await start_journey(
            unique_id, spec("sms", name="cap-b", frequency_cap=cap), client=client, db=db, settings=settings
        )
        a, b = await first.result(), await second.result()
    assert a.steps[0].status == b.steps[0].status == StepStatus.SENT
    # The SMS passed its check while the email was with the provider; its send found
    # the cap full and slept until the email left the 7-day window.
    # The cap frees 7 days after the email's send as the delivery log has it (the journey
    # notes its own sent_at a little later, when the send's result reaches it).
    [email] = await deliveries(db, first.id)
    assert email.sent_at is not None
    email_sent = email.sent_at if email.sent_at.tzinfo else email.sent_at.replace(tzinfo=UTC)
    assert b.steps[0].sent_at - email_sent >= timedelta(days=7)
    scheduled = [
        e.activity_task_scheduled_event_attributes.activity_type.name
        for e in (await second.fetch_history()).events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
    ]
    # (record_run_started/finished around them record the journey run.)
    steps = [name for name in scheduled if name in ("check_contact", "send_message")]
    assert steps == ["check_contact", "send_message", "check_contact", "send_message"]
    assert [m.channel for m in await outbox(db)] == ["email", "sms"]


# --- Item 16: no address and no provider sentence in a history ----------------------------


def _readable(node: Any) -> str:
    """Everything a reader of the raw history sees, with each payload's base64 decoded."""
    if isinstance(node, dict):
        parts = [_readable(v) for v in node.values()]
        data = node.get("data")
        if isinstance(data, str):
            parts.append(base64.b64decode(data).decode("utf-8", "replace"))
        return "\n".join(parts)
    if isinstance(node, list):
        return "\n".join(_readable(v) for v in node)
    return str(node)


@pytest.mark.integration
async def test_a_history_holds_reason_codes_not_provider_texts_or_addresses(
    dev_server, settings, db, unique_id, smtp, telegram
):
    """Read the way anyone with UI access reads it: every payload decoded, every failure."""
    client = dev_server.client
    _, smtp_settings = smtp
    telegram.retry_after = 1
    settings = settings.model_copy(
        update={
            "channel_email": "smtp",
            "smtp": smtp_settings,
            "channel_telegram": "telegram",
            "telegram": TelegramSettings(base_url=telegram.url, bot_token=SecretStr(telegram.token)),
        }
    )
    address, chat = "bounce@example.com", f"flood-{unique_id}"
    await seed(db, unique_id, email=address, telegram=chat, sms="+14155552671")
    async with build_worker(client, settings, db):
        journey = spec("email", "telegram", "sms", wait="1s")
        handle = await start_journey(unique_id, journey, client=client, db=db, settings=settings)
        result = await asyncio.wait_for(handle.result(), timeout=60)
    assert [(s.status, s.reason) for s in result.steps] == [
        (StepStatus.FAILED, "bounced"),
        (StepStatus.SENT, None),
        (StepStatus.SENT, None),
    ]
    # Through the codec (issue 17): what an operator sees in the UI via the codec server.
    history = _readable(json.loads((await decrypt_history(await handle.fetch_history())).to_json()))
    for secret in (address, chat, "+14155552671", "Recipient address rejected", "User unknown", "Too Many Requests"):
        assert secret not in history, secret
    # The codes are there instead (the 429 as the retried attempt's last failure).
    assert '"bounced"' in history and "telegram: rate_limited" in history
    # The delivery log keeps the provider's words (erasure scrubs them).
    email_row = (await deliveries(db, handle.id))[0]
    assert email_row.failure_code == "bounced" and f"<{address}>: Recipient address rejected" in (
        email_row.failure_reason or ""
    )


# --- Item 19: configuration errors --------------------------------------------------------


async def _cli(settings: Settings, *args: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "starter.py",
        *args,
        cwd=PROJECT_ROOT,
        env={**os.environ, "DATABASE_URL": settings.database_url, "COLUMNS": "250"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await process.communicate()
    return process.returncode or 0, out.decode()


async def test_a_refused_token_fails_the_step_once_alerts_and_shows_in_channels(
    client, settings, db, unique_id, telegram
):
    def with_token(token: str) -> Settings:
        return settings.model_copy(  # type: ignore[no-any-return]
            update={
                "channel_telegram": "telegram",
                "telegram": TelegramSettings(base_url=telegram.url, bot_token=SecretStr(token)),
            }
        )

    await seed(db, unique_id, telegram="1001", sms="+14155552671")
    broken = with_token("999:WRONG")
    with capture_logs() as logs:
        async with build_worker(client, broken, db):
            handle = await start_journey(unique_id, spec("telegram", "sms"), client=client, db=db, settings=broken)
            result = await handle.result()
    # Not retried: the step fails at once with a code and the cascade moves on.
    assert [(s.status, s.reason) for s in result.steps] == [
        (StepStatus.FAILED, "configuration_error"),
        (StepStatus.SENT, None),
    ]
    assert result.steps[1].sent_at - result.started_at < timedelta(minutes=1)
    assert len(telegram.received) == 1
    started = [
        e.activity_task_started_event_attributes.attempt
        for e in (await handle.fetch_history()).events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED
    ]
    assert max(started) == 1
    [alert] = [entry for entry in logs if entry["event"] == "send.configuration_error"]
    assert alert["log_level"] == "error" and alert["channel"] == "telegram"
    assert "401 Unauthorized" in alert["provider_said"] and "WRONG" not in str(alert)
    row = (await deliveries(db, handle.id))[0]
    assert (row.status, row.failure_code) == ("failed", "configuration_error")
    async with db.session() as session:
        health = await session.get(ChannelHealth, "telegram")
    assert health is not None and "401 Unauthorized" in health.last_error and health.recovered_at is None
    code, text = await _cli(settings, "channels")
    assert code == 1 and "configuration error" in text and "401 Unauthorized" in text, text

    # The operator fixes the token: the next send goes through and clears the alert.
    fixed = with_token(telegram.token)
    other = f"{unique_id}-2"
    await seed(db, other, telegram="1002")
    async with build_worker(client, fixed, db):
        again = await (await start_journey(other, spec("telegram"), client=client, db=db, settings=fixed)).result()
    assert again.steps[0].status == StepStatus.SENT
    code, text = await _cli(settings, "channels")
    assert code == 0 and "recovered" in text, text

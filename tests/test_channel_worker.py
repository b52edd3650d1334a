"""Real adapters inside the real worker: per-channel queues, classification, rate limits."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from pydantic import SecretStr, ValidationError
from temporalio.api.enums.v1 import EventType

from cascade.infra.settings import Settings, TelegramSettings
from models.journey import Outcome
from models.tables import ContactStatus
from starter import start_journey
from tests.conftest import seed
from tests.doubles.telegram import TelegramDouble
from tests.helpers import contact, deliveries, eventually, outbox, spec
from worker import build_worker


@pytest.fixture
async def telegram() -> AsyncIterator[TelegramDouble]:
    double = TelegramDouble(retry_after=30)
    async with double.serve():
        yield double


def _with_telegram(settings: Settings, double: TelegramDouble, **extra: object) -> Settings:
    return settings.model_copy(
        update={
            "channel_telegram": "telegram",
            "telegram": TelegramSettings(base_url=double.url, bot_token=SecretStr(double.token)),
            **extra,
        }
    )


async def test_journey_sends_through_the_adapter_on_the_channel_queue(
    client, ts_env, settings, db, unique_id, telegram
):
    settings = _with_telegram(settings, telegram)
    await seed(db, unique_id, telegram="blocked-7", sms="+14155552671")
    other = f"{unique_id}-b"
    await seed(db, other, telegram="flood-1")
    async with build_worker(ts_env.client, settings, db):
        blocked = await start_journey(
            unique_id, spec("telegram", "sms", wait="1h"), client=ts_env.client, db=db, settings=settings
        )
        flooded = await start_journey(
            other, spec("telegram", wait="1h"), client=ts_env.client, db=db, settings=settings
        )
        first, second = await blocked.result(), await flooded.result()
    # 403 from the Bot API: the contact is marked blocked and the cascade moved on to SMS.
    assert first.steps[0].status == "failed" and first.steps[0].reason == "blocked"
    assert (await contact(db, unique_id, "telegram")).status == ContactStatus.BLOCKED
    assert "blocked by the user" in ((await deliveries(db, blocked.id))[0].failure_reason or "")
    assert first.steps[1].status == "sent" and len(await outbox(db, "+1415")) == 1
    # 429 retry_after=30: Temporal retried after the provider's delay, then it went out.
    assert second.outcome == Outcome.EXHAUSTED and second.steps[0].status == "sent"
    assert [m["chat_id"] for m in telegram.messages] == ["flood-1"]
    [row] = await deliveries(db, flooded.id)
    assert row.status == "sent" and row.attempts == 2
    # The chat id is the customer's address: it stays out of the message id.
    assert (row.provider_message_id or "").startswith("tg-") and "flood" not in (row.provider_message_id or "")
    # Each send ran on its channel's queue (checking the contact inside: lean steps); the
    # run's bookkeeping is a local activity of the main worker (no task on any queue).
    history = await flooded.fetch_history()
    scheduled = [
        e.activity_task_scheduled_event_attributes
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
    ]
    queues = {a.activity_type.name: a.task_queue.name for a in scheduled}
    main = settings.task_queue
    assert queues == {"send_message": f"{main}-telegram"}
    retried = [
        e.activity_task_started_event_attributes.attempt
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED
    ]
    assert max(retried) == 2
    # The bot token is never in a workflow payload.
    assert telegram.token not in history.to_json()


@pytest.mark.integration
async def test_a_burst_five_times_the_rate_limit_is_spread_out_not_rejected(
    dev_server, settings, db, unique_id, telegram
):
    """25 sends at a limit of 5/s: all delivered, and they take at least ~4 s.

    Without the limit the same 25 leave within a fraction of a second, so the span
    cannot reach 3 s by chance; nothing asserts an upper bound, so a slow machine
    cannot make this fail.
    """
    limits = {**settings.channel_rate_limits, "telegram": 5.0}
    settings = _with_telegram(settings, telegram, channel_rate_limits=limits)
    customers = [f"{unique_id}-{i}" for i in range(25)]
    for i, customer in enumerate(customers):
        await seed(db, customer, telegram=str(5000 + i))
    async with build_worker(dev_server.client, settings, db):
        handles = await asyncio.gather(
            *(
                start_journey(c, spec("telegram", wait="1h"), client=dev_server.client, db=db, settings=settings)
                for c in customers
            )
        )

        async def all_sent() -> bool | None:
            return True if len(telegram.messages) >= 25 else None

        await eventually(all_sent, within=30)
        for handle in handles:
            await handle.terminate("test done")
    times = sorted(r.at for r in telegram.received)
    assert len(telegram.messages) == len(telegram.received) == 25
    assert sorted(m["chat_id"] for m in telegram.messages) == sorted(str(5000 + i) for i in range(25))
    assert times[-1] - times[0] >= 3.0, f"25 sends at 5/s took only {times[-1] - times[0]:.2f} s"


async def test_the_main_worker_keeps_tasks_on_its_sticky_queue_as_long_as_the_setting_says(
    client, settings, db, monkeypatch
):
    """Temporal's 10 s unless CASCADE_WORKER_STICKY_QUEUE_TIMEOUT_SECONDS says otherwise."""
    main = build_worker(client, settings, db).workers[0]
    assert main.config()["sticky_queue_schedule_to_start_timeout"] == timedelta(seconds=10)
    monkeypatch.setenv("CASCADE_WORKER_STICKY_QUEUE_TIMEOUT_SECONDS", "20")
    # A queue of its own: the SDK refuses two workers for one queue in a process.
    tuned = Settings(database_url=settings.database_url, task_queue=f"{settings.task_queue}-tuned")
    assert tuned.worker_sticky_queue_timeout_seconds == 20
    assert build_worker(client, tuned, db).workers[0].config()["sticky_queue_schedule_to_start_timeout"] == timedelta(
        seconds=20
    )
    # A timeout of zero or less is refused, naming the setting.
    monkeypatch.setenv("CASCADE_WORKER_STICKY_QUEUE_TIMEOUT_SECONDS", "0")
    with pytest.raises(ValidationError, match="worker_sticky_queue_timeout_seconds"):
        Settings()

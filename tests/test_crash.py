"""A real worker process SIGKILLed inside the send, on the real dev server, then restarted.

The provider doubles take the request (the message counts as delivered) and hold the
answer back, so the kill lands after the provider has the message and before the
worker knows it. Steps have waits of a few seconds, shorter than the time Temporal
needs to notice the dead worker. Nothing may be lost and nothing sent twice: VK
honours our idempotency key (`random_id`), so its send is retried and ends `sent`;
Telegram does not, so its send is never repeated and ends `unknown`.
"""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from temporalio.api.enums.v1 import EventType
from temporalio.testing import WorkflowEnvironment

from cascade.infra.db import Database, migrate
from cascade.infra.settings import PROJECT_ROOT, Settings, TelegramSettings, VkSettings
from models.journey import JourneyResult, Outcome, StepStatus
from starter import start_journey
from tests.conftest import seed
from tests.doubles.telegram import TelegramDouble
from tests.doubles.vk import VkDouble
from tests.helpers import deliveries, eventually, spec

pytestmark = pytest.mark.integration


def _environment(
    settings: Settings, env: WorkflowEnvironment, vk: VkDouble, telegram: TelegramDouble
) -> dict[str, str]:
    """What `python worker.py` reads: this test's server, database, queue and provider doubles."""
    return {
        **os.environ,
        "TEMPORAL_ADDRESS": env.client.service_client.config.target_host,
        "DATABASE_URL": settings.database_url,
        "CASCADE_TASK_QUEUE": settings.task_queue,
        "CASCADE_LOG_FORMAT": "json",
        "CASCADE_CHANNEL_VK": "vk",
        "CASCADE_VK__BASE_URL": vk.url,
        "CASCADE_VK__ACCESS_TOKEN": vk.access_token,
        "CASCADE_CHANNEL_TELEGRAM": "telegram",
        "CASCADE_TELEGRAM__BASE_URL": telegram.url,
        "CASCADE_TELEGRAM__BOT_TOKEN": telegram.token,
    }


@asynccontextmanager
async def _worker(environment: dict[str, str], log: Path) -> AsyncIterator[asyncio.subprocess.Process]:
    """`python worker.py` as its own process; killed (not stopped) when the block ends."""
    with log.open("ab") as out:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "worker.py", cwd=PROJECT_ROOT, env=environment, stdout=out, stderr=out
        )
    try:
        yield process
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()


@pytest.fixture
async def doubles() -> AsyncIterator[tuple[VkDouble, TelegramDouble]]:
    vk, telegram = VkDouble(), TelegramDouble()
    async with vk.serve(), telegram.serve():
        yield vk, telegram


@pytest.fixture
async def crash_db(tmp_path: Path) -> AsyncIterator[tuple[Database, Settings]]:
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'crash.db'}",
        task_queue=f"crash-{uuid.uuid4().hex[:8]}",
    )
    db = Database.from_settings(settings)
    await migrate(db.engine)
    yield db, settings
    await db.dispose()


def _with_doubles(settings: Settings, vk: VkDouble, telegram: TelegramDouble) -> Settings:
    return settings.model_copy(
        update={
            "channel_vk": "vk",
            "vk": VkSettings(base_url=vk.url, access_token=SecretStr(vk.access_token)),
            "channel_telegram": "telegram",
            "telegram": TelegramSettings(base_url=telegram.url, bot_token=SecretStr(telegram.token)),
        }
    )


async def _results(handles: list[Any], within: float = 60.0) -> list[JourneyResult]:
    return list(await asyncio.wait_for(asyncio.gather(*(h.result() for h in handles)), timeout=within))


async def test_worker_killed_inside_the_send_ends_the_step_sent_once(
    dev_server, doubles, crash_db, unique_id, tmp_path
):
    """Issue 11, item 1: a step with a 5 s wait; the worker dies while VK holds its answer."""
    vk, telegram = doubles
    db, settings = crash_db
    settings = _with_doubles(settings, vk, telegram)
    environment = _environment(settings, dev_server, vk, telegram)
    await seed(db, unique_id, vk="7001")
    vk.holding = True
    async with _worker(environment, tmp_path / "worker-1.log") as first:
        handle = await start_journey(
            unique_id, spec("vk", wait="5s"), client=dev_server.client, db=db, settings=settings
        )

        async def inside_the_send() -> bool | None:
            return True if vk.held >= 1 else None

        await eventually(inside_the_send, within=30)
        first.kill()
        await first.wait()
    vk.release()
    async with _worker(environment, tmp_path / "worker-2.log"):
        [result] = await _results([handle])

    assert result.outcome == Outcome.EXHAUSTED
    assert [s.status for s in result.steps] == [StepStatus.SENT]
    # The restarted worker called VK again with the same random_id: one message.
    assert len(vk.received) == 2 and len(vk.messages) == 1
    assert result.steps[0].message_id == "vk-1"
    [row] = await deliveries(db, handle.id)
    assert row.status == "sent" and row.attempts == 2 and row.provider_message_id == "vk-1"
    # Sent exactly once: one send scheduled (retried inside Temporal) and completed,
    # and no settling of a lost one.
    events = (await handle.fetch_history()).events
    scheduled = [
        e.activity_task_scheduled_event_attributes.activity_type.name
        for e in events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
    ]
    # The journey also records its run at the end (record_run_finished: a local activity
    # since patch local-run-records, so not among these); the send checks the contact
    # itself and writes the run's start (lean steps).
    assert [name for name in scheduled if not name.startswith("record_run_")] == ["send_message"]
    completed = [e for e in events if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED]
    assert len(completed) == len(scheduled)


async def test_crash_mid_send_loses_nothing_and_sends_nothing_twice(dev_server, doubles, crash_db, unique_id, tmp_path):
    """Six journeys with 2 s waits, the worker SIGKILLed while both providers hold answers."""
    vk, telegram = doubles
    db, settings = crash_db
    settings = _with_doubles(settings, vk, telegram)
    environment = _environment(settings, dev_server, vk, telegram)
    customers = [f"{unique_id}-{i}" for i in range(6)]
    for i, customer in enumerate(customers):
        await seed(db, customer, vk=str(8000 + i), telegram=str(9000 + i))
    # Half start on VK (idempotent), half on Telegram (not): both kinds are mid-send.
    chains = [("vk", "telegram") if i % 2 == 0 else ("telegram", "vk") for i in range(6)]
    vk.holding = telegram.holding = True
    async with _worker(environment, tmp_path / "worker-1.log") as first:
        handles = [
            await start_journey(c, spec(*chain, wait="2s"), client=dev_server.client, db=db, settings=settings)
            for c, chain in zip(customers, chains, strict=True)
        ]

        async def all_inside_the_send() -> bool | None:
            return True if vk.held >= 3 and telegram.held >= 3 else None

        await eventually(all_inside_the_send, within=30)
        first.kill()
        await first.wait()
    vk.release()
    telegram.release()
    async with _worker(environment, tmp_path / "worker-2.log"):
        results = await _results(handles)

    # Provider side: every step's message arrived exactly once.
    per_key = Counter((m["peer_id"], m["random_id"]) for m in vk.messages)
    assert sorted(peer for peer, _ in per_key) == [str(8000 + i) for i in range(6)]
    assert set(per_key.values()) == {1}
    per_chat = Counter(str(m["chat_id"]) for m in telegram.messages)
    assert sorted(per_chat) == [str(9000 + i) for i in range(6)] and set(per_chat.values()) == {1}
    # VK was asked again for the three held sends (same random_id); Telegram never was.
    assert len(vk.received) == 9 and len(telegram.received) == 6

    # Journey side: no step lost or failed; the held Telegram sends are `unknown`.
    for result, chain in zip(results, chains, strict=True):
        assert result.outcome == Outcome.EXHAUSTED, result
        statuses = dict(zip(chain, (s.status for s in result.steps), strict=True))
        held_first = chain[0]
        assert statuses["vk"] == StepStatus.SENT
        assert statuses["telegram"] == (StepStatus.UNKNOWN if held_first == "telegram" else StepStatus.SENT)
    log = [row for handle in handles for row in await deliveries(db, handle.id)]
    assert len(log) == 12 and len({row.idempotency_key for row in log}) == 12
    assert Counter(row.status for row in log) == {"sent": 9, "unknown": 3}
    assert all(row.channel == "telegram" and row.step == 0 for row in log if row.status == "unknown")

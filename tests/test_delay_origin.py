"""A step's `delay` counts from the trigger, not from the journey's first workflow task.

Under a backlog of workflow tasks (a burst of starts, a worker restart) the first task
of a journey can run minutes after its start: "1 h after the cart was abandoned" must
still mean one hour after the event. The workflow counts from the start request as the
server took it, or from an earlier trigger time the starter passes; the latter is what
these tests can move (the time-skipping server does not skip time while a workflow task
waits for a worker). Time-skipping server, real activities, SQLite.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from cascade.infra.db import Database
from cascade.infra.settings import Settings
from models.journey import JourneySpec, StepStatus
from starter import start_journey
from tests.conftest import seed
from tests.helpers import spec
from worker import build_worker

DELAY = timedelta(hours=2)


def delayed() -> JourneySpec:
    journey = spec("email", name="delayed").model_copy(deep=True)
    journey.steps[0].delay = DELAY
    return journey


@pytest.fixture
async def run_worker(client: Client, settings: Settings, db: Database) -> AsyncIterator[None]:
    async with build_worker(client, settings, db):
        yield


async def test_the_delay_counts_from_an_earlier_trigger_time(
    ts_env: WorkflowEnvironment, client: Client, settings: Settings, db: Database, run_worker: None, unique_id: str
) -> None:
    await seed(db, unique_id, email=f"{unique_id}@example.com")
    now = await ts_env.get_current_time()
    handle = await start_journey(
        unique_id, delayed(), client=client, db=db, settings=settings, triggered_at=now - timedelta(minutes=90)
    )
    result = await handle.result()
    sent_at = result.steps[0].sent_at
    assert result.steps[0].status == StepStatus.SENT and sent_at is not None
    # The trigger was 90 minutes before the start: 30 minutes of the delay were left.
    assert timedelta(minutes=29) <= sent_at - now < timedelta(minutes=60)


async def test_a_trigger_time_in_the_future_never_lengthens_the_delay(
    ts_env: WorkflowEnvironment, client: Client, settings: Settings, db: Database, run_worker: None, unique_id: str
) -> None:
    await seed(db, unique_id, email=f"{unique_id}@example.com")
    now = await ts_env.get_current_time()
    # A starter whose clock runs an hour fast.
    handle = await start_journey(
        unique_id, delayed(), client=client, db=db, settings=settings, triggered_at=now + timedelta(hours=1)
    )
    result = await handle.result()
    sent_at = result.steps[0].sent_at
    assert sent_at is not None and DELAY <= sent_at - now < DELAY + timedelta(minutes=30)

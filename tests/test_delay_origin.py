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
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from temporalio.client import Client, WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from cascade.audiences.broadcasts import RecipientStarter, snapshot_audience
from cascade.audiences.service import load_segments
from cascade.events.ingest import record_app_event
from cascade.infra.db import Database
from cascade.infra.settings import Settings
from cascade.journeys.triggers import route_event, trigger_time
from models.events import AppEvent
from models.journey import JourneyInput, JourneySpec, StepStatus, Trigger
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


def test_an_event_time_is_bounded_before_it_becomes_a_trigger_time() -> None:
    now = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    day = timedelta(days=1)
    assert trigger_time(now - timedelta(minutes=30), now, day) == now - timedelta(minutes=30)
    # An event the shop's clock put ahead (allowed up to a day): never later than now.
    assert trigger_time(now + timedelta(hours=3), now, day) == now
    # A backfilled event older than the limit is no trigger time: delays count from the start.
    assert trigger_time(now - timedelta(days=2), now, day) is None
    assert trigger_time(None, now, day) is None
    # A time without a zone is UTC, as the events API reads it.
    assert trigger_time(datetime(2026, 11, 30, 11, 0), now, day) == datetime(2026, 11, 30, 11, 0, tzinfo=UTC)


async def _input_of(client: Client, handle: WorkflowHandle[Any, Any]) -> JourneyInput:
    """The journey's workflow input as its history holds it (decoded through the codec)."""
    async for event in handle.fetch_history_events():
        payloads = event.workflow_execution_started_event_attributes.input.payloads
        [decoded] = await client.data_converter.decode(payloads, [JourneyInput])
        assert isinstance(decoded, JourneyInput)
        return decoded
    raise AssertionError("no start event")


@pytest.mark.parametrize(("age", "expected"), [(timedelta(minutes=40), "event"), (timedelta(days=3), None)])
async def test_an_event_passes_its_own_time_to_the_journey_it_starts(
    client: Client, settings: Settings, db: Database, unique_id: str, age: timedelta, expected: str | None
) -> None:
    """The trigger time of a started journey is the event's occurred_at, bounded by the max age."""
    await seed(db, unique_id, email=f"{unique_id}@example.com")
    journey = delayed().model_copy(update={"name": "carts", "trigger": Trigger(events=["cart_abandoned"])})
    occurred = datetime.now(UTC) - age
    routed = await route_event(
        client, db, unique_id, "cart_abandoned", {}, journeys=[journey], settings=settings, triggered_at=occurred
    )
    [workflow_id] = routed.started
    given = (await _input_of(client, routed.handles[workflow_id])).triggered_at
    assert given == (occurred if expected == "event" else None)
    await routed.handles[workflow_id].terminate("test over")


@pytest.mark.parametrize("local", [False, True], ids=["send_at", "local_time"])
async def test_a_broadcast_gives_its_recipients_the_scheduled_moment(
    client: Client, settings: Settings, db: Database, tmp_path: Path, unique_id: str, local: bool
) -> None:
    """Every page's journeys count from the broadcast's moment (or the customer's local hour)."""
    folder = tmp_path / "segments"
    folder.mkdir()
    rule = {"name": "everyone", "where": [{"field": "purchase_count", "op": "gte", "value": 0}]}
    (folder / "everyone.yaml").write_text(yaml.safe_dump(rule))
    catalog = load_segments(settings.model_copy(update={"segments_dir": folder}))
    await seed(db, unique_id, email=f"{unique_id}@example.com")
    send_at = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=20)
    broadcast_id = f"b-{unique_id}"
    at = time(9, 30) if local else None
    journey = spec("email", name="bcast-moment")
    await snapshot_audience(
        db, catalog, broadcast_id=broadcast_id, segment="everyone", journey=journey.name, send_at=send_at, local_time=at
    )
    before = datetime.now(UTC)
    starter = RecipientStarter(db, client, settings.task_queue, concurrency=2)
    counts, _, done = await starter.start_page(broadcast_id, journey, cursor=None, limit=10, local_time=at)
    assert counts.started == 1 and done
    handle = client.get_workflow_handle(f"journey/{journey.name}/{unique_id}/broadcast-{broadcast_id}")
    given = (await _input_of(client, handle)).triggered_at
    assert given is not None
    if local:
        # The customer's next 09:30 (UTC here): the moment the start delay waits for.
        assert given > before and given.astimezone(UTC).time().replace(second=0, microsecond=0) == time(9, 30)
    else:
        assert given == send_at
    await handle.terminate("test over")


async def test_the_events_api_plans_starts_at_the_event_s_own_time(db: Database, unique_id: str) -> None:
    """POST /v1/events' storing step: an event with occurred_at hands it to the journeys it starts."""
    await seed(db, unique_id, email=f"{unique_id}@example.com")
    journey = delayed().model_copy(update={"name": "carts", "trigger": Trigger(events=["cart_abandoned"])})
    occurred = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=25)
    timed = AppEvent(event_id=f"e1-{unique_id}", customer_id=unique_id, type="cart_abandoned", occurred_at=occurred)
    [start] = (await record_app_event(db, "shop", timed, journeys=[journey])).starts
    assert start.triggered_at == occurred
    # Without its own time the start request is the trigger (the journey counts from its start).
    untimed = AppEvent(event_id=f"e2-{unique_id}", customer_id=unique_id, type="cart_abandoned")
    [start] = (await record_app_event(db, "shop", untimed, journeys=[journey])).starts
    assert start.triggered_at is None

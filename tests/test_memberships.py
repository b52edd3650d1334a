"""Segment memberships over time: refreshed in SQL for everyone or one customer, by the event
path and the SegmentRefresh workflow; transitions start `segment_entered` journeys."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from temporalio.client import (
    Client,
    ScheduleActionExecutionStartWorkflow,
    ScheduleActionStartWorkflow,
    ScheduleOverlapPolicy,
)
from temporalio.testing import WorkflowEnvironment
from typer.testing import CliRunner

from cascade.audiences.membership import (
    JUDGEMENT_SECONDS,
    REFRESH_SCHEDULE_ID,
    _judgement,
    current_segments,
    refresh_customers_memberships,
    refresh_memberships,
    refresh_schedule,
    route_transitions,
)
from cascade.audiences.service import load_segments
from cascade.cli.segments import app as segments_cli
from cascade.infra.db import Database
from cascade.infra.settings import Settings
from models.audiences import RefreshMembershipsInput, RefreshMembershipsResult
from tests.helpers import eventually, serve_app, spec

# Journeys started here outlive their tests: a server per module (see tests/own_server.py).
from tests.own_server import own_client, own_ts_env  # noqa: F401
from tests.test_segments import NOW, _people
from webhooks.app import create_app
from webhooks.keys import create_key
from worker import build_worker
from workflows.segments import SegmentRefresh

FUNNEL = ["new", "active", "loyal", "dormant", "churned"]


@pytest.mark.postgres
async def test_refresh_records_entries_and_exits_once(any_db: Database) -> None:
    await _people(any_db)
    catalog = load_segments(Settings(), Path("/nonexistent"))
    first = await refresh_memberships(any_db, catalog, now=NOW, segments=FUNNEL)
    assert first.entered == {"new": ["cat"], "loyal": ["ann"], "dormant": ["bob"], "churned": ["dan"]}
    assert first.exited == {}
    again = await refresh_memberships(any_db, catalog, now=NOW + timedelta(minutes=5), segments=FUNNEL)
    assert (again.entered, again.exited) == ({}, {})
    # 100 days on, time alone has moved ann from loyal to dormant, and cat is no longer new.
    later = await refresh_memberships(any_db, catalog, now=NOW + timedelta(days=100), segments=FUNNEL)
    assert later.entered == {"dormant": ["ann"]}
    assert later.exited == {"new": ["cat"], "loyal": ["ann"]}
    assert sorted(later.events()) == [
        ("ann", "segment_entered:dormant"),
        ("ann", "segment_exited:loyal"),
        ("cat", "segment_exited:new"),
    ]
    assert await current_segments(any_db, "ann") == ["dormant"]
    assert await current_segments(any_db, "cat") == []


@pytest.mark.postgres
async def test_refreshing_one_customer_leaves_the_others_alone(any_db: Database) -> None:
    await _people(any_db)
    catalog = load_segments(Settings(), Path("/nonexistent"))
    only_bob = await refresh_memberships(any_db, catalog, now=NOW, customer_id="bob", segments=FUNNEL)
    assert (only_bob.entered, only_bob.exited) == ({"dormant": ["bob"]}, {})
    assert await current_segments(any_db, "ann") == []


@pytest.mark.postgres
async def test_one_judgement_statement_serves_every_customer_of_its_span(any_db: Database) -> None:
    # The event path's judgement is built once per JUDGEMENT_SECONDS with the customer ids
    # bound at execution: refreshes of different customers in one span share the statement
    # object (and its SQLAlchemy cache key), and each still records only its own customer.
    await _people(any_db)
    catalog = load_segments(Settings(), Path("/nonexistent"))
    start = datetime.fromtimestamp(int(NOW.timestamp()) // JUDGEMENT_SECONDS * JUDGEMENT_SECONDS, UTC)
    later = start + timedelta(seconds=JUDGEMENT_SECONDS - 1)
    names = tuple(FUNNEL)
    assert _judgement(catalog, names, "sqlite", start) is _judgement(catalog, names, "sqlite", later)
    assert _judgement(catalog, names, "sqlite", later + timedelta(seconds=1)) is not _judgement(
        catalog, names, "sqlite", start
    )
    bob = await refresh_customers_memberships(any_db, catalog, ["bob"], now=start, segments=FUNNEL)
    assert (bob.entered, bob.exited) == ({"dormant": ["bob"]}, {})
    ann_and_cat = await refresh_customers_memberships(any_db, catalog, ["ann", "cat"], now=later, segments=FUNNEL)
    assert (ann_and_cat.entered, ann_and_cat.exited) == ({"new": ["cat"], "loyal": ["ann"]}, {})
    assert await current_segments(any_db, "dan") == []


async def test_a_transition_starts_the_segment_entered_journey(client: Client, db: Database) -> None:
    await _people(db)
    catalog = load_segments(Settings(), Path("/nonexistent"))
    name = f"dormant-{uuid.uuid4().hex[:6]}"
    journeys = [
        spec("email", name=name, trigger={"segment_entered": "dormant"}),
        spec("email", name=f"{name}-left", trigger={"segment_exited": "loyal"}),
    ]
    assert journeys[0].trigger is not None and journeys[0].trigger.events == ["segment_entered:dormant"]
    settings = Settings(database_url="sqlite://", task_queue=f"t-{uuid.uuid4().hex[:6]}")
    await refresh_memberships(db, catalog, now=NOW, segments=FUNNEL)
    later = NOW + timedelta(days=100)
    transitions = await refresh_memberships(db, catalog, now=later, segments=FUNNEL)
    started = await route_transitions(client, db, settings, transitions, journeys, later)
    assert sorted(started) == [f"journey/{name}-left/ann", f"journey/{name}/ann"]


async def test_the_refresh_workflow_and_the_event_path_keep_memberships_current(
    client: Client, settings: Settings, db: Database
) -> None:
    await _people(db)
    async with build_worker(client, settings, db):
        handle = await client.start_workflow(
            SegmentRefresh.run,
            RefreshMembershipsInput(at=datetime.now(UTC)),
            id=f"refresh-{uuid.uuid4().hex[:8]}",
            task_queue=settings.task_queue,
        )
        result: RefreshMembershipsResult = await handle.result()
    # Judged at the real clock, the hand-made customers (dated around NOW) have aged.
    assert result.entered["churned"] == 2 and "dormant" in await current_segments(db, "ann")
    assert await current_segments(db, "bob") == ["churned"]
    key, _ = await create_key(db, "shop1")
    async with serve_app(create_app(settings, client=client, db=db)) as url, httpx.AsyncClient(base_url=url) as web:
        sent = await web.post(
            "/v1/events",
            json={"event_id": "p-bob-1", "customer_id": "bob", "type": "purchase", "properties": {"amount": 20}},
            headers={"Authorization": f"Bearer {key}"},
        )
        assert sent.status_code == 202, sent.text
    # The purchase moved bob from churned to active at once, not at the next scheduled refresh.
    assert await current_segments(db, "bob") == ["active"]


def test_the_refresh_schedule_starts_segment_refresh_at_the_configured_interval() -> None:
    settings = Settings(segment_refresh_minutes=15, task_queue="q")
    schedule = refresh_schedule(settings, timedelta(minutes=settings.segment_refresh_minutes))
    assert isinstance(schedule.action, ScheduleActionStartWorkflow)
    assert (schedule.action.workflow, schedule.action.task_queue) == (SegmentRefresh.__name__, "q")
    assert [i.every for i in schedule.spec.intervals] == [timedelta(minutes=15)]
    # A slow refresh is never run twice at once (its transitions are keyed by time).
    assert schedule.policy.overlap == ScheduleOverlapPolicy.SKIP


@pytest.mark.integration
async def test_the_segments_cli_applies_shows_runs_and_deletes_the_refresh_schedule(
    dev_server: WorkflowEnvironment, settings: Settings, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Schedules need the real dev server (the time-skipping one has none).
    client = dev_server.client
    await _people(db)
    monkeypatch.setenv("DATABASE_URL", settings.database_url)
    monkeypatch.setenv("CASCADE_TASK_QUEUE", settings.task_queue)
    monkeypatch.setenv("TEMPORAL_ADDRESS", client.service_client.config.target_host)
    runner = CliRunner()

    async def cli(*args: str) -> Any:
        # In a thread: the CLI runs its own event loop while this one runs the worker.
        return await asyncio.to_thread(runner.invoke, segments_cli, ["schedule", *args])

    refused = await cli("--every", "10x")
    assert refused.exit_code == 1 and "--every: '10x' is not a duration" in refused.output
    assert "no cascade-segment-refresh schedule" in (await cli("--show")).output
    try:
        created = await cli("--every", "30m")
        assert created.exit_code == 0, created.output
        assert f"created {REFRESH_SCHEDULE_ID}: SegmentRefresh every 30m on {settings.task_queue}" in created.output
        shown = await cli("--show")
        assert shown.exit_code == 0 and "every 30m" in shown.output and "next: 20" in shown.output
        updated = await cli("--every", "2h")
        assert f"updated {REFRESH_SCHEDULE_ID}: SegmentRefresh every 2h" in updated.output
        assert "every 2h" in (await cli("--show")).output
        # What the schedule starts is a SegmentRefresh the worker of the queue runs: fire it once now.
        handle = client.get_schedule_handle(REFRESH_SCHEDULE_ID)
        async with build_worker(client, settings, db):
            await handle.trigger()

            async def fired() -> str | None:
                recent = (await handle.describe()).info.recent_actions
                action = recent[-1].action if recent else None
                return action.workflow_id if isinstance(action, ScheduleActionExecutionStartWorkflow) else None

            refresh_id = await eventually(fired, within=60)
            result = await client.get_workflow_handle(refresh_id, result_type=RefreshMembershipsResult).result()
        # Judged at the real clock, the hand-made customers (dated around NOW) have aged.
        assert result.entered["churned"] == 2
        assert "runs so far: 1" in (await cli("--show")).output
    finally:
        deleted = await cli("--delete")
    assert deleted.exit_code == 0 and f"deleted {REFRESH_SCHEDULE_ID}" in deleted.output
    gone = await cli("--show")
    assert gone.exit_code == 1 and "no cascade-segment-refresh schedule" in gone.output

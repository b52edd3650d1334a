"""The background refresh of the rollups' recent days: the AnalyticsRefresh workflow on a
worker, its Temporal Schedule, and `cascade report refresh`."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from temporalio.client import (
    Client,
    ScheduleActionExecutionStartWorkflow,
    ScheduleActionStartWorkflow,
    ScheduleOverlapPolicy,
)
from temporalio.testing import WorkflowEnvironment
from typer.testing import CliRunner

from analytics.funnel import FunnelQuery, entries, funnel, reaction_times
from analytics.money import savings_report
from analytics.recent import REFRESH_SCHEDULE_ID, ROLLUPS, data_as_of, refresh_schedule
from cascade.cli.reports import app as reports_cli
from cascade.infra.db import Database
from cascade.infra.settings import Settings, get_settings
from models.analytics import RefreshRollupsInput, RefreshRollupsResult
from tests.analytics_rows import History, add_customer
from tests.helpers import eventually
from worker import build_worker
from workflows.analytics import AnalyticsRefresh

PRICES = {"email": 0.001, "telegram": 0.0, "sms": 0.05}


async def _last_week(db: Database) -> datetime:
    """Runs and messages of the last week (all inside the recent days); returns now."""
    now = datetime.now(UTC)
    await add_customer(db, "ann", {"email": True, "sms": True})
    await add_customer(db, "bob", {"email": True, "sms": True})
    h = History()
    r = h.run("winback", "ann", campaign="dec", at=now - timedelta(days=6), outcome="reacted")
    h.send(r, "winback", "ann", 0, "email", cost=0.001, at=now - timedelta(days=6), status="clicked",
           opened_after=timedelta(minutes=2), clicked_after=timedelta(minutes=3))  # fmt: skip
    h.event("ann", "purchase", now - timedelta(days=5), amount=25.0)
    r = h.run("winback", "bob", campaign="dec", at=now - timedelta(days=2))
    h.send(r, "winback", "bob", 0, "email", cost=0.001, at=now - timedelta(days=2))
    await h.save(db)
    return now


async def test_the_refresh_workflow_rolls_up_the_recent_days(client: Client, settings: Settings, db: Database) -> None:
    now = await _last_week(db)
    assert await data_as_of(db) is None  # nothing rolled up yet: the pages read live
    settings = settings.model_copy(update={"channel_costs": PRICES})
    async with build_worker(client, settings, db):
        result = await client.execute_workflow(
            AnalyticsRefresh.run,
            RefreshRollupsInput(at=now),
            id=f"analytics-refresh-{uuid.uuid4().hex[:8]}",
            task_queue=settings.task_queue,
        )
    assert result.refreshed == list(ROLLUPS) and result.as_of == now
    assert await data_as_of(db) == now
    query = FunnelQuery(since=now - timedelta(days=30), by=["channel"])
    [email] = await funnel(db, query)
    assert (email.sent, email.clicked, email.converted, email.revenue) == (2, 1, 1, 25.0)
    assert [email] == await funnel(db, query, rollup=False)
    assert await reaction_times(db, query) == await reaction_times(db, query, rollup=False)
    assert await entries(db, query) == await entries(db, query, rollup=False)
    rolled = await savings_report(db, query, PRICES, "USD")
    assert rolled == await savings_report(db, query, PRICES, "USD", rollup=False) and rolled.total.runs == 2


def test_the_refresh_schedule_starts_analytics_refresh_at_the_configured_interval() -> None:
    settings = Settings(analytics_refresh_minutes=5, task_queue="q")
    schedule = refresh_schedule(settings, timedelta(minutes=settings.analytics_refresh_minutes))
    assert isinstance(schedule.action, ScheduleActionStartWorkflow)
    assert (schedule.action.workflow, schedule.action.task_queue) == (AnalyticsRefresh.__name__, "q")
    assert [i.every for i in schedule.spec.intervals] == [timedelta(minutes=5)]
    # A slow refresh is never run twice at once (a second one would only find the work done).
    assert schedule.policy.overlap == ScheduleOverlapPolicy.SKIP


@pytest.fixture
async def filled(settings: Settings, db: Database, monkeypatch: pytest.MonkeyPatch) -> Database:
    await _last_week(db)
    monkeypatch.setenv("CASCADE_DATABASE_URL", settings.database_url)
    get_settings.cache_clear()
    return db


async def test_cascade_report_refresh_rolls_up_now_and_says_as_of_when(filled: Database) -> None:
    try:
        # In a thread: the CLI runs its own event loop.
        result = await asyncio.to_thread(CliRunner().invoke, reports_cli, ["refresh"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    as_of = await data_as_of(filled)
    assert as_of is not None
    assert f"recent days as of {as_of:%Y-%m-%d %H:%M:%S} UTC: rebuilt {', '.join(ROLLUPS)}" in result.output


@pytest.mark.integration
async def test_the_report_cli_applies_runs_and_deletes_the_refresh_schedule(
    dev_server: WorkflowEnvironment, settings: Settings, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Schedules need the real dev server (the time-skipping one has none).
    client = dev_server.client
    await _last_week(db)
    monkeypatch.setenv("CASCADE_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("CASCADE_TASK_QUEUE", settings.task_queue)
    monkeypatch.setenv("TEMPORAL_ADDRESS", client.service_client.config.target_host)
    get_settings.cache_clear()
    runner = CliRunner()

    async def cli(*args: str) -> Any:
        # In a thread: the CLI runs its own event loop while this one runs the worker.
        return await asyncio.to_thread(runner.invoke, reports_cli, ["schedule", *args])

    try:
        created = await cli("--every", "15")
        assert created.exit_code == 0, created.output
        assert f"{REFRESH_SCHEDULE_ID}: AnalyticsRefresh every 15 min on {settings.task_queue}" in created.output
        # What the schedule starts is an AnalyticsRefresh the worker of the queue runs: fire it once now.
        handle = client.get_schedule_handle(REFRESH_SCHEDULE_ID)
        async with build_worker(client, settings, db):
            await handle.trigger()

            async def fired() -> str | None:
                recent = (await handle.describe()).info.recent_actions
                action = recent[-1].action if recent else None
                return action.workflow_id if isinstance(action, ScheduleActionExecutionStartWorkflow) else None

            refresh_id = await eventually(fired, within=60)
            result = await client.get_workflow_handle(refresh_id, result_type=RefreshRollupsResult).result()
        assert result.refreshed == list(ROLLUPS) and await data_as_of(db) == result.as_of
    finally:
        deleted = await cli("--delete")
        get_settings.cache_clear()
    assert deleted.exit_code == 0 and f"deleted {REFRESH_SCHEDULE_ID}" in deleted.output
    gone = await cli("--delete")
    assert gone.exit_code == 1 and f"no {REFRESH_SCHEDULE_ID} schedule" in gone.output

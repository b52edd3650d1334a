"""BroadcastWorkflow on the time-skipping server: frozen audience, paging with continue-as-new,
pause/resume/cancel, and a broadcast that crashes or restarts mid-way starts nobody twice."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import func, select, update
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import WorkflowEnvironment
from typer.testing import CliRunner

from cascade.audiences import broadcasts as service
from cascade.audiences.broadcasts import (
    broadcast_progress,
    local_start_delay,
    signal_broadcast,
    start_broadcast,
)
from cascade.audiences.service import load_segments
from cascade.cli.broadcasts import app as broadcasts_cli
from cascade.infra.db import Database
from cascade.infra.settings import Settings
from cascade.infra.temporal import register_search_attributes
from models import search_attributes as sa
from models.broadcasts import BroadcastProgress
from models.journey import JourneyResult, JourneySpec, Outcome
from models.tables import Customer, Delivery
from tests.conftest import seed, start_ts_env
from tests.helpers import eventually, skip_time, spec

# Journeys started here outlive their tests: a server per module (see tests/own_server.py).
from tests.own_server import own_client, own_ts_env  # noqa: F401
from worker import build_worker


@pytest.fixture
def bsettings(settings: Settings, tmp_path: Path) -> Settings:
    folder = tmp_path / "segments"
    folder.mkdir()
    rule = {"name": "everyone", "where": [{"field": "purchase_count", "op": "gte", "value": 0}]}
    (folder / "everyone.yaml").write_text(yaml.safe_dump(rule))
    return settings.model_copy(update={"segments_dir": folder})


@pytest.fixture
async def worker(client: Client, bsettings: Settings, db: Database) -> AsyncIterator[None]:
    async with build_worker(client, bsettings, db):
        yield


async def _members(db: Database, n: int, *, coupon: bool = True) -> list[str]:
    ids = [f"m{i:03d}" for i in range(n)]
    for cid in ids:
        await seed(db, cid, email=f"{cid}@example.com")
    if coupon:
        async with db.engine.begin() as conn:
            await conn.execute(update(Customer).values(attributes={"coupon": "XMAS"}))
    return ids


async def _start(client: Client, bsettings: Settings, journey: JourneySpec, **kw: Any) -> str:
    broadcast_id = f"b-{uuid.uuid4().hex[:10]}"
    await start_broadcast(
        client,
        load_segments(bsettings),
        bsettings.task_queue,
        broadcast_id=broadcast_id,
        segment="everyone",
        journey=journey,
        **kw,
    )
    return broadcast_id


async def _result(client: Client, broadcast_id: str) -> BroadcastProgress:
    handle = client.get_workflow_handle(f"broadcast/{broadcast_id}", result_type=BroadcastProgress)
    result: BroadcastProgress = await handle.result()
    return result


async def _sends_per_customer(db: Database) -> dict[str, int]:
    query = select(Delivery.customer_id, func.count()).group_by(Delivery.customer_id)  # type: ignore[call-overload]
    async with db.engine.connect() as conn:
        return {str(c): int(n) for c, n in await conn.execute(query)}


def _journey_id(journey: str, customer_id: str, broadcast_id: str) -> str:
    return f"journey/{journey}/{customer_id}/broadcast-{broadcast_id}"


async def test_a_broadcast_starts_one_cascade_per_member_across_continue_as_new(
    client: Client, bsettings: Settings, db: Database, worker: None
) -> None:
    members = await _members(db, 12)
    # Two members lack the attribute the message reads: skipped with that reason.
    async with db.engine.begin() as conn:
        await conn.execute(update(Customer).where(Customer.id.in_(members[:2])).values(attributes={}))  # type: ignore[attr-defined]
    journey = spec("email", name="bcast").model_copy(deep=True)
    journey.steps[0].content.body = "{{ name }}, your code is {{ coupon }}"
    broadcast_id = await _start(client, bsettings, journey, page_size=3, pages_per_run=2, rate_per_second=1.0)
    result = await _result(client, broadcast_id)
    assert result.status == "done"
    assert (result.audience, result.started, result.skipped, result.failed) == (
        12,
        10,
        {"template_field_missing": 2},
        0,
    )
    assert result.runs == 2  # 12 recipients in pages of 3, continue-as-new every 2 pages
    sends = await eventually(lambda: _all_sent(db, 10), within=90)
    assert sends == dict.fromkeys(members[2:], 1)
    described = await client.get_workflow_handle(_journey_id("bcast", members[5], broadcast_id)).describe()
    assert described.typed_search_attributes.get(sa.CAMPAIGN) == broadcast_id
    assert described.workflow_type == "CascadeJourney"
    # The progress of a finished broadcast is its result.
    assert (await broadcast_progress(client, broadcast_id)).started == 10


async def _all_sent(db: Database, n: int) -> dict[str, int] | None:
    sends = await _sends_per_customer(db)
    return sends if sum(sends.values()) >= n else None


async def test_pause_resume_and_cancel_stops_journeys_that_have_not_sent(
    ts_env: WorkflowEnvironment, client: Client, bsettings: Settings, db: Database, worker: None
) -> None:
    members = await _members(db, 8, coupon=False)
    # Each journey waits a day before its first message: a cancel catches them unsent.
    journey = spec("email", name="bcast-delay").model_copy(deep=True)
    journey.steps[0].delay = timedelta(days=1)
    broadcast_id = await _start(client, bsettings, journey, page_size=2, rate_per_second=0.001)

    async def progress_with(started: int, status: str | None = None) -> BroadcastProgress | None:
        p = await broadcast_progress(client, broadcast_id)
        return p if p.started == started and (status is None or p.status == status) else None

    await eventually(lambda: progress_with(2), within=90)
    await signal_broadcast(client, broadcast_id, "pause")
    # The page spacing (2000 s) passes; a paused broadcast starts nobody else.
    await skip_time(ts_env, 3000)
    paused = await eventually(lambda: progress_with(2, "paused"), within=90)
    assert paused.audience == 8
    await signal_broadcast(client, broadcast_id, "resume")
    await eventually(lambda: progress_with(4), within=90)
    await signal_broadcast(client, broadcast_id, "cancel", reason="wrong segment")
    result = await _result(client, broadcast_id)
    assert (result.status, result.started, result.cancelled_journeys) == ("cancelled", 4, 4)
    for cid in members[:4]:
        handle = client.get_workflow_handle(_journey_id("bcast-delay", cid, broadcast_id), result_type=JourneyResult)
        ended = await handle.result()
        assert ended.outcome == Outcome.CANCELLED
        assert ended.outcome_reason == "broadcast cancelled: wrong segment"
    for cid in members[4:]:
        with pytest.raises(RPCError) as missing:
            await client.get_workflow_handle(_journey_id("bcast-delay", cid, broadcast_id)).describe()
        assert missing.value.status == RPCStatusCode.NOT_FOUND
    assert await _sends_per_customer(db) == {}


async def test_a_crash_mid_page_and_a_restart_mid_way_start_nobody_twice(
    ts_env: WorkflowEnvironment,
    client: Client,
    bsettings: Settings,
    db: Database,
    worker: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    members = await _members(db, 9, coupon=False)
    real_mark = service.RecipientStarter._mark
    crashes: list[Any] = []

    async def crash_once(self: Any, broadcast_id: str, outcomes: Any) -> Any:
        # The second page's cascades are started, then the activity dies before recording it.
        if len(crashes) == 0 and any(c in {m for m, _ in items} for items in outcomes.values() for c in members[3:6]):
            crashes.append(outcomes)
            raise RuntimeError("worker lost after starting the page")
        return await real_mark(self, broadcast_id, outcomes)

    monkeypatch.setattr(service.RecipientStarter, "_mark", crash_once)
    journey = spec("email", name="bcast-restart")
    broadcast_id = await _start(client, bsettings, journey, page_size=3, rate_per_second=0.001)
    await eventually(lambda: _progress_at(client, broadcast_id, 3), within=90)

    # One skip past the page spacing (3,000 s); the crashed page's retry then runs in real
    # time. Skipping again on every poll moved this module's clock past the other tests'
    # one-day waits, whose activities, due on task queues with no worker left, froze the
    # clock for the next test.
    await skip_time(ts_env, 3100)
    await eventually(lambda: _progress_at(client, broadcast_id, 6), within=90)
    assert len(crashes) == 1
    # A member who joins now is not in the frozen audience, not even after a restart.
    await seed(db, "m999", email="m999@example.com")
    # The operator kills the broadcast mid-way and starts it again under the same id.
    await client.get_workflow_handle(f"broadcast/{broadcast_id}").terminate("operator restart")
    restarted = await start_broadcast(
        client,
        load_segments(bsettings),
        bsettings.task_queue,
        broadcast_id=broadcast_id,
        segment="everyone",
        journey=journey,
        page_size=3,
        rate_per_second=0.001,
    )
    result = BroadcastProgress.model_validate(await restarted.result())
    assert (result.status, result.audience, result.started, result.skipped, result.failed) == ("done", 9, 9, {}, 0)
    sends = await eventually(lambda: _all_sent(db, 9), within=90)
    assert sends == dict.fromkeys(members, 1)
    for cid in members:
        described = await client.get_workflow_handle(_journey_id("bcast-restart", cid, broadcast_id)).describe()
        assert described.status in (WorkflowExecutionStatus.RUNNING, WorkflowExecutionStatus.COMPLETED)


async def _progress_at(client: Client, broadcast_id: str, started: int) -> BroadcastProgress | None:
    p = await broadcast_progress(client, broadcast_id)
    return p if p.started >= started else None


@pytest.fixture
async def solo_env() -> AsyncIterator[WorkflowEnvironment]:
    """A time-skipping server for one test: its clock moves only for that test's journeys.

    On the module's server, journeys earlier tests left waiting a day wake once the module's
    clock has moved far enough (it moves during every `result()` wait too); their tasks, on
    task queues with no worker left, then hold that clock still (seen in CI, twice).
    """
    env = await start_ts_env()
    await register_search_attributes(env.client)
    yield env
    await env.shutdown()


async def test_the_broadcasts_cli_starts_watches_pauses_resumes_cancels_and_lists(
    solo_env: WorkflowEnvironment,
    bsettings: Settings,
    db: Database,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ts_env, client = solo_env, solo_env.client
    async with build_worker(client, bsettings, db):
        await _cli_scenario(ts_env, client, bsettings, db, tmp_path, monkeypatch)


async def _cli_scenario(
    ts_env: WorkflowEnvironment,
    client: Client,
    bsettings: Settings,
    db: Database,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await _members(db, 4, coupon=False)
    journey = tmp_path / "december.yaml"
    journey.write_text(
        "name: december\nsteps:\n  - channel: email\n    delay: 1d\n"
        "    content: {subject: News, body: 'Hi {{ name }}'}\n"
    )
    monkeypatch.setenv("DATABASE_URL", bsettings.database_url)
    monkeypatch.setenv("CASCADE_TASK_QUEUE", bsettings.task_queue)
    monkeypatch.setenv("CASCADE_SEGMENTS_DIR", str(bsettings.segments_dir))
    monkeypatch.setenv("TEMPORAL_ADDRESS", client.service_client.config.target_host)
    runner = CliRunner()
    bid = f"dec-{uuid.uuid4().hex[:8]}"

    async def cli(*args: str) -> Any:
        # In a thread: the CLI runs its own event loop while this one runs the worker.
        return await asyncio.to_thread(runner.invoke, broadcasts_cli, list(args))

    started = await cli(
        "start", bid, "--segment", "everyone", "--journey", str(journey), "--rate", "0.001", "--page-size", "2"
    )
    assert started.exit_code == 0, started.output
    assert f"started broadcast/{bid}: segment everyone, journey december" in started.output

    async def status_says(text: str) -> str | None:
        out = (await cli("status", bid)).output
        return out if text in out else None

    first = await eventually(lambda: status_says("started 2,"), within=90)
    assert "audience 4" in first
    assert (await cli("pause", bid)).stdout.strip() == f"pause sent to broadcast {bid}"
    await skip_time(ts_env, 3000)
    await eventually(lambda: status_says(": paused"), within=90)
    assert (await cli("resume", bid)).exit_code == 0
    await eventually(lambda: status_says("started 4,"), within=90)
    assert (await cli("cancel", bid, "--reason", "typo")).exit_code == 0
    done = await eventually(lambda: status_says(": cancelled"), within=90)
    assert "journeys cancelled before their first send: 4" in done
    listed = await cli("list")
    assert listed.exit_code == 0 and bid in listed.output and "everyone" in listed.output
    again = await cli("start", bid, "--segment", "everyone", "--journey", str(journey))
    assert again.exit_code == 1 and "exists already" in again.output
    unknown = await cli("start", "other", "--segment", "nobody", "--journey", str(journey))
    assert unknown.exit_code == 1 and "unknown segment 'nobody'" in unknown.output
    missing = await cli("status", "never-started")
    assert missing.exit_code == 1 and "no such broadcast" in missing.output


def test_local_time_delay() -> None:
    now = datetime(2026, 12, 1, 8, 30, tzinfo=UTC)
    # 08:30 UTC is 09:30 in Berlin: 10:00 there is in 30 minutes; in Tokyo (17:30) it is tomorrow.
    assert local_start_delay("Europe/Berlin", time(10, 0), now) == timedelta(minutes=30)
    assert local_start_delay("Asia/Tokyo", time(10, 0), now) == timedelta(hours=16, minutes=30)
    # A customer whose 10:00 is this very minute starts now; an unknown zone counts as UTC.
    assert local_start_delay("Europe/London", time(8, 30), now) == timedelta(0)
    assert local_start_delay("Mars/Olympus", time(10, 0), now) == timedelta(hours=1, minutes=30)

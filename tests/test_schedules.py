"""The birthday and win-back schedules on the real dev server: a scan judges by the time its
Schedule meant it for, not by the clock when it happens to run."""

from __future__ import annotations

from datetime import date, timedelta

import pytest
from temporalio.client import ScheduleBackfill, ScheduleOverlapPolicy, ScheduleState

from cascade.infra.db import Database
from cascade.infra.settings import Settings
from cascade.journeys.schedules import SCHEDULES, _schedule
from models.events import CancelInput
from models.tables import Customer, utcnow
from tests.conftest import seed
from tests.helpers import eventually
from worker import build_worker
from workflows.cascade import CascadeJourney
from workflows.scans import BirthdayScan

pytestmark = pytest.mark.integration


def _born(day: date) -> date:
    return day.replace(year=1990) if (day.month, day.day) != (2, 29) else date(1992, 2, 29)


async def test_a_backfilled_birthday_scan_judges_by_its_scheduled_day(
    dev_server, settings: Settings, db: Database, unique_id: str
):
    client = dev_server.client
    scheduled = (utcnow() - timedelta(days=40)).replace(hour=6, minute=0, second=0, microsecond=0)
    then, today = f"{unique_id}-then", f"{unique_id}-today"
    await seed(db, then, email=f"{then}@example.com")
    await seed(db, today, email=f"{today}@example.com")
    async with db.session() as session:
        for cid, day in ((then, scheduled.date()), (today, utcnow().date())):
            customer = await session.get(Customer, cid)
            assert customer is not None
            customer.birth_date = _born(day)
            session.add(customer)

    [birthdays] = [s for s in SCHEDULES if s.journey == "birthday"]
    schedule = _schedule(birthdays, settings)
    schedule.state = ScheduleState(paused=True)  # only the backfill below runs
    schedule_id = f"{birthdays.id}-{unique_id}"
    async with build_worker(client, settings, db):
        handle = await client.create_schedule(schedule_id, schedule)
        try:
            # The day the server was down, run now as if it were then.
            await handle.backfill(
                ScheduleBackfill(
                    start_at=scheduled - timedelta(minutes=1),
                    end_at=scheduled + timedelta(minutes=1),
                    overlap=ScheduleOverlapPolicy.ALLOW_ALL,
                )
            )

            async def scan_started() -> str | None:
                actions = (await handle.describe()).info.recent_actions
                return actions[0].action.workflow_id if actions else None

            scan_id = await eventually(scan_started)
            result = await client.get_workflow_handle_for(BirthdayScan.run, scan_id).result()
        finally:
            await handle.delete()
        # The customer whose birthday was on the scheduled day got the journey, not today's.
        journey = client.get_workflow_handle_for(CascadeJourney.run, f"journey/birthday/{then}/{scheduled.year}")
        await journey.signal(CascadeJourney.cancel, CancelInput(reason="test over"))
        assert (await journey.result()).customer_id == then
        assert (result.scanned, result.started, result.at) == (1, 1, scheduled)

"""Temporal Schedules for the time-based journeys: birthdays daily, win-back weekly.

`python starter.py schedules apply` creates or updates them; nothing runs from cron.
Each schedule starts a small scan workflow whose activity starts the journeys.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleIntervalSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
)

from cascade.infra.settings import Settings
from cascade.infra.temporal import upsert_schedule
from models.loyalty import ScanInput
from models.workflow_types import BIRTHDAY_SCAN, WINBACK_SCAN


@dataclass(frozen=True)
class ScanSchedule:
    """One schedule: its id, the scan workflow, the journey it starts and how often."""

    id: str
    workflow: str
    journey: str
    every: timedelta
    offset: timedelta


SCHEDULES = (
    # 06:00 UTC: early enough for the morning in Europe; quiet hours hold the rest.
    ScanSchedule("cascade-birthday-scan", BIRTHDAY_SCAN, "birthday", timedelta(days=1), timedelta(hours=6)),
    ScanSchedule("cascade-winback-scan", WINBACK_SCAN, "winback", timedelta(days=7), timedelta(hours=7)),
)


def _schedule(item: ScanSchedule, settings: Settings) -> Schedule:
    return Schedule(
        action=ScheduleActionStartWorkflow(
            item.workflow,
            ScanInput(journey=item.journey),
            id=item.id,
            task_queue=settings.task_queue,
        ),
        spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=item.every, offset=item.offset)]),
        # A slow scan is never run twice at once; a missed one (server down) runs late.
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP, catchup_window=timedelta(days=1)),
    )


async def apply_schedules(client: Client, settings: Settings) -> list[str]:
    """Create each schedule, or update it to the current definition."""
    done = []
    for item in SCHEDULES:
        created = await upsert_schedule(client, item.id, _schedule(item, settings))
        done.append(f"{'created' if created else 'updated'} {item.id} (every {item.every})")
    return done


async def list_schedules(client: Client) -> list[str]:
    """One line per schedule of ours: id and next run times."""
    lines = []
    ours = {s.id for s in SCHEDULES}
    async for entry in await client.list_schedules():
        if entry.id in ours:
            upcoming = entry.info.next_action_times[:2] if entry.info else []
            lines.append(f"{entry.id}: next {', '.join(t.isoformat(timespec='minutes') for t in upcoming)}")
    return lines or ["no schedules (run `schedules apply`)"]


async def delete_schedules(client: Client) -> list[str]:
    """Delete our schedules; journeys they started keep running."""
    lines = []
    for item in SCHEDULES:
        try:
            await client.get_schedule_handle(item.id).delete()
            lines.append(f"deleted {item.id}")
        except Exception as exc:
            lines.append(f"{item.id}: {exc}")
    return lines

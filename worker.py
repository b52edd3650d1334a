"""`python worker.py`: connect to Temporal, register the journey workflows and activities, run."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Mapping

from temporalio.client import Client
from temporalio.worker import Worker

from activities.journey import JourneyActivities
from activities.loyalty import LoyaltyActivities
from channels.base import Channel
from channels.registry import build_channels
from core.db import Database, migrate
from core.logging import configure_logging, get_logger
from core.settings import Settings, get_settings
from core.temporal import connect
from workflows.cascade import CascadeJourney
from workflows.loyalty import LoyaltyLoop
from workflows.scans import BirthdayScan, WinbackScan

WORKFLOWS = [CascadeJourney, LoyaltyLoop, BirthdayScan, WinbackScan]


def build_worker(
    client: Client,
    settings: Settings,
    db: Database,
    channels: Mapping[str, Channel] | None = None,
) -> Worker:
    """A worker for the journey task queue with every workflow and activity registered."""
    acts = JourneyActivities(db, channels or build_channels(settings, db), settings)
    loyalty = LoyaltyActivities(db, client, settings)
    return Worker(
        client,
        task_queue=settings.task_queue,
        workflows=WORKFLOWS,
        activities=[
            acts.check_contact,
            acts.send_message,
            loyalty.accrue_points,
            loyalty.scan_birthdays,
            loyalty.scan_winback,
        ],
    )


async def main() -> None:
    """Run the worker until SIGINT/SIGTERM, then finish in-flight tasks and exit."""
    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format)
    log = get_logger("worker", task_queue=settings.task_queue)
    db = Database.from_settings(settings)
    await migrate(db.engine)
    client = await connect(settings)
    worker = build_worker(client, settings, db)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    log.info("worker.started", address=settings.temporal_address)
    async with worker:
        await stop.wait()
        log.info("worker.stopping")
    await db.dispose()


if __name__ == "__main__":
    asyncio.run(main())

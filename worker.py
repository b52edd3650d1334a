"""`python worker.py`: connect to Temporal, register the journey workflows and activities, run.

One process runs the main journey queue (workflows, contact checks) and one queue
per channel (`<task_queue>-<channel>`) for that channel's sends. The Temporal server
enforces each channel queue's rate limit across every worker polling it, so a big
broadcast is spread out at the provider's pace instead of being rejected by it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Mapping
from datetime import timedelta
from types import TracebackType

from temporalio.client import Client
from temporalio.worker import Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from activities.analytics import AnalyticsActivities
from activities.audiences import AudienceActivities
from activities.experiments import ExperimentActivities
from activities.journey import JourneyActivities
from activities.loyalty import LoyaltyActivities
from activities.routing import RoutingActivities
from activities.runs import RunActivities
from cascade.infra.codec import CodecError
from cascade.infra.db import Database, migrate
from cascade.infra.logging import configure_logging, get_logger
from cascade.infra.runner import ContextFreeRunner
from cascade.infra.settings import Settings, get_settings
from cascade.infra.temporal import connect
from cascade.tracking.tokens import warn_if_dev_secret
from channels.base import Channel
from channels.queues import channel_task_queue
from channels.registry import build_channels, close_channels
from models.journey import ChannelName
from workflows.registry import WORKFLOWS as WORKFLOWS  # what the worker registers; tests import it from here

# The sandbox imports a workflow's module afresh for every workflow run it creates (each
# new journey, each evicted one replaying) so that runs cannot share module state. For
# workflows/cascade.py that copy is about 72 KiB held by every cached journey and, without
# bytecode files (PYTHONDONTWRITEBYTECODE, as in the Dockerfile), a compile of its source
# per run: measured as 30 % of the event loop's time in bench/throughput.py. Our workflow
# modules keep no mutable module state (tests/test_workflow_sandbox.py checks it), so they
# are loaded once and shared by every run. What that gives up is the sandbox's run-time
# check of non-deterministic calls made from these modules (their globals are the real
# modules, not the sandbox's proxies); the replay tests replay recorded histories under
# the full sandbox (Replayer's default), which keeps it.
WORKFLOW_RUNNER = SandboxedWorkflowRunner(
    restrictions=SandboxRestrictions.default.with_passthrough_modules("workflows")
)


class CascadeWorkers:
    """The main worker and one per channel queue, started and stopped together."""

    def __init__(self, workers: list[Worker], channels: Mapping[str, Channel] | None = None) -> None:
        self.workers = workers
        # Adapters built here are closed here; adapters handed in belong to the caller.
        self._owned_channels = channels
        self._stack: contextlib.AsyncExitStack | None = None

    async def __aenter__(self) -> CascadeWorkers:
        async with contextlib.AsyncExitStack() as stack:
            for worker in self.workers:
                await stack.enter_async_context(worker)
            self._stack = stack.pop_all()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._stack is not None:
            await self._stack.aclose()
            self._stack = None
        if self._owned_channels is not None:
            await close_channels(self._owned_channels)


def build_worker(
    client: Client,
    settings: Settings,
    db: Database,
    channels: Mapping[str, Channel] | None = None,
    journey_activities: JourneyActivities | None = None,
) -> CascadeWorkers:
    """Workers for the journey task queue and every channel's send queue.

    `journey_activities` replaces the journey activities (tests that need to step in
    between a check and a send); `channels` is then ignored.
    """
    owned = None
    if channels is None and journey_activities is None:
        channels = owned = build_channels(settings, db)
    acts = journey_activities or JourneyActivities(db, channels or {}, settings)
    loyalty = LoyaltyActivities(db, client, settings)
    runs = RunActivities(db)
    routing = RoutingActivities(db, settings)
    experiments = ExperimentActivities(db)
    audiences = AudienceActivities(db, client, settings)
    analytics = AnalyticsActivities(db, settings)
    workers = [
        Worker(
            client,
            task_queue=settings.task_queue,
            workflows=WORKFLOWS,
            # The sandbox runs the workflow code; the SDK's per-payload questions about
            # the serialization context (which our converter ignores) skip it.
            workflow_runner=ContextFreeRunner(WORKFLOW_RUNNER, client.data_converter),
            max_cached_workflows=settings.worker_max_cached_workflows,
            sticky_queue_schedule_to_start_timeout=timedelta(seconds=settings.worker_sticky_queue_timeout_seconds),
            # One pooled database connection per slot (Settings.pool_size).
            max_concurrent_activities=settings.worker_max_concurrent_activities,
            # send_message stays here too: journeys started before per-channel queues
            # schedule their sends on the main queue.
            activities=[
                acts.check_contact,
                acts.send_message,
                acts.settle_delivery,
                loyalty.accrue_points,
                loyalty.scan_birthdays,
                loyalty.scan_winback,
                runs.record_run_started,
                runs.record_run_finished,
                routing.choose_channel,
                routing.choose_wait,
                routing.choose_send_time,
                experiments.assign_variant,
                audiences.snapshot_audience,
                audiences.start_recipients,
                audiences.cancel_unsent_journeys,
                audiences.refresh_segment_memberships,
                analytics.refresh_recent_rollups,
            ],
        )
    ]
    for name in ChannelName:
        workers.append(
            Worker(
                client,
                task_queue=channel_task_queue(settings.task_queue, name.value),
                activities=[acts.send_message],
                max_concurrent_activities=settings.channel_max_concurrent_sends,
                max_task_queue_activities_per_second=settings.channel_rate_limits.get(name.value),
                # A queue that is idle most of the time needs few pollers.
                max_concurrent_activity_task_polls=2,
            )
        )
    return CascadeWorkers(workers, owned)


async def main() -> None:
    """Run the worker until SIGINT/SIGTERM, then finish in-flight tasks and exit."""
    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format)
    log = get_logger("worker", task_queue=settings.task_queue)
    # The worker signs the tracking and unsubscribe links it sends: say so if anyone could.
    warn_if_dev_secret(settings)
    db = Database.from_settings(settings)
    await migrate(db.engine)
    try:
        client = await connect(settings, warn_dev_key=True)
    except CodecError as exc:
        # issue 17: a missing or wrong payload key stops the worker before it runs a task.
        await db.dispose()
        raise SystemExit(f"worker: {exc}") from None
    worker = build_worker(client, settings, db)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    adapters = {name.value: getattr(settings, f"channel_{name.value}") for name in ChannelName}
    log.info("worker.started", address=settings.temporal_address, adapters=adapters)
    async with worker:
        await stop.wait()
        log.info("worker.stopping")
    await db.dispose()


if __name__ == "__main__":
    asyncio.run(main())
    # Everything is stopped and closed. Skip the interpreter's teardown: the Temporal
    # client's Rust threads can abort it ("PyGILState_Release ... finalizing", SIGABRT,
    # temporalio/sdk-python#300), which turned a clean SIGTERM stop into exit status 134.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)

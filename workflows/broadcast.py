"""BroadcastWorkflow: a campaign to a whole segment, one CascadeJourney per recipient.

The audience is frozen first (an activity snapshots the segment's members), then the
workflow pages through it: each page is one activity that starts the page's cascades and
returns the cursor after it. Pages are spaced so at most `rate_per_second` cascades start
per second; after `pages_per_run` pages the workflow continues as new with the cursor and
the counts, so its history stays small whatever the audience. Pause, resume and cancel
are signals; cancel also stops the recipients' journeys that have not sent yet.
"""

from __future__ import annotations

import contextlib
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from activities.audiences import AudienceActivities
    from models.broadcasts import (
        BroadcastCounts,
        BroadcastInput,
        BroadcastProgress,
        BroadcastSignalInput,
        CancelUnsentInput,
        SnapshotAudienceInput,
        StartRecipientsInput,
    )

SNAPSHOT_TIMEOUT = timedelta(minutes=30)
PAGE_TIMEOUT = timedelta(minutes=10)
PAGE_HEARTBEAT = timedelta(minutes=1)
CANCEL_TIMEOUT = timedelta(minutes=30)
RETRY = RetryPolicy(initial_interval=timedelta(seconds=2), maximum_interval=timedelta(minutes=2))


@workflow.defn
class BroadcastWorkflow:
    """A broadcast: frozen audience, paged starts with a rate limit, pause/resume/cancel."""

    @workflow.init
    def __init__(self, input: BroadcastInput) -> None:
        self._input = input
        self._paused = input.paused
        self._cancel: str | None = None
        self._progress = BroadcastProgress(
            broadcast_id=input.broadcast_id,
            segment=input.segment,
            journey=input.journey.name,
            status="paused" if input.paused else "starting",
            audience=input.audience,
            started=input.counts.started,
            skipped=dict(input.counts.skipped),
            failed=input.counts.failed,
            cursor=input.cursor,
            runs=input.runs,
        )

    @workflow.run
    async def run(self, input: BroadcastInput) -> BroadcastProgress:
        """Freeze the audience (first run only), then start page after page until done or cancelled."""
        if input.audience is None:
            if input.send_at is not None and input.send_at > workflow.now():
                self._progress.status = "scheduled"
                await self._wait_or_cancel(input.send_at - workflow.now())
            if self._cancel is not None:
                return self._finish("cancelled")
            snapshot = await workflow.execute_activity_method(
                AudienceActivities.snapshot_audience,
                SnapshotAudienceInput(
                    broadcast_id=input.broadcast_id,
                    segment=input.segment,
                    journey=input.journey.name,
                    send_at=input.send_at,
                    local_time=input.local_time,
                ),
                start_to_close_timeout=SNAPSHOT_TIMEOUT,
                retry_policy=RETRY,
            )
            input.audience = self._progress.audience = snapshot.audience
            # A broadcast restarted under the same id goes on from what the table says.
            input.counts = snapshot.counts
            self._note(input.counts, None)
        counts = input.counts
        pages = 0
        while True:
            if self._paused and self._cancel is None:
                self._progress.status = "paused"
                await workflow.wait_condition(lambda: not self._paused or self._cancel is not None)
            if self._cancel is not None:
                break
            self._progress.status = "running"
            began = workflow.now()
            page = await workflow.execute_activity_method(
                AudienceActivities.start_recipients,
                StartRecipientsInput(
                    broadcast_id=input.broadcast_id,
                    journey=input.journey,
                    cursor=input.cursor,
                    limit=input.page_size,
                    local_time=input.local_time,
                ),
                start_to_close_timeout=PAGE_TIMEOUT,
                heartbeat_timeout=PAGE_HEARTBEAT,
                retry_policy=RETRY,
            )
            counts.add(page.counts)
            input.cursor = page.cursor
            self._note(counts, page.cursor)
            pages += 1
            if page.done:
                return self._finish("done")
            # The rate limit: a page of N starts takes at least N / rate seconds.
            spacing = timedelta(seconds=input.page_size / input.rate_per_second) - (workflow.now() - began)
            if spacing > timedelta(0):
                await self._wait_or_cancel(spacing)
            if pages >= input.pages_per_run or workflow.info().is_continue_as_new_suggested():
                if self._cancel is not None:
                    break
                await workflow.wait_condition(workflow.all_handlers_finished)
                workflow.continue_as_new(
                    input.model_copy(update={"counts": counts, "paused": self._paused, "runs": input.runs + 1})
                )
        cancelled = await workflow.execute_activity_method(
            AudienceActivities.cancel_unsent_journeys,
            CancelUnsentInput(broadcast_id=input.broadcast_id, reason=f"broadcast cancelled: {self._cancel}"),
            start_to_close_timeout=CANCEL_TIMEOUT,
            retry_policy=RETRY,
        )
        self._progress.cancelled_journeys = cancelled.cancelled
        return self._finish("cancelled")

    async def _wait_or_cancel(self, duration: timedelta) -> None:
        with contextlib.suppress(TimeoutError):
            await workflow.wait_condition(lambda: self._cancel is not None, timeout=duration)

    def _note(self, counts: BroadcastCounts, cursor: str | None) -> None:
        self._progress.started, self._progress.failed = counts.started, counts.failed
        self._progress.skipped = dict(counts.skipped)
        self._progress.cursor = cursor

    def _finish(self, status: str) -> BroadcastProgress:
        self._progress.status = status
        return self._progress

    @workflow.signal
    def pause(self, input: BroadcastSignalInput) -> None:
        """Stop starting recipients after the current page (journeys already started go on)."""
        self._paused = True

    @workflow.signal
    def resume(self, input: BroadcastSignalInput) -> None:
        """Go on from where the broadcast paused."""
        self._paused = False

    @workflow.signal
    def cancel(self, input: BroadcastSignalInput) -> None:
        """Start nobody else, and stop the recipients' journeys that have not sent yet."""
        if self._cancel is None:
            self._cancel = input.reason

    @workflow.query
    def progress(self) -> BroadcastProgress:
        """Audience, started, skipped with reasons, failed, and where the broadcast stands."""
        return self._progress

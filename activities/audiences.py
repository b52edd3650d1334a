"""Activities of broadcasts: freeze the audience, start a page of cascades, cancel unsent journeys."""

from __future__ import annotations

from temporalio import activity
from temporalio.client import Client

from cascade.audiences.broadcasts import RecipientStarter, cancel_unsent, recipient_counts, snapshot_audience
from cascade.audiences.service import load_segments
from cascade.infra.db import Database
from cascade.infra.settings import Settings
from models.broadcasts import (
    CancelUnsentInput,
    CancelUnsentResult,
    SnapshotAudienceInput,
    SnapshotAudienceResult,
    StartRecipientsInput,
    StartRecipientsResult,
)


class AudienceActivities:
    """Database and Temporal work of BroadcastWorkflow; dependencies come in here."""

    def __init__(self, db: Database, client: Client, settings: Settings) -> None:
        self.db = db
        self.client = client
        self.settings = settings
        self.starter = RecipientStarter(db, client, settings.task_queue, settings.broadcast_start_concurrency)

    @activity.defn
    async def snapshot_audience(self, input: SnapshotAudienceInput) -> SnapshotAudienceResult:
        """Freeze the segment's members now (a retry or a restarted broadcast reads the same snapshot)."""
        audience = await snapshot_audience(
            self.db,
            load_segments(self.settings),
            broadcast_id=input.broadcast_id,
            segment=input.segment,
            journey=input.journey,
            send_at=input.send_at,
            local_time=input.local_time,
        )
        counts = await recipient_counts(self.db, input.broadcast_id)
        return SnapshotAudienceResult(audience=audience, counts=counts)

    @activity.defn
    async def start_recipients(self, input: StartRecipientsInput) -> StartRecipientsResult:
        """Start the next page of recipients' cascades after the cursor."""
        counts, cursor, done = await self.starter.start_page(
            input.broadcast_id,
            input.journey,
            cursor=input.cursor,
            limit=input.limit,
            local_time=input.local_time,
            heartbeat=activity.heartbeat,
        )
        return StartRecipientsResult(counts=counts, cursor=cursor, done=done)

    @activity.defn
    async def cancel_unsent_journeys(self, input: CancelUnsentInput) -> CancelUnsentResult:
        """Stop the broadcast's journeys that have not sent their first message."""
        return CancelUnsentResult(cancelled=await cancel_unsent(self.db, self.client, input.broadcast_id, input.reason))

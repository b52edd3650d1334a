"""Activities of broadcasts: freeze the audience, start a page of cascades, cancel unsent journeys."""

from __future__ import annotations

from datetime import UTC, datetime

from temporalio import activity
from temporalio.client import Client

from cascade.audiences.broadcasts import RecipientStarter, cancel_unsent, recipient_counts, snapshot_audience
from cascade.audiences.membership import refresh_memberships, route_transitions
from cascade.audiences.service import load_segments
from cascade.infra.db import Database
from cascade.infra.settings import Settings
from cascade.journeys.files import load_all_journeys
from models.audiences import RefreshMembershipsInput, RefreshMembershipsResult
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

    @activity.defn
    async def refresh_segment_memberships(self, input: RefreshMembershipsInput) -> RefreshMembershipsResult:
        """Record who entered and left each segment, and start the journeys those transitions trigger.

        A retry finds the memberships recorded and no transition left to route, except
        those whose routing failed: routing is keyed by the transition, so a journey
        already started is not started again.
        """
        now = input.at or datetime.now(UTC)
        transitions = await refresh_memberships(
            self.db, load_segments(self.settings), now=now, customer_id=input.customer_id
        )
        started = await route_transitions(self.client, self.db, self.settings, transitions, load_all_journeys(), now)
        return RefreshMembershipsResult(
            entered={k: len(v) for k, v in transitions.entered.items()},
            exited={k: len(v) for k, v in transitions.exited.items()},
            started=started,
        )

"""POST /v1/events/batch's store step: a batch in one transaction, with the same answers,
profile changes and signals as its events one by one. SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from sqlmodel import select

from cascade.events.ingest import record_app_event, record_app_events
from cascade.infra.db import Database
from models.tables import Customer, EngagementEvent, JourneyRun, OutboxSignal
from tests.conftest import seed
from tests.helpers import app_event as event


async def seed_ann_running_and_bob(db: Database) -> None:
    """Customers ann and bob; ann's running journey `x` converts on a purchase (one signal
    for her purchase)."""
    await seed(db, "ann")
    await seed(db, "bob")
    async with db.session() as session:
        session.add(
            JourneyRun(
                workflow_id="journey/x/ann", run_id="r1", journey="x", customer_id="ann", convert_on=["purchase"]
            )
        )


@pytest.mark.postgres
async def test_a_batch_answers_and_stores_as_its_events_one_by_one(any_db: Database) -> None:
    await seed_ann_running_and_bob(any_db)
    batch = [
        event("e1", "ann", "purchase", amount=10),
        event("e2", "bob", "page_view"),
        event("e1", "ann", "purchase", amount=10),  # the same event twice in one batch
        event("e3", "nobody", "page_view"),
        event("e4", "newcomer", "registered"),  # a registration creates the profile ...
        event("e5", "newcomer", "purchase", amount=5),  # ... which the next event finds
    ]
    recorded = await record_app_events(any_db, "shop", batch, journeys=[])
    assert [r.result.status for r in recorded] == [
        "accepted",
        "accepted",
        "duplicate",
        "unknown_customer",
        "accepted",
        "accepted",
    ]
    assert recorded[0].result.signalled == ["journey/x/ann"]
    assert [row.signal for row in recorded[0].rows] == ["engagement"]
    async with any_db.session() as session:
        ann = await session.get(Customer, "ann")
        newcomer = await session.get(Customer, "newcomer")
        stored = (await session.exec(select(EngagementEvent.event_id))).all()
        outbox = (await session.exec(select(OutboxSignal))).all()
        routed = (await session.exec(select(EngagementEvent).where(EngagementEvent.routed_at.is_(None)))).all()  # type: ignore[union-attr]
    assert ann is not None and ann.purchase_count == 1
    assert newcomer is not None and newcomer.purchase_count == 1
    assert sorted(str(s) for s in stored) == ["shop:e1", "shop:e2", "shop:e4", "shop:e5"]
    assert [(o.workflow_id, o.event_id) for o in outbox] == [("journey/x/ann", "shop:e1")]
    assert routed == []  # none of them starts a journey (no journeys given)

    # The whole batch again (a sender's retry): nothing is stored or signalled twice.
    again = await record_app_events(any_db, "shop", batch, journeys=[])
    assert [r.result.status for r in again] == ["duplicate"] * 3 + ["unknown_customer"] + ["duplicate"] * 2
    single = await record_app_event(any_db, "shop", batch[0], journeys=[])
    assert single.result.status == "duplicate"
    async with any_db.session() as session:
        ann = await session.get(Customer, "ann")
        assert ann is not None and ann.purchase_count == 1
        assert len((await session.exec(select(OutboxSignal))).all()) == 1

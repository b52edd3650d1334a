"""A journey with `audience: <segment>` lets only the segment's members enter (SQLite and PostgreSQL)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import update

from cascade.infra.db import Database
from cascade.journeys.files import JourneyDefinitionError, parse_journey_text
from cascade.journeys.triggers import plan_event
from models.journey import JourneySpec
from models.tables import Customer
from tests.conftest import seed
from tests.helpers import spec


def _targeted(audience: str) -> JourneySpec:
    return spec("email", name="for-newcomers", trigger={"events": ["page_viewed"]}, audience=audience)


@pytest.mark.postgres
async def test_only_members_of_the_audience_enter(any_db: Database) -> None:
    now = datetime.now(UTC)
    await seed(any_db, "fresh", email="fresh@example.com")
    await seed(any_db, "old", email="old@example.com")
    async with any_db.engine.begin() as conn:
        await conn.execute(update(Customer).where(Customer.id == "old").values(created_at=now - timedelta(days=400)))  # type: ignore[arg-type]
    journeys = [_targeted("new"), spec("email", name="for-everyone", trigger={"events": ["page_viewed"]})]
    async with any_db.session() as session:
        fresh = await session.get(Customer, "fresh")
        old = await session.get(Customer, "old")
        assert fresh is not None and old is not None
        entered = await plan_event(session, fresh, "page_viewed", {}, specs=journeys, now=now, event_id="e1")
        refused = await plan_event(session, old, "page_viewed", {}, specs=journeys, now=now, event_id="e2")
        unknown = await plan_event(
            session, fresh, "page_viewed", {}, specs=[_targeted("nowhere")], now=now, event_id="e3"
        )
    assert [s.spec.name for s in entered.starts] == ["for-newcomers", "for-everyone"]
    assert [s.spec.name for s in refused.starts] == ["for-everyone"]
    assert refused.not_entered == {"for-newcomers": "not in the audience segment 'new'"}
    assert unknown.not_entered == {"for-newcomers": "audience 'nowhere' is not a known segment"}


def test_an_audience_is_validated_with_file_and_line_and_absent_it_changes_nothing() -> None:
    with pytest.raises(JourneyDefinitionError) as bad:
        parse_journey_text(
            "name: x\naudience: Not A Name\nsteps:\n  - {channel: email, content: {body: hi}}\n", "x.yaml"
        )
    assert "x.yaml: audience (line 2)" in str(bad.value)
    plain = spec("email")
    # A spec without an audience serialises as before the field existed (older workers, content hashes).
    assert "audience" not in plain.model_dump_json()
    assert "audience" in _targeted("new").model_dump_json()

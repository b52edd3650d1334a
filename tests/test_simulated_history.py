"""`cascade simulate`: a population with hidden habits through the real journeys on the
time-skipping server, dated in the past, read back by the reports as any history would be."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from analytics.funnel import FunnelQuery, deliveries, entries, funnel, reaction_times, runs
from cascade.demo.simulation import simulate_history, simulated_runs
from cascade.infra.db import Database
from cascade.infra.settings import Settings
from cascade.simulator.history import population, time_skipping_server

pytestmark = pytest.mark.skipif(time_skipping_server() is None, reason="no temporal-test-server beside this Python")


def test_the_same_seed_gives_the_same_people_and_bad_sizes_are_refused() -> None:
    assert population(50, seed=3) == population(50, seed=3)
    assert population(50, seed=3) != population(50, seed=4)
    # Everyone has email; the other channels only some (hidden habits differ per person).
    people = population(200, seed=3)
    assert all("email" in p.habits for p in people)
    assert 0 < sum("telegram" in p.habits for p in people) < 200
    with pytest.raises(ValueError, match="customers"):
        population(0, seed=1)


async def test_a_simulated_fortnight_is_real_history_in_the_past(tmp_path: Path) -> None:
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'sim.db'}")
    report = await simulate_history(settings, customers=25, weeks=2, seed=5)
    db = Database.from_settings(settings)
    try:
        d, r = deliveries.c, runs.c
        async with db.engine.connect() as conn:
            messages, first, last = (
                await conn.execute(select(func.count(), func.min(d.created_at), func.max(d.created_at)))
            ).one()
            opened = (await conn.execute(select(func.count()).where(d.opened_at.is_not(None)))).scalar_one()
            too_early = (await conn.execute(select(func.count()).where(d.opened_at < d.sent_at))).scalar_one()
            unfinished = (await conn.execute(select(func.count()).where(r.finished_at.is_(None)))).scalar_one()
        # The journeys ran for real: the messages the simulator saw are in the delivery log.
        assert report.messages == messages > 0 and report.opens == opened > 0
        assert report.journeys == report.per_journey["abandoned_cart"] + report.per_journey.get("winback", 0)
        assert unfinished == 0  # every journey ran to its end on the skipped clock
        # Dated on the simulated clock and moved into the past: weeks apart, none in the future.
        now = datetime.now(UTC)
        first, last = (t if t.tzinfo else t.replace(tzinfo=UTC) for t in (first, last))
        assert last <= now and last - first > timedelta(days=7)
        assert too_early == 0  # an open follows its message
        # The reports read it like any history: every message in the funnel, reactions timed.
        [total] = await funnel(db, FunnelQuery())
        assert total.messages == messages
        assert sum(t.reactions for t in await reaction_times(db, FunnelQuery())) == opened
        assert sum(e.entered for e in await entries(db, FunnelQuery())) == report.journeys
        assert await simulated_runs(db, since=now - timedelta(days=30)) == report.journeys
    finally:
        await db.dispose()

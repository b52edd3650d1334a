"""Funnel and savings over journeys really run by the workflow on the time-skipping server."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from temporalio.client import Client

from analytics.funnel import FunnelQuery, entries, funnel
from analytics.money import run_costs, savings_from_runs, savings_report
from analytics.savings_model import run_savings
from cascade.infra.db import Database
from cascade.infra.settings import Settings
from models.events import EngagementInput, EngagementType
from models.journey import Outcome
from starter import start_journey
from tests.conftest import seed
from tests.helpers import spec, wait_for_state
from worker import build_worker
from workflows.cascade import CascadeJourney

THREE = ("email", "telegram", "sms")


@pytest.fixture
async def run_worker(client: Client, settings: Settings, db: Database) -> AsyncIterator[None]:
    async with build_worker(client, settings, db):
        yield


async def test_savings_and_funnel_of_real_runs(client, db, settings, run_worker, unique_id) -> None:
    journey = spec(*THREE)
    quick, slow = f"{unique_id}-a", f"{unique_id}-b"
    for cid in (quick, slow):
        await seed(db, cid, email=f"{cid}@example.com", telegram="100200300", sms="+14155552671")

    # The first customer opens the email: the cascade stops there.
    handle = await start_journey(quick, journey, client=client, db=db, settings=settings)
    await wait_for_state(handle, lambda s: s.status == "waiting")
    await handle.signal(CascadeJourney.engagement, EngagementInput(type=EngagementType.OPENED, step=0))
    assert (await handle.result()).outcome == Outcome.REACTED
    # The second ignores everything: all three channels are paid for.
    handle = await start_journey(slow, journey, client=client, db=db, settings=settings)
    assert (await handle.result()).outcome == Outcome.EXHAUSTED

    prices = settings.channel_costs
    rows = {r.key["channel"]: r for r in await funnel(db, FunnelQuery(by=["channel"]))}
    assert (rows["email"].sent, rows["telegram"].sent, rows["sms"].sent) == (2, 1, 1)
    assert rows["sms"].cost == pytest.approx(prices["sms"])
    [runs] = await entries(db, FunnelQuery(by=["journey"]))
    assert (runs.entered, runs.outcomes) == (2, {"exhausted": 1, "reacted": 1})

    report = await savings_report(db, FunnelQuery(), prices, settings.currency, {"test": journey})
    everything = sum(prices[c] for c in THREE)
    assert report.total.runs == 2
    assert report.total.actual == pytest.approx(prices["email"] + everything)
    assert report.total.all_usable == pytest.approx(2 * everything)
    assert report.total.saved_vs_all == pytest.approx(everything - prices["email"])
    reference = savings_from_runs(
        [run_savings(r) for r in await run_costs(db, FunnelQuery(), prices, {"test": journey})], settings.currency
    )
    assert report.total.all_usable == pytest.approx(reference.total.all_usable)

"""The forecast of a planned journey, and the backtest of a past campaign, from the database.

The model is :mod:`analytics.forecast_model` (Monte Carlo over Beta posteriors; its docstring
has the method and the priors). This module gathers what it needs:

* **Plan**: the journey file's steps, each with the price of one message on its channel
  (``CASCADE_CHANNEL_COSTS``) and the reaction it awaits.
* **Audience**: given; or a segment's members now (the segment compiled to one COUNT, as
  ``cascade segments count`` does); or counted: the customers (not erased, not merged away)
  who meet the journey's entry conditions today, by the same rule the trigger uses.
* **History per channel**: the funnel of every message in the window (all journeys: a
  channel's rates are the customers' habits more than one journey's), as nested counts.
  A conversion is attributed last touch (see :mod:`analytics.funnel`) and may follow a
  message that was only opened; the model's chain wants conversions *among clicks*, so
  conversions are capped at the clicks (said in the result's notes). How often a step found
  no usable contact point is not in the delivery log (skipped steps leave no row), so the
  usable share comes from the prior.
* **Backtest**: a past campaign's runs, its start the first run's start; the history is
  everything before that start, the audience the runs it had, and the actual figures its
  funnel.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from pydantic import BaseModel
from sqlalchemy import func, select
from sqlmodel import col

from analytics.forecast_model import (
    ActualOutcome,
    Backtest,
    ChannelHistory,
    Forecast,
    ForecastSettings,
    PlannedStep,
    backtest,
    forecast,
)
from analytics.funnel import FunnelQuery, FunnelRow, funnel, runs
from cascade.audiences.definition import SegmentCatalog
from cascade.audiences.service import count_members
from cascade.infra.db import Database
from cascade.journeys.rules import failed_condition
from cascade.profiles.service import template_fields
from models.journey import JourneySpec
from models.tables import Customer, utcnow


class JourneyForecast(BaseModel):
    """A forecast with where its inputs came from."""

    journey: str
    audience_source: str
    segment: str | None = None
    history_since: datetime | None
    history_until: datetime | None
    notes: list[str]
    forecast: Forecast


class CampaignBacktest(BaseModel):
    """A past campaign forecast from the data before it."""

    journey: str
    campaign: str
    started_at: datetime
    audience: int
    notes: list[str]
    result: Backtest


def plan_of(spec: JourneySpec, prices: Mapping[str, float]) -> list[PlannedStep]:
    """The journey's steps as the forecast takes them."""
    return [
        PlannedStep(
            channel=step.channel.value,
            cost_per_message=prices.get(step.channel.value, 0.0),
            await_reaction=step.await_reaction.value,
        )
        for step in spec.steps
    ]


async def audience_size(db: Database, spec: JourneySpec, now: datetime | None = None) -> int:
    """Customers who meet the journey's entry conditions now (all live customers without any)."""
    now = now or utcnow()
    live = (col(Customer.erased_at).is_(None), col(Customer.merged_into).is_(None))
    async with db.session() as session:
        if not spec.entry.conditions:
            total = await session.execute(select(func.count()).select_from(Customer).where(*live))
            return int(total.scalar_one())
        stream = await session.stream_scalars(select(Customer).where(*live).execution_options(yield_per=2000))
        count = 0
        async for customer in stream:
            if failed_condition(spec.entry.conditions, template_fields(customer), {}, now) is None:
                count += 1
        return count


async def channel_history(
    db: Database, since: datetime | None = None, until: datetime | None = None
) -> tuple[dict[str, ChannelHistory], list[str]]:
    """Nested counts per channel over the window, and notes on what was adjusted."""
    notes: list[str] = []
    history: dict[str, ChannelHistory] = {}
    for row in await funnel(db, FunnelQuery(since=since, until=until, by=["channel"])):
        channel = str(row.key["channel"])
        converted = min(row.converted, row.clicked)
        if converted < row.converted:
            notes.append(f"{channel}: {row.converted} conversions capped at its {row.clicked} clicks")
        history[channel] = ChannelHistory(
            channel=channel,
            sent=row.sent,
            delivered=row.delivered,
            opened=row.opened,
            clicked=row.clicked,
            converted=converted,
            revenue=row.revenue,
        )
    return history, notes


async def forecast_journey(
    db: Database,
    spec: JourneySpec,
    prices: Mapping[str, float],
    *,
    audience: int | None = None,
    segment: str | None = None,
    catalog: SegmentCatalog | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    settings: ForecastSettings | None = None,
) -> JourneyForecast:
    """Forecast `spec` sent to `audience` customers, or to segment `segment`'s members now
    (counted with `catalog`), or to those who meet its entry rules (neither given).

    ValueError names the bad input: both an audience and a segment, or an unknown segment.
    """
    if segment is not None:
        if audience is not None:
            raise ValueError("audience: give a number of customers or a segment, not both")
        if catalog is None or segment not in catalog.names():
            known = ", ".join(catalog.names()) if catalog is not None else "none loaded"
            raise ValueError(f"segment: no segment named {segment!r} (known: {known})")
        audience = await count_members(db, catalog, segment)
        source = f"{audience} customers are in segment {segment} now"
    elif audience is None:
        audience = await audience_size(db, spec)
        source = f"{audience} customers meet the entry conditions of {spec.name} today"
    else:
        source = "given"
    history, notes = await channel_history(db, since, until)
    return JourneyForecast(
        journey=spec.name,
        audience_source=source,
        segment=segment,
        history_since=since,
        history_until=until,
        notes=notes,
        forecast=forecast(plan_of(spec, prices), audience, history, settings),
    )


async def backtest_campaign(
    db: Database,
    spec: JourneySpec,
    campaign: str,
    prices: Mapping[str, float],
    settings: ForecastSettings | None = None,
) -> CampaignBacktest:
    """Forecast `campaign` of journey `spec` from the history before its first run, and score it."""
    r = runs.c
    stmt = select(func.min(r.started_at), func.count()).where(r.journey == spec.name, r.campaign == campaign)
    async with db.engine.connect() as conn:
        started_at, audience = (await conn.execute(stmt)).one()
    if not audience:
        raise ValueError(f"campaign {campaign!r} of journey {spec.name!r} has no runs to backtest")
    if isinstance(started_at, str):  # SQLite hands an aggregate's datetime back as text
        started_at = datetime.fromisoformat(started_at)
    history, notes = await channel_history(db, until=started_at)
    if not history:
        notes.append("no messages before the campaign: the forecast is the priors alone")
    rows = await funnel(db, FunnelQuery(journey=spec.name, campaign=campaign))
    # A campaign whose runs sent nothing did send nothing: zeros, not a missing answer.
    done = rows[0] if rows else FunnelRow(key={})
    actual = ActualOutcome(
        sent=done.sent,
        delivered=done.delivered,
        opened=done.opened,
        clicked=done.clicked,
        converted=done.converted,
        cost=done.cost,
        revenue=done.revenue,
    )
    result = backtest(plan_of(spec, prices), int(audience), history, actual, settings, cutoff=started_at)
    return CampaignBacktest(
        journey=spec.name,
        campaign=campaign,
        started_at=started_at,
        audience=int(audience),
        notes=notes,
        result=result,
    )

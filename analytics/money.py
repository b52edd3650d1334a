"""Money: what the messages cost, per channel, journey, reaction and conversion, and what
the cascade saved against sending everywhere.

**Cost** is the sum of the ``cost`` the send activity recorded on each message (the
provider's price, in the shop's currency, ``CASCADE_CURRENCY``). Cost per reaction divides
it by the messages that got at least an open (a click counts as an open); cost per
conversion by the conversions attributed to the messages (last touch, see
:mod:`analytics.funnel`). Both are None when there is nothing to divide by.

**Savings** are computed per journey run from the same data, by the method written down in
:mod:`analytics.savings_model` (actual cost against "every usable channel at once" and "the
dearest usable channel only"). What this module feeds it, per run and step of the journey's
definition (``journeys/<name>.yaml``):

* ``sent``: the step has a message in the delivery log in a sent state (sent, delivered,
  opened, clicked, or ``unknown``: the provider may have it, so it is billed).
* ``cost``: the message's recorded cost when sent; otherwise the price list
  (``CASCADE_CHANNEL_COSTS``), since a counterfactual message would have cost that.
* ``usable``: for a sent or failed step, yes (a contact point was found). For a step that
  has no message, the customer's contact points and consents **now**, by the rule the send
  activity uses (``cascade.profiles.contacts``: a contact point that is not invalid, bounced
  or blocked, not unsubscribed for marketing, and consent granted -- or, for transactional
  journeys, not refused). Judging today's state for a past run is an approximation, said
  here rather than hidden.
* A run whose journey file no longer exists is judged from its messages alone (its unsent
  steps are unknown), which can only make the savings smaller.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from typing import Literal

from pydantic import BaseModel
from sqlalchemy import ColumnElement, and_, select
from sqlmodel import SQLModel

from analytics.funnel import SENT_STATUSES, FunnelQuery, FunnelRow, deliveries, funnel, runs
from analytics.savings_model import (
    JourneyRunCosts,
    RunSavings,
    RunStep,
    SavingsSummary,
    run_savings,
    summarise_savings,
)
from cascade.infra.db import Database
from cascade.journeys.files import JourneyDefinitionError, load_journey
from models.journey import JourneySpec
from models.tables import Consent, ContactPoint, ContactStatus, Customer, Topic

contact_points = SQLModel.metadata.tables[ContactPoint.__tablename__]
consents = SQLModel.metadata.tables[Consent.__tablename__]
customers = SQLModel.metadata.tables[Customer.__tablename__]

_DEAD = (ContactStatus.INVALID.value, ContactStatus.BOUNCED.value, ContactStatus.BLOCKED.value)
CostBy = Literal["channel", "journey", "step", "campaign", "day"]


class CostRow(BaseModel):
    """Cost of one group, with its reach and what each reaction and conversion cost."""

    key: dict[str, str | int | None]
    currency: str
    messages: int
    sent: int
    cost: float
    reactions: int
    conversions: int
    revenue: float
    cost_per_message: float | None
    cost_per_reaction: float | None
    cost_per_conversion: float | None


class SavingsReport(BaseModel):
    """Savings over the runs in range, in total and per group, in the shop's currency."""

    currency: str
    total: SavingsSummary
    groups: dict[str, SavingsSummary]


def _ratio(num: float, den: int) -> float | None:
    return num / den if den else None


def cost_rows(rows: list[FunnelRow], currency: str) -> list[CostRow]:
    """Cost figures of funnel rows (the same groups)."""
    return [
        CostRow(
            key=row.key,
            currency=currency,
            messages=row.messages,
            sent=row.sent,
            cost=row.cost,
            reactions=row.opened,
            conversions=row.converted,
            revenue=row.revenue,
            cost_per_message=_ratio(row.cost, row.sent),
            cost_per_reaction=_ratio(row.cost, row.opened),
            cost_per_conversion=_ratio(row.cost, row.converted),
        )
        for row in rows
    ]


async def cost_report(db: Database, query: FunnelQuery, currency: str) -> list[CostRow]:
    """Cost per group of `query.by` (channel, journey, ...) over the messages in range."""
    return cost_rows(await funnel(db, query), currency)


def _load_specs(names: set[str], given: Mapping[str, JourneySpec] | None) -> dict[str, JourneySpec]:
    specs: dict[str, JourneySpec] = dict(given or {})
    for name in names - specs.keys():
        try:
            specs[name] = load_journey(name)
        except (JourneyDefinitionError, OSError):
            continue  # judged from its messages alone (see the module docstring)
    return specs


def _run_filters(query: FunnelQuery) -> list[ColumnElement[bool]]:
    r = runs.c
    where: list[ColumnElement[bool]] = []
    if query.journey is not None:
        where.append(r.journey == query.journey)
    if query.campaign is not None:
        where.append(r.campaign == query.campaign)
    if query.since is not None:
        where.append(r.started_at >= query.since)
    if query.until is not None:
        where.append(r.started_at < query.until)
    return where


async def _usable_channels(db: Database, query: FunnelQuery) -> dict[tuple[str, str], set[str]]:
    """(customer, topic) -> channels usable now, for the customers of the runs in range."""
    cp, co = contact_points.c, consents.c
    in_range = select(runs.c.customer_id).where(*_run_filters(query))
    stmt = (
        select(cp.customer_id, cp.channel, cp.status, co.topic, co.granted)
        .select_from(contact_points)
        .join(customers, and_(customers.c.id == cp.customer_id, customers.c.erased_at.is_(None)))
        .outerjoin(consents, and_(co.customer_id == cp.customer_id, co.channel == cp.channel))
        .where(cp.customer_id.in_(in_range), cp.status.not_in(_DEAD))
    )
    usable: dict[tuple[str, str], set[str]] = defaultdict(set)
    async with db.engine.connect() as conn:
        for customer, channel, status, topic, granted in await conn.execute(stmt):
            # Marketing: consent granted and not unsubscribed. Transactional: not refused.
            if granted and topic == Topic.MARKETING.value and status != ContactStatus.UNSUBSCRIBED.value:
                usable[(customer, Topic.MARKETING.value)].add(channel)
            if not (topic == Topic.TRANSACTIONAL.value and granted is False):
                usable[(customer, Topic.TRANSACTIONAL.value)].add(channel)
    return usable


async def run_costs(
    db: Database,
    query: FunnelQuery,
    prices: Mapping[str, float],
    specs: Mapping[str, JourneySpec] | None = None,
) -> list[JourneyRunCosts]:
    """The steps of every journey run started in range, as the savings model takes them."""
    d, r = deliveries.c, runs.c
    stmt = (
        select(r.workflow_id, r.run_id, r.journey, r.customer_id, d.step, d.channel, d.status, d.cost)
        .select_from(runs)
        .outerjoin(deliveries, and_(d.workflow_id == r.workflow_id, d.run_id == r.run_id))
        .where(*_run_filters(query))
        .order_by(r.id, d.step)
    )
    async with db.engine.connect() as conn:
        rows = (await conn.execute(stmt)).all()
    journeys = _load_specs({row.journey for row in rows}, specs)
    usable = await _usable_channels(db, query)
    grouped: dict[tuple[str, str], list[tuple[str, str, int | None, str | None, str | None, float | None]]] = {}
    for row in rows:
        grouped.setdefault((row.workflow_id, row.run_id), []).append(
            (row.journey, row.customer_id, row.step, row.channel, row.status, row.cost)
        )
    result = []
    for (workflow_id, run_id), items in grouped.items():
        journey, customer = items[0][0], items[0][1]
        messages = {step: (channel, status, cost) for _, _, step, channel, status, cost in items if step is not None}
        spec = journeys.get(journey)
        topic = spec.topic.value if spec is not None else Topic.MARKETING.value
        reachable = usable.get((customer, topic), set())
        if spec is not None:
            plan = {i: s.channel.value for i, s in enumerate(spec.steps)}
        else:
            plan = {step: channel for step, (channel, _, _) in messages.items() if channel is not None}
        steps = []
        for index in sorted(plan.keys() | messages.keys()):
            channel = plan.get(index) or messages[index][0] or "unknown"
            message = messages.get(index)
            if message is not None and message[1] in SENT_STATUSES:
                steps.append(RunStep(channel=channel, cost=float(message[2] or 0.0), usable=True, sent=True))
            elif message is not None:
                steps.append(RunStep(channel=channel, cost=prices.get(channel, 0.0), usable=True, sent=False))
            else:
                steps.append(
                    RunStep(
                        channel=channel,
                        cost=prices.get(channel, 0.0),
                        usable=(channel in reachable) if spec is not None else None,
                    )
                )
        result.append(JourneyRunCosts(run_id=f"{workflow_id}/{run_id}", journey=journey, steps=steps))
    return result


async def savings_report(
    db: Database,
    query: FunnelQuery,
    prices: Mapping[str, float],
    currency: str,
    specs: Mapping[str, JourneySpec] | None = None,
) -> SavingsReport:
    """Savings of the runs started in range: in total and per journey."""
    per_run = [run_savings(run) for run in await run_costs(db, query, prices, specs)]
    by_journey: dict[str, list[RunSavings]] = defaultdict(list)
    for item in per_run:
        by_journey[item.journey or "?"].append(item)
    return SavingsReport(
        currency=currency,
        total=summarise_savings(per_run),
        groups={name: summarise_savings(items) for name, items in sorted(by_journey.items())},
    )


__all__ = [
    "CostRow",
    "SavingsReport",
    "cost_report",
    "cost_rows",
    "run_costs",
    "savings_report",
]

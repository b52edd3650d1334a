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

import math
from collections import defaultdict
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel
from sqlalchemy import ColumnElement, Float, Integer, String, and_, case, exists, func, literal, or_, select, union_all
from sqlalchemy import cast as sql_cast
from sqlmodel import SQLModel

from analytics.funnel import RUNS, SENT_STATUSES, FunnelQuery, FunnelRow, deliveries, filters, funnel, runs
from analytics.savings_model import (
    JourneyRunCosts,
    RunSavings,
    RunStep,
    SavingsSummary,
    summarise_savings,
)
from cascade.infra.db import Database
from cascade.journeys.files import JourneyDefinitionError, load_journey, resolve_journey_path
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


_SPEC_CACHE: dict[str, tuple[float, JourneySpec]] = {}


def _load_specs(names: set[str], given: Mapping[str, JourneySpec] | None) -> dict[str, JourneySpec]:
    specs: dict[str, JourneySpec] = dict(given or {})
    for name in names - specs.keys():
        try:
            # Parsing YAML costs more than the query on small ranges: reread a file only when it changed.
            path = resolve_journey_path(name)
            mtime = path.stat().st_mtime
            cached = _SPEC_CACHE.get(name)
            if cached is None or cached[0] != mtime:
                cached = _SPEC_CACHE[name] = (mtime, load_journey(path))
            specs[name] = cached[1]
        except (JourneyDefinitionError, OSError):
            continue  # judged from its messages alone (see the module docstring)
    return specs


async def _usable_channels(db: Database, query: FunnelQuery) -> dict[tuple[str, str], set[str]]:
    """(customer, topic) -> channels usable now, for the customers of the runs in range."""
    cp, co = contact_points.c, consents.c
    in_range = select(runs.c.customer_id).where(*filters(query, RUNS))
    stmt = (
        select(cp.customer_id, cp.channel, cp.status, co.topic, co.granted)
        .select_from(contact_points)
        .join(customers, and_(customers.c.id == cp.customer_id, customers.c.erased_at.is_(None)))
        .outerjoin(consents, and_(co.customer_id == cp.customer_id, co.channel == cp.channel))
        .where(cp.customer_id.in_(in_range), cp.status.not_in(_DEAD))
    )
    usable: dict[tuple[str, str], set[str]] = defaultdict(set)
    refused: set[tuple[str, str]] = set()
    async with db.engine.connect() as conn:
        for customer, channel, status, topic, granted in await conn.execute(stmt):
            # Marketing: consent granted and not unsubscribed. Transactional: not refused.
            if granted and topic == Topic.MARKETING.value and status != ContactStatus.UNSUBSCRIBED.value:
                usable[(customer, Topic.MARKETING.value)].add(channel)
            if topic == Topic.TRANSACTIONAL.value and granted is False:
                refused.add((customer, channel))
            else:
                usable[(customer, Topic.TRANSACTIONAL.value)].add(channel)
    for customer, channel in refused:
        usable[(customer, Topic.TRANSACTIONAL.value)].discard(channel)
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
        .where(*filters(query, RUNS))
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


def savings_from_runs(per_run: list[RunSavings], currency: str) -> SavingsReport:
    """Savings of already judged runs: in total and per journey (the reference computation)."""
    by_journey: dict[str, list[RunSavings]] = defaultdict(list)
    for item in per_run:
        by_journey[item.journey or "?"].append(item)
    return SavingsReport(
        currency=currency,
        total=summarise_savings(per_run),
        groups={name: summarise_savings(items) for name, items in sorted(by_journey.items())},
    )


def _plan_rows(specs: Mapping[str, JourneySpec], prices: Mapping[str, float]) -> Any:
    """The journeys' steps as a table (UNION ALL of literal rows: portable to both databases)."""
    rows = [
        select(
            literal(name, String).label("journey"),
            literal(index, Integer).label("step"),
            literal(step.channel.value, String).label("channel"),
            literal(prices.get(step.channel.value, 0.0), Float).label("price"),
            literal(spec.topic.value, String).label("topic"),
        )
        for name, spec in specs.items()
        for index, step in enumerate(spec.steps)
    ]
    if not rows:
        empty = select(
            literal("", String).label("journey"),
            literal(0, Integer).label("step"),
            literal("", String).label("channel"),
            literal(0.0, Float).label("price"),
            literal("", String).label("topic"),
        ).where(literal(False))
        return empty.subquery("plan")
    return union_all(*rows).subquery("plan") if len(rows) > 1 else rows[0].subquery("plan")


def _price(channel: Any, prices: Mapping[str, float]) -> Any:
    if not prices:
        return literal(0.0, Float)
    return case(
        *((channel == name, literal(price, Float)) for name, price in prices.items()), else_=literal(0.0, Float)
    )


def _usable_now(customer: Any, channel: Any, topic: Any) -> ColumnElement[bool]:
    """The send activity's rule (cascade.profiles.contacts), as a correlated EXISTS."""
    cp, co = contact_points.c, consents.c
    marketing_ok = and_(
        cp.status != ContactStatus.UNSUBSCRIBED.value,
        exists().where(
            co.customer_id == cp.customer_id,
            co.channel == cp.channel,
            co.topic == Topic.MARKETING.value,
            co.granted.is_(True),
        ),
    )
    transactional_ok = ~exists().where(
        co.customer_id == cp.customer_id,
        co.channel == cp.channel,
        co.topic == Topic.TRANSACTIONAL.value,
        co.granted.is_(False),
    )
    return exists().where(
        cp.customer_id == customer,
        cp.channel == channel,
        cp.status.not_in(_DEAD),
        exists().where(customers.c.id == cp.customer_id, customers.c.erased_at.is_(None)),
        or_(and_(topic == Topic.MARKETING.value, marketing_ok), and_(topic != Topic.MARKETING.value, transactional_ok)),
    )


async def savings_report(
    db: Database,
    query: FunnelQuery,
    prices: Mapping[str, float],
    currency: str,
    specs: Mapping[str, JourneySpec] | None = None,
) -> SavingsReport:
    """Savings of the runs started in range, in total and per journey, computed in SQL.

    The same figures as judging every run with :func:`run_costs` and
    :func:`analytics.savings_model.run_savings` (the tests hold them equal), aggregated in
    the database so a million messages need not travel to Python.
    """
    d, r = deliveries.c, runs.c
    async with db.engine.connect() as conn:
        names = {row[0] for row in await conn.execute(select(r.journey).where(*filters(query, RUNS)).distinct())}
    journeys = _load_specs(names, specs)
    plan = _plan_rows(journeys, prices)
    in_range = select(r.workflow_id, r.run_id, r.journey, r.customer_id).where(*filters(query, RUNS)).subquery("r")
    # Every planned step of every run; runs of a journey without a file: the steps they logged.
    planned = select(
        in_range.c.workflow_id,
        in_range.c.run_id,
        in_range.c.journey,
        in_range.c.customer_id,
        plan.c.step,
        plan.c.channel,
        plan.c.price,
        plan.c.topic,
        literal(True).label("known"),
    ).join(plan, plan.c.journey == in_range.c.journey)
    logged = select(
        in_range.c.workflow_id,
        in_range.c.run_id,
        in_range.c.journey,
        in_range.c.customer_id,
        d.step,
        d.channel,
        _price(d.channel, prices).label("price"),
        literal(Topic.MARKETING.value, String).label("topic"),
        literal(False).label("known"),
    ).join(deliveries, and_(d.workflow_id == in_range.c.workflow_id, d.run_id == in_range.c.run_id))
    if journeys:
        logged = logged.where(in_range.c.journey.not_in(list(journeys)))
    steps = union_all(planned, logged).subquery("steps")
    sent = d.status.in_(SENT_STATUSES)
    cost = case((sent, d.cost), else_=steps.c.price)
    usable = or_(
        d.id.is_not(None),  # sent or tried: a contact point was found
        and_(steps.c.known, _usable_now(steps.c.customer_id, steps.c.channel, steps.c.topic)),
    )
    per_channel = (
        select(
            steps.c.workflow_id,
            steps.c.run_id,
            steps.c.journey,
            func.sum(case((sent, d.cost), else_=0.0)).label("actual"),
            func.max(case((usable, cost), else_=None)).label("usable_cost"),
        )
        .select_from(steps)
        .outerjoin(
            deliveries,
            and_(d.workflow_id == steps.c.workflow_id, d.run_id == steps.c.run_id, d.step == steps.c.step),
        )
        .group_by(steps.c.workflow_id, steps.c.run_id, steps.c.journey, steps.c.channel)
        .subquery("per_channel")
    )
    per_run = (
        select(
            per_channel.c.journey,
            func.sum(per_channel.c.actual).label("actual"),
            func.sum(func.coalesce(per_channel.c.usable_cost, 0.0)).label("all_usable"),
            func.max(func.coalesce(per_channel.c.usable_cost, 0.0)).label("dearest"),
        )
        .group_by(per_channel.c.workflow_id, per_channel.c.run_id, per_channel.c.journey)
        .subquery("per_run")
    )
    stmt = (
        select(
            per_run.c.journey,
            func.count().label("runs"),
            sql_cast(func.sum(per_run.c.actual), Float).label("actual"),
            sql_cast(func.sum(per_run.c.all_usable), Float).label("all_usable"),
            sql_cast(func.sum(per_run.c.dearest), Float).label("dearest"),
        )
        .group_by(per_run.c.journey)
        .order_by(per_run.c.journey)
    )
    async with db.engine.connect() as conn:
        rows = (await conn.execute(stmt)).all()
    groups = {row.journey: _summary(row.runs, row.actual, row.all_usable, row.dearest) for row in rows}
    total = _summary(
        sum(g.runs for g in groups.values()),
        math.fsum(g.actual for g in groups.values()),
        math.fsum(g.all_usable for g in groups.values()),
        math.fsum(g.dearest_usable for g in groups.values()),
    )
    return SavingsReport(currency=currency, total=total, groups=groups)


def _summary(runs_count: int, actual: float | None, all_usable: float | None, dearest: float | None) -> SavingsSummary:
    actual, all_usable, dearest = actual or 0.0, all_usable or 0.0, dearest or 0.0
    return SavingsSummary(
        runs=runs_count,
        actual=actual,
        all_usable=all_usable,
        dearest_usable=dearest,
        saved_vs_all=all_usable - actual,
        saved_vs_all_pct=100.0 * (all_usable - actual) / all_usable if all_usable > 0 else None,
        saved_vs_dearest=dearest - actual,
        saved_vs_dearest_pct=100.0 * (dearest - actual) / dearest if dearest > 0 else None,
        unknown_usability_steps=0,
    )


__all__ = [
    "CostRow",
    "SavingsReport",
    "cost_report",
    "cost_rows",
    "run_costs",
    "savings_from_runs",
    "savings_report",
]

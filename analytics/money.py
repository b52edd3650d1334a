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

import hashlib
import math
import weakref
from collections import defaultdict
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel
from sqlalchemy import (
    ColumnElement,
    Float,
    Integer,
    String,
    Table,
    and_,
    case,
    func,
    insert,
    literal,
    or_,
    select,
    union_all,
)
from sqlalchemy import cast as sql_cast
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlmodel import SQLModel

from analytics.changes import first_changed_savings
from analytics.funnel import (
    RUNS,
    SENT_STATUSES,
    Build,
    FunnelQuery,
    FunnelRow,
    Snapshot,
    Source,
    advance_rollup,
    day_of,
    days_before,
    deliveries,
    filters,
    funnel,
    log_part,
    log_part_start,
    reading,
    refresh_recent,
    report_snapshot,
    runs,
    together,
)
from analytics.savings_model import (
    JourneyRunCosts,
    RunSavings,
    RunStep,
    SavingsSummary,
    summarise_savings,
)
from cascade.infra.db import Database
from cascade.journeys.files import JourneyDefinitionError, journey_files, load_journey, resolve_journey_path
from models.journey import JourneySpec
from models.tables import Consent, ContactPoint, ContactStatus, Customer, SavingsDaily, Topic

contact_points = SQLModel.metadata.tables[ContactPoint.__tablename__]
savings_daily: Table = SQLModel.metadata.tables[SavingsDaily.__tablename__]
SAVINGS_ROLLUP = "savings_daily"
SAVINGS_DAYS = Source(
    journey=savings_daily.c.journey,
    time=savings_daily.c.day,
    customer=None,
    campaign=savings_daily.c.campaign,
)
consents = SQLModel.metadata.tables[Consent.__tablename__]
customers = SQLModel.metadata.tables[Customer.__tablename__]

# How long before its run's recorded start a message may be created: the run's row is written
# when the start returns (or by the workflow's first activity), which may come a moment after
# the first step's message; a day is far more than that race, and little to read.
MESSAGES_BEFORE_RUN = timedelta(days=1)
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
    async with reading(db) as conn:
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
    async with reading(db) as conn:
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


def _reach(customers_in_range: Any) -> Any:
    """Per (customer, channel): usable now for marketing, and for transactional messages.

    The send activity's rule (cascade.profiles.contacts) aggregated once and hash-joined:
    a correlated EXISTS per unsent step probed the contact points and consents hundreds of
    thousands of times. The consents are joined once, both topics (one probe of their
    (customer, channel, topic) index per contact point, or one hash of the table): joined
    once per topic, PostgreSQL hashed every marketing consent even for a day's customers
    (measured: 0.5 s of a 1.9 s rebuild of one day's savings).
    """
    cp, co = contact_points.c, consents.c
    marketing_ok = and_(
        co.topic == Topic.MARKETING.value, co.granted.is_(True), cp.status != ContactStatus.UNSUBSCRIBED.value
    )
    refused = and_(co.topic == Topic.TRANSACTIONAL.value, co.granted.is_(False))
    return (
        select(
            cp.customer_id.label("customer_id"),
            cp.channel.label("channel"),
            func.max(case((marketing_ok, 1), else_=0)).label("marketing"),
            (1 - func.max(case((refused, 1), else_=0))).label("transactional"),
        )
        .select_from(contact_points)
        .join(customers, and_(customers.c.id == cp.customer_id, customers.c.erased_at.is_(None)))
        .outerjoin(consents, and_(co.customer_id == cp.customer_id, co.channel == cp.channel))
        .where(cp.status.not_in(_DEAD), cp.customer_id.in_(customers_in_range))
        .group_by(cp.customer_id, cp.channel)
        .subquery("reach")
    )


async def _savings_select(
    db: Database,
    query: FunnelQuery,
    prices: Mapping[str, float],
    specs: Mapping[str, JourneySpec] | None,
    extra: Sequence[ColumnElement[bool]] = (),
    *,
    per_day: bool = False,
    conn: AsyncConnection | None = None,
    runs_since: datetime | None = None,
) -> Any:
    """Runs, actual cost and the two counterfactuals per journey (and per start day and
    campaign with `per_day`) of the runs `query` and `extra` select (journeys read on `conn`
    when given). `runs_since` (default: the range's start): no run selected started before
    it, so their messages are looked for only among those created since (less
    MESSAGES_BEFORE_RUN)."""
    d, r = deliveries.c, runs.c
    runs_since = runs_since if runs_since is not None else query.since
    # A run's messages are created after it starts: the join reads the messages created
    # since the range's runs began, not the whole log (a hash join over every message was
    # most of a rebuild of a few recent days: measured 5.9 of 27.7 s for 14 days).
    own_messages = [d.created_at >= runs_since - MESSAGES_BEFORE_RUN] if runs_since is not None else []
    where = [*filters(query, RUNS), *extra]
    journeys_in_range = select(r.journey).where(*where).distinct()
    if conn is None:
        async with reading(db) as own:
            names = {row[0] for row in await own.execute(journeys_in_range)}
    else:
        names = {row[0] for row in await conn.execute(journeys_in_range)}
    journeys = _load_specs(names, specs)
    plan = _plan_rows(journeys, prices)
    # Runs are grouped by their integer id: sorting a million wide text keys was most of the time.
    in_range = (
        select(
            r.id,
            r.workflow_id,
            r.run_id,
            r.journey,
            r.customer_id,
            r.campaign,
            day_of(db.is_sqlite, r.started_at).label("day"),
        )
        .where(*where)
        .subquery("r")
    )
    run_columns = (
        in_range.c.id.label("run_key"),
        in_range.c.workflow_id,
        in_range.c.run_id,
        in_range.c.journey,
        in_range.c.customer_id,
        in_range.c.campaign,
        in_range.c.day,
    )
    # Every planned step of every run; runs of a journey without a file: the steps they logged.
    planned = select(
        *run_columns, plan.c.step, plan.c.channel, plan.c.price, plan.c.topic, literal(True).label("known")
    ).join(plan, plan.c.journey == in_range.c.journey)
    logged = select(
        *run_columns,
        d.step,
        d.channel,
        _price(d.channel, prices).label("price"),
        literal(Topic.MARKETING.value, String).label("topic"),
        literal(False).label("known"),
    ).join(deliveries, and_(d.workflow_id == in_range.c.workflow_id, d.run_id == in_range.c.run_id, *own_messages))
    if journeys:
        logged = logged.where(in_range.c.journey.not_in(list(journeys)))
    steps = union_all(planned, logged).subquery("steps")
    sent = d.status.in_(SENT_STATUSES)
    cost = case((sent, d.cost), else_=steps.c.price)
    reach = _reach(select(r.customer_id).where(*where))
    reachable = case((steps.c.topic == Topic.MARKETING.value, reach.c.marketing == 1), else_=reach.c.transactional == 1)
    usable = or_(
        d.id.is_not(None),  # sent or tried: a contact point was found
        and_(steps.c.known, reachable),
    )
    run_keys = [steps.c.run_key, steps.c.journey, *((steps.c.day, steps.c.campaign) if per_day else ())]
    per_channel = (
        select(
            *run_keys,
            func.sum(case((sent, d.cost), else_=0.0)).label("actual"),
            func.max(case((usable, cost), else_=None)).label("usable_cost"),
        )
        .select_from(steps)
        .outerjoin(
            deliveries,
            and_(
                d.workflow_id == steps.c.workflow_id,
                d.run_id == steps.c.run_id,
                d.step == steps.c.step,
                *own_messages,
            ),
        )
        .outerjoin(reach, and_(reach.c.customer_id == steps.c.customer_id, reach.c.channel == steps.c.channel))
        .group_by(*run_keys, steps.c.channel)
        .subquery("per_channel")
    )
    keys = [per_channel.c[c.name] for c in run_keys]
    per_run = (
        select(
            *keys,
            func.sum(per_channel.c.actual).label("actual"),
            func.sum(func.coalesce(per_channel.c.usable_cost, 0.0)).label("all_usable"),
            func.max(func.coalesce(per_channel.c.usable_cost, 0.0)).label("dearest"),
        )
        .group_by(*keys)
        .subquery("per_run")
    )
    groups = [per_run.c.journey, *((per_run.c.day, per_run.c.campaign) if per_day else ())]
    return select(
        *groups,
        func.count().label("runs"),
        sql_cast(func.coalesce(func.sum(per_run.c.actual), 0.0), Float).label("actual"),
        sql_cast(func.coalesce(func.sum(per_run.c.all_usable), 0.0), Float).label("all_usable"),
        sql_cast(func.coalesce(func.sum(per_run.c.dearest), 0.0), Float).label("dearest"),
    ).group_by(*groups)


async def refresh_savings_rollup(
    db: Database,
    prices: Mapping[str, float],
    specs: Mapping[str, JourneySpec] | None = None,
    *,
    now: datetime | None = None,
    rebuild: bool = False,
) -> datetime:
    """Roll the savings of runs started on days that closed since the last call into savings_daily."""
    build = _savings_build(db, prices, specs)
    return await advance_rollup(db, SAVINGS_ROLLUP, savings_daily, build, now=now, rebuild=rebuild)


def _savings_build(db: Database, prices: Mapping[str, float], specs: Mapping[str, JourneySpec] | None) -> Build:
    async def build(conn: AsyncConnection, since: datetime, until: datetime) -> None:
        stmt = await _savings_select(db, FunnelQuery(since=since, until=until), prices, specs, per_day=True, conn=conn)
        day_rows = stmt.subquery("day_rows")
        columns = ["day", "journey", "campaign", "runs", "actual", "all_usable", "dearest"]
        await conn.execute(insert(savings_daily).from_select(columns, select(*(day_rows.c[c] for c in columns))))

    return build


async def refresh_recent_savings(
    db: Database,
    prices: Mapping[str, float],
    specs: Mapping[str, JourneySpec] | None = None,
    *,
    now: datetime | None = None,
) -> bool:
    """savings_daily's recent days (runs started since the last closed day) judged as the log
    is now (:func:`analytics.funnel.refresh_recent`): the days whose runs changed since the
    last refresh, or every recent day when the prices or journey files differ from the last
    refresh's in this process (they are not in the database: nothing else says they changed)."""
    await refresh_savings_rollup(db, prices, specs, now=now)
    judged = _judgement(prices, specs)
    known = _JUDGED.get(db.engine)

    build = _savings_build(db, prices, specs)
    changed = first_changed_savings if known == judged else None
    done = await refresh_recent(db, SAVINGS_ROLLUP, savings_daily, build, now=now, changed=changed)
    if done:
        _JUDGED[db.engine] = judged
    return done


# What the recent savings rows were last judged with, per database (engine): the prices and
# a digest of the journey definitions.
_JUDGED: weakref.WeakKeyDictionary[AsyncEngine, tuple[tuple[tuple[str, float], ...], str]] = weakref.WeakKeyDictionary()


def _judgement(
    prices: Mapping[str, float], specs: Mapping[str, JourneySpec] | None
) -> tuple[tuple[tuple[str, float], ...], str]:
    """The prices and a digest of the journeys a refresh judges savings with."""
    digest = hashlib.sha256()
    if specs is not None:
        for name in sorted(specs):
            digest.update(f"{name}\0{specs[name].model_dump_json()}\0".encode())
    else:
        for path in journey_files():
            digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return tuple(sorted(prices.items())), digest.hexdigest()


async def savings_report(
    db: Database,
    query: FunnelQuery,
    prices: Mapping[str, float],
    currency: str,
    specs: Mapping[str, JourneySpec] | None = None,
    *,
    now: datetime | None = None,
    rollup: bool = True,
    snap: Snapshot | None = None,
) -> SavingsReport:
    """Savings of the runs started in range, in total and per journey, computed in SQL.

    The same figures as judging every run with :func:`run_costs` and
    :func:`analytics.savings_model.run_savings` (the tests hold them equal), aggregated in
    the database so a million messages need not travel to Python. Runs started on days
    the savings rollup holds are read from it (judged when the day was rolled up), the
    others from the log; `rollup=False` judges every run now. With `snap`, read in that
    snapshot (:class:`analytics.funnel.Snapshot`).
    """
    totals: dict[str, list[float]] = defaultdict(lambda: [0, 0.0, 0.0, 0.0])

    def add(rows: Sequence[Any]) -> None:
        for row in rows:
            item = totals[row.journey]
            for i, value in enumerate((row.runs, row.actual, row.all_usable, row.dearest)):
                item[i] += value or 0

    extra: list[ColumnElement[bool]] = []
    # The rollup has neither segments nor arms: such a question judges its runs from the log.
    use_rollup = rollup and query.segment is None and query.variant is None
    if use_rollup and snap is None:
        await refresh_savings_rollup(db, prices, specs, now=now)
    async with report_snapshot(db, snap) as reader:
        conn = reader.conn
        days = await reader.rolled_days(SAVINGS_ROLLUP, query) if use_rollup else None
        parts = []
        if days is not None:
            c = savings_daily.c
            untimed = query.model_copy(update={"since": None, "until": None})
            where = [*filters(untimed, SAVINGS_DAYS), days_before(c.day, days[1])]
            if days[0] is not None:
                where.append(c.day >= days[0].date())
            stmt = select(
                c.journey,
                func.sum(c.runs).label("runs"),
                func.sum(c.actual).label("actual"),
                func.sum(c.all_usable).label("all_usable"),
                func.sum(c.dearest).label("dearest"),
            ).where(*where)
            parts.append(stmt.group_by(c.journey))
            log_query, in_log = log_part(query, runs.c.started_at, days)
            extra.append(in_log)
        else:
            log_query = query
        since = log_part_start(query, days)
        parts.append(await _savings_select(db, log_query, prices, specs, extra, conn=conn, runs_since=since))
        add((await conn.execute(together(parts))).all())
    groups = {
        name: _summary(int(item[0]), item[1], item[2], item[3]) for name, item in sorted(totals.items()) if item[0]
    }
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

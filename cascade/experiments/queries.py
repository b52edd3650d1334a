"""What happened in each arm of an experiment, from assignments, deliveries and events (SQL Core)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Row, Select, and_, case, distinct, func, or_, select
from sqlalchemy.sql.elements import ColumnElement

from cascade.experiments.report import VariantFunnel
from cascade.infra.db import Database, as_utc
from models.tables import Delivery, EngagementEvent, ExperimentAssignment, ExperimentDefinition, JourneyRun

_A = ExperimentAssignment.__table__  # type: ignore[attr-defined]
_DEF = ExperimentDefinition.__table__  # type: ignore[attr-defined]
_DL = Delivery.__table__  # type: ignore[attr-defined]
_EV = EngagementEvent.__table__  # type: ignore[attr-defined]
# Event properties read as the order's value, first found wins.
REVENUE_PROPERTIES = ("amount", "revenue", "value")


async def fetch(db: Database, query: Select[Any]) -> Sequence[Row[Any]]:
    """The rows of a read-only Core query."""
    async with db.engine.connect() as conn:
        rows: Sequence[Row[Any]] = (await conn.execute(query)).all()
    return rows


def _revenue(properties: dict[str, Any] | None) -> float:
    for key in REVENUE_PROPERTIES:
        value = (properties or {}).get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    return 0.0


async def definition(db: Database, name: str) -> dict[str, Any] | None:
    """The stored experiment (its planned split, conversion events and window), or None."""
    rows = await fetch(db, select(_DEF).where(_DEF.c.name == name))
    return dict(rows[0]._mapping) if rows else None


async def experiment_names(db: Database) -> list[str]:
    """Every experiment that has had an entrant, by name."""
    return [name for (name,) in await fetch(db, select(_DEF.c.name).order_by(_DEF.c.name))]


async def _conversions(
    db: Database, experiment: str, convert_on: list[str], window: timedelta
) -> dict[str, dict[str, float]]:
    """Arm -> {customer: revenue} of customers with a conversion event inside their window."""
    converted: dict[str, dict[str, float]] = defaultdict(dict)
    if not convert_on:
        return converted
    query = (
        select(_A.c.variant, _A.c.customer_id, _A.c.assigned_at, _EV.c.occurred_at, _EV.c.properties)
        .select_from(_A.join(_EV, _EV.c.customer_id == _A.c.customer_id))
        .where(_A.c.experiment == experiment, _EV.c.type.in_(convert_on))
    )
    rows = await fetch(db, query)
    # The window is judged here, not in SQL: interval arithmetic differs between dialects.
    for row in rows:
        start = as_utc(row.assigned_at)
        if start <= as_utc(row.occurred_at) < start + window:
            by_customer = converted[row.variant]
            by_customer[row.customer_id] = by_customer.get(row.customer_id, 0.0) + _revenue(row.properties)
    return converted


async def arm_conversions(
    db: Database, experiment: str, convert_on: list[str], window: timedelta
) -> dict[str, tuple[int, int]]:
    """Arm -> (customers assigned, customers converted within the window)."""
    rows = await fetch(
        db, select(_A.c.variant, func.count().label("n")).where(_A.c.experiment == experiment).group_by(_A.c.variant)
    )
    sizes = {row.variant: int(row.n) for row in rows}
    converted = await _conversions(db, experiment, convert_on, window)
    return {arm: (n, len(converted.get(arm, {}))) for arm, n in sizes.items()}


async def funnel(db: Database, experiment: str, arms: list[str]) -> list[VariantFunnel]:
    """Per arm (in the order of `arms`, then any other recorded): customers at each stage and money.

    Stages count customers, not messages: a customer who got three steps is one `sent`.
    A delivery belongs to an arm when its journey, customer and variant match the assignment.
    """
    stored = await definition(db, experiment)
    if stored is None:
        return []
    window = timedelta(seconds=stored["window_seconds"])
    sizes = await arm_conversions(db, experiment, stored["convert_on"], window)
    converted = await _conversions(db, experiment, stored["convert_on"], window)
    delivered_any = or_(_DL.c.delivered_at.is_not(None), _DL.c.opened_at.is_not(None), _DL.c.clicked_at.is_not(None))
    opened_any = or_(_DL.c.opened_at.is_not(None), _DL.c.clicked_at.is_not(None))

    def customers(condition: ColumnElement[bool]) -> Any:
        # COUNT(DISTINCT CASE WHEN ... THEN customer END): NULLs (other rows) are not counted.
        return func.count(distinct(case((condition, _DL.c.customer_id))))

    query = (
        select(
            _A.c.variant,
            customers(_DL.c.sent_at.is_not(None)).label("sent"),
            customers(delivered_any).label("delivered"),
            customers(opened_any).label("opened"),
            customers(_DL.c.clicked_at.is_not(None)).label("clicked"),
            func.coalesce(func.sum(_DL.c.cost), 0.0).label("cost"),
        )
        .select_from(
            _A.join(
                _DL,
                and_(
                    _DL.c.customer_id == _A.c.customer_id,
                    _DL.c.journey == _A.c.journey,
                    _DL.c.variant == _A.c.variant,
                ),
            )
        )
        .where(_A.c.experiment == experiment)
        .group_by(_A.c.variant)
    )
    stages = {row.variant: row for row in await fetch(db, query)}
    order = [a for a in arms if a in sizes or a in stored["planned_split"]]
    order += sorted(a for a in sizes if a not in order)
    lines = []
    for arm in order:
        stage = stages.get(arm)
        won = converted.get(arm, {})
        lines.append(
            VariantFunnel(
                variant=arm,
                recipients=sizes.get(arm, (0, 0))[0],
                sent=stage.sent if stage else 0,
                delivered=stage.delivered if stage else 0,
                opened=stage.opened if stage else 0,
                clicked=stage.clicked if stage else 0,
                converted=len(won),
                revenue=round(sum(won.values()), 2),
                cost=round(float(stage.cost), 4) if stage else 0.0,
            )
        )
    return lines


async def daily_entries(db: Database, journey: str, days: int, now: datetime) -> float:
    """Customers who entered `journey` per day over the last `days` days (journey_runs)."""
    runs = JourneyRun.__table__  # type: ignore[attr-defined]
    [(count,)] = await fetch(
        db, select(func.count()).where(runs.c.journey == journey, runs.c.started_at >= now - timedelta(days=days))
    )
    return int(count) / days

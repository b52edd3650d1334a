"""`cascade routing`: look at what optichannel routing and send-time optimisation would do.

- `preview`: the send hour each customer of a segment would get now (`send_at: best`).
- `explain`: how one customer's channels rank right now, with the reasons.

Both read the delivery log only; nothing is sent or written.
"""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from sqlmodel import col, select

from activities.routing import RoutingActivities
from cascade.cli.common import command, group
from cascade.infra.db import Database, run_with_database
from cascade.infra.settings import get_settings
from cascade.routing.sendtime import QuietPeriod, preview
from cascade.routing.timing import preview_send_times
from models.journey import ChannelName, parse_duration
from models.tables import Customer

app = group("Optichannel routing: preview send times, explain channel rankings.")
console = Console()


def _window(value: str) -> timedelta:
    parsed = parse_duration(value)
    if not isinstance(parsed, timedelta) or parsed <= timedelta(0):
        raise typer.BadParameter(f"--window: {value!r} is not a duration such as 24h or 2d")
    return parsed


def _quiet(value: str | None) -> list[QuietPeriod]:
    if not value:
        return []
    try:
        start, end = (time.fromisoformat(part.strip()) for part in value.split("-", 1))
        return [QuietPeriod(start, end)]
    except ValueError as exc:
        raise typer.BadParameter(f"--quiet: {value!r} is not a range such as 21:00-08:00") from exc


def _at(value: str | None) -> datetime:
    if value is None:
        return datetime.now(UTC)
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise typer.BadParameter(f"--at: {value!r} is not an ISO 8601 time") from exc
    if parsed.tzinfo is None:
        raise typer.BadParameter(f"--at: {value!r} needs a time zone, e.g. 2026-12-01T09:00:00+00:00")
    return parsed


@command(app, "preview")
def preview_command(
    segment: Annotated[str | None, typer.Option(help="Customers whose segment attribute has this value")] = None,
    customer: Annotated[list[str] | None, typer.Option(help="A customer id (repeatable) instead of a segment")] = None,
    window: Annotated[str, typer.Option(help="How far ahead a step may wait for the best hour")] = "24h",
    quiet: Annotated[str | None, typer.Option(help="Quiet hours in each customer's zone, e.g. 21:00-08:00")] = None,
    at: Annotated[str | None, typer.Option(help="Pretend it is this time (ISO 8601 with zone)")] = None,
    limit: Annotated[int, typer.Option(min=1, help="Customers read at most")] = 1000,
) -> None:
    """The send hour (local) each customer would get for `send_at: best` now, counted per hour."""
    settings = get_settings()
    span, periods, now = _window(window), _quiet(quiet), _at(at)
    if segment is None and not customer:
        raise typer.BadParameter("give --segment or at least one --customer")

    async def work(db: Database) -> list[tuple[str, str, str]]:
        async with db.session() as session:
            query = select(Customer).where(col(Customer.erased_at).is_(None))
            if customer:
                query = query.where(col(Customer.id).in_(customer))
            else:
                attribute = col(Customer.attributes)[settings.routing_segment_attribute].as_string()
                query = query.where(attribute == segment)
            found = list((await session.exec(query.order_by(col(Customer.id)).limit(limit))).all())
            conn = await session.connection()
            decisions = await preview_send_times(
                conn,
                found,
                segment_attribute=settings.routing_segment_attribute,
                at=now,
                window=span,
                quiet=periods,
                history=timedelta(days=settings.routing_history_days),
            )
        summary = preview(decisions)
        rows = [(label, str(n), "") for label, n in summary.items()]
        rows += [(c.id, d.local_time, d.reason) for c, d in zip(found, decisions, strict=True)]
        return rows

    rows = run_with_database(work, settings)
    hours = Table(title="Send hours (customer's local time)")
    hours.add_column("hour of week")
    hours.add_column("customers", justify="right")
    detail = Table(title="Per customer")
    for name in ("customer", "send at (local)", "why"):
        detail.add_column(name)
    for a, b, c in rows:
        if c:
            detail.add_row(a, b, c)
        else:
            hours.add_row(a, b)
    if not any(c for _, _, c in rows):
        console.print("no customers matched")
        raise typer.Exit(1)
    console.print(hours)
    console.print(detail)


@command(app, "explain")
def explain_command(
    customer_id: Annotated[str, typer.Argument(help="The customer's id")],
    channels: Annotated[str, typer.Option(help="The pool, comma-separated, in journey order")] = "email,telegram,sms",
    max_cost_per_reaction: Annotated[
        float | None, typer.Option(min=0.0, help="The journey's ceiling: what one reaction is worth")
    ] = None,
) -> None:
    """How the customer's channels rank now (exploration off), with each channel's reasons."""
    if max_cost_per_reaction is not None and max_cost_per_reaction <= 0:
        raise typer.BadParameter("--max-cost-per-reaction: must be above 0")
    settings = get_settings().model_copy(update={"routing_exploration": 0.0})
    try:
        pool = [ChannelName(c.strip()) for c in channels.split(",") if c.strip()]
    except ValueError as exc:
        raise typer.BadParameter(f"--channels: {exc}") from exc
    if not pool:
        raise typer.BadParameter("--channels: name at least one channel")

    async def work(db: Database) -> list[str]:
        acts = RoutingActivities(db, settings)
        result = await acts.rank(customer_id, pool, datetime.now(UTC), max_cost_per_reaction)
        lines = [f"chosen: {result.chosen.value if result.chosen else 'none'}"]
        lines += [r.reason for r in result.ranked]
        lines += [f"{ch}: unusable ({why})" for ch, why in result.unusable.items()]
        return lines

    for line in run_with_database(work, settings):
        console.print(line, highlight=False)

"""`cascade report funnel|cost|savings`: the marketer's numbers as a table, JSON, CSV or a chart.

cascade report funnel --journey winback --since 2026-10-01 --by channel
cascade report funnel --by variant --segment dormant
cascade report cost --by journey --format csv
cascade report savings --format png --output savings.png
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from temporalio.service import RPCError

from analytics import charts
from analytics.funnel import FunnelQuery, FunnelRow, funnel
from analytics.money import CostRow, SavingsReport, cost_report, savings_report
from analytics.recent import RecentRefresh, apply_refresh_schedule, delete_refresh_schedule, refresh_recent_rollups
from cascade.audiences.definition import SegmentDefinitionError
from cascade.audiences.service import load_segments
from cascade.cli.common import command, group
from cascade.infra.db import Database, run_with_database
from cascade.infra.settings import get_settings
from cascade.infra.temporal import connect

app = group("Reports over the delivery log: funnel, cost and savings of the cascade.")


class By(StrEnum):
    """What a report groups by."""

    channel = "channel"
    step = "step"
    journey = "journey"
    campaign = "campaign"
    day = "day"
    variant = "variant"
    segment = "segment"


class Format(StrEnum):
    """How a report is written."""

    table = "table"
    json = "json"
    csv = "csv"
    html = "html"
    png = "png"


def parse_when(value: str | None, option: str) -> datetime | None:
    """A date (YYYY-MM-DD, midnight UTC) or ISO datetime; naive means UTC."""
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(
            f"{value!r} is not a date (YYYY-MM-DD) or ISO datetime", param_hint=f"'{option}'"
        ) from None
    if len(value) == 10:
        parsed = datetime.combine(date.fromisoformat(value), datetime.min.time())
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def build_query(
    journey: str | None,
    since: str | None,
    until: str | None,
    by: Sequence[By],
    campaign: str | None = None,
    channel: str | None = None,
    window_days: float = 7.0,
    *,
    variant: str | None = None,
    segment: str | None = None,
) -> FunnelQuery:
    """The query the options describe; bad options are refused with the option's name."""
    if segment is not None:
        _check_segment(segment)
    if window_days <= 0:
        raise typer.BadParameter("must be more than 0 days", param_hint="'--window'")
    start, end = parse_when(since, "--since"), parse_when(until, "--until")
    if start and end and end <= start:
        raise typer.BadParameter(f"{until} is not after --since {since}", param_hint="'--until'")
    return FunnelQuery(
        journey=journey,
        campaign=campaign,
        channel=channel,
        variant=variant,
        segment=segment,
        since=start,
        until=end,
        by=[b.value for b in dict.fromkeys(by)],
        attribution_window=timedelta(days=window_days),
    )


def _check_segment(name: str) -> None:
    """A segment the catalog knows (built-in or a file), else the option is refused."""
    try:
        catalog = load_segments(get_settings())
    except SegmentDefinitionError as exc:
        raise typer.BadParameter(f"the segment files do not load: {exc}", param_hint="'--segment'") from None
    if name not in catalog.names():
        known = ", ".join(catalog.names())
        raise typer.BadParameter(f"no segment named {name!r} (known: {known})", param_hint="'--segment'")


_TEXT_COLUMNS = {*(b.value for b in By), "currency", "skipped_by_reason"}


def _records(rows: Sequence[FunnelRow | CostRow]) -> list[dict[str, Any]]:
    out = []
    for row in rows:
        data = row.model_dump()
        out.append({**data.pop("key"), **data})
    return out


def _flat(record: dict[str, Any]) -> dict[str, Any]:
    # Tables and CSV cells hold text: a breakdown such as skipped_by_reason as "reason: n; ...".
    return {
        k: "; ".join(f"{reason}: {n}" for reason, n in v.items()) if isinstance(v, dict) else v
        for k, v in record.items()
    }


def _write(
    records: list[dict[str, Any]],
    fmt: Format,
    output: Path | None,
    title: str,
    chart: Callable[[], charts.BarChart],
) -> None:
    console = Console()
    if fmt in (Format.html, Format.png):
        if output is None:
            raise typer.BadParameter(f"--format {fmt.value} writes a file: give --output", param_hint="'--output'")
        figure = chart()
        if fmt is Format.html:
            output.write_text(charts.html_page(figure), encoding="utf-8")
        else:
            output.write_bytes(charts.png(figure))
        console.print(f"{title}: chart written to {output}")
        return
    if fmt is Format.json:
        text = json.dumps(records, indent=2, default=str)
    elif fmt is Format.csv:
        buffer = io.StringIO()
        if records:
            writer = csv.DictWriter(buffer, fieldnames=list(records[0]), lineterminator="\n")
            writer.writeheader()
            writer.writerows(_flat(r) for r in records)
        text = buffer.getvalue()
    else:
        table = Table(title=title)
        columns = list(records[0]) if records else ["(no data in range)"]
        for name in columns:
            table.add_column(name, justify="left" if name in _TEXT_COLUMNS else "right")
        for record in map(_flat, records):
            table.add_row(*(_cell(record[c]) for c in columns))
        if output is None:
            console.print(table)
            return
        text = _table_text(table)
    if output is None:
        typer.echo(text, nl=False)
    else:
        output.write_text(text, encoding="utf-8")
        console.print(f"{title}: written to {output}")


def _table_text(table: Table) -> str:
    capture = Console(file=io.StringIO(), width=200, color_system=None)
    capture.print(table)
    file = capture.file
    assert isinstance(file, io.StringIO)
    return file.getvalue()


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.4f}".rstrip("0").rstrip(".") if value else "0"
    return str(value)


JourneyOpt = Annotated[str | None, typer.Option("--journey", "-j", help="Only this journey")]
SinceOpt = Annotated[str | None, typer.Option(help="From this date (YYYY-MM-DD or ISO datetime, UTC)")]
UntilOpt = Annotated[str | None, typer.Option(help="Up to this date, exclusive")]
CampaignOpt = Annotated[str | None, typer.Option(help="Only runs of this campaign")]
SegmentOpt = Annotated[
    str | None, typer.Option(help="Only customers who were in this segment when the message went out")
]
VariantOpt = Annotated[str | None, typer.Option(help="Only this experiment arm")]
FormatOpt = Annotated[Format, typer.Option("--format", "-f", help="table, json, csv, or a chart: html, png")]
OutputOpt = Annotated[Path | None, typer.Option("--output", "-o", help="Write to this file (required for charts)")]
WindowOpt = Annotated[float, typer.Option("--window", help="Attribution window of conversions, in days")]


def _run(work: Callable[[Database], Any]) -> Any:
    async def call(db: Database) -> Any:
        return await work(db)

    return run_with_database(call)


@command(app, "funnel")
def funnel_command(
    journey: JourneyOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    by: Annotated[list[By] | None, typer.Option("--by", help="Group by (repeatable)")] = None,
    campaign: CampaignOpt = None,
    channel: Annotated[str | None, typer.Option(help="Only this channel")] = None,
    segment: SegmentOpt = None,
    variant: VariantOpt = None,
    window: WindowOpt = 7.0,
    fmt: FormatOpt = Format.table,
    output: OutputOpt = None,
) -> None:
    """Sent, delivered, opened, clicked, converted, unsubscribed, failed, skipped (by reason), cost and revenue."""
    query = build_query(journey, since, until, by or [], campaign, channel, window, variant=variant, segment=segment)
    rows: list[FunnelRow] = _run(lambda db: funnel(db, query))
    _write(_records(rows), fmt, output, "Funnel", lambda: charts.funnel_chart(rows))


@command(app, "cost")
def cost_command(
    journey: JourneyOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    by: Annotated[list[By] | None, typer.Option("--by", help="Group by (repeatable); channel by default")] = None,
    campaign: CampaignOpt = None,
    segment: SegmentOpt = None,
    variant: VariantOpt = None,
    window: WindowOpt = 7.0,
    fmt: FormatOpt = Format.table,
    output: OutputOpt = None,
) -> None:
    """Cost per channel (or journey, step, ...), per reaction and per conversion."""
    query = build_query(
        journey, since, until, by or [By.channel], campaign, None, window, variant=variant, segment=segment
    )
    currency = get_settings().currency
    rows: list[CostRow] = _run(lambda db: cost_report(db, query, currency))
    _write(_records(rows), fmt, output, f"Cost ({currency})", lambda: charts.cost_chart(rows))


@command(app, "savings")
def savings_command(
    journey: JourneyOpt = None,
    since: SinceOpt = None,
    until: UntilOpt = None,
    campaign: CampaignOpt = None,
    segment: Annotated[
        str | None, typer.Option(help="Only runs of customers who were in this segment when the run started")
    ] = None,
    variant: Annotated[str | None, typer.Option(help="Only runs assigned to this experiment arm")] = None,
    fmt: FormatOpt = Format.table,
    output: OutputOpt = None,
) -> None:
    """What the cascade cost per journey against every usable channel at once and the dearest only."""
    query = build_query(journey, since, until, [], campaign, variant=variant, segment=segment)
    settings = get_settings()
    report: SavingsReport = _run(lambda db: savings_report(db, query, settings.channel_costs, settings.currency))
    records = [{"journey": name, **summary.model_dump()} for name, summary in report.groups.items()]
    if report.groups:
        records.append({"journey": "TOTAL", **report.total.model_dump()})
    _write(records, fmt, output, f"Savings of the cascade ({report.currency})", lambda: charts.savings_chart(report))


@command(app, "refresh")
def refresh_command() -> None:
    """Roll up the recent days now (what the analytics schedule does every few minutes)."""
    settings = get_settings()
    done: RecentRefresh = _run(lambda db: refresh_recent_rollups(db, settings.channel_costs))
    rebuilt = ", ".join(done.refreshed) or "nothing (another refresh had just done it)"
    typer.echo(f"recent days as of {done.as_of:%Y-%m-%d %H:%M:%S} UTC: rebuilt {rebuilt}")


@command(app, "schedule")
def schedule_command(
    every: Annotated[
        int | None,
        typer.Option("--every", min=1, max=1440, help="Minutes between refreshes (CASCADE_ANALYTICS_REFRESH_MINUTES)"),
    ] = None,
    delete: Annotated[bool, typer.Option("--delete", help="Delete the schedule")] = False,
) -> None:
    """Create or update the Temporal Schedule that runs AnalyticsRefresh on the worker of CASCADE_TASK_QUEUE."""
    if every is not None and delete:
        raise typer.BadParameter("use --every or --delete, not both")
    settings = get_settings()

    async def act() -> str:
        client = await connect(settings)
        if delete:
            return await delete_refresh_schedule(client)
        return await apply_refresh_schedule(client, settings, timedelta(minutes=every) if every else None)

    try:
        line = asyncio.run(act())
    except LookupError as exc:
        typer.echo(f"error: {exc.args[0]}", err=True)
        raise typer.Exit(1) from None
    except (RPCError, RuntimeError) as exc:
        typer.echo(f"error: Temporal at {settings.temporal_address}: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(line)

"""`cascade forecast`: a planned journey's outcome in three scenarios, and backtests.

cascade forecast --journey winback                    # audience: who meets its entry rules
cascade forecast --journey winback --segment dormant  # audience: the segment's members now
cascade forecast --journey winback --audience 5000 --format json
cascade forecast backtest --journey winback --campaign autumn
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from analytics.forecast_model import ForecastSettings
from analytics.forecast_service import CampaignBacktest, JourneyForecast, backtest_campaign, forecast_journey
from cascade.audiences.definition import SegmentDefinitionError
from cascade.audiences.service import load_segments
from cascade.cli.common import Group, command
from cascade.cli.reports import parse_when
from cascade.infra.db import Database, run_with_database
from cascade.infra.settings import get_settings
from cascade.journeys.files import JourneyDefinitionError, load_journey
from models.journey import JourneySpec

app = typer.Typer(
    help="Forecast a planned journey (pessimistic, neutral, optimistic) from past rates; backtest past campaigns.",
    invoke_without_command=True,
    cls=Group,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

FIGURES = ("sent", "delivered", "opened", "clicked", "converted", "cost", "revenue")


class Format(StrEnum):
    """How the forecast is written."""

    table = "table"
    json = "json"


def _journey(name: str) -> JourneySpec:
    try:
        return load_journey(name)
    except JourneyDefinitionError as exc:
        raise typer.BadParameter(str(exc), param_hint="'--journey'") from None


def _show_forecast(result: JourneyForecast, currency: str) -> None:
    console = Console()
    fc = result.forecast
    table = Table(title=f"Forecast of {result.journey} for {fc.audience} customers ({currency})")
    table.add_column("scenario")
    for name in FIGURES:
        table.add_column(name, justify="right")
    for scenario in fc.scenarios:
        total = scenario.total
        table.add_row(scenario.name, *(_fmt(getattr(total, name), name) for name in FIGURES))
    console.print(table)
    console.print(f"Audience: {result.audience_source}.")
    a = fc.assumptions
    low, mid, high = a.quantiles
    console.print(
        f"Assumptions: {a.draws} Monte Carlo draws (seed {a.seed}) over Beta posteriors of past per-channel rates; "
        f"scenarios at the {low:.0%} / {mid:.0%} / {high:.0%} quantiles; priors weigh {a.prior_strength:g} messages."
    )
    for channel in a.channels:
        rates = ", ".join(f"{r.stage} {r.posterior_mean:.1%} ({r.successes}/{r.trials})" for r in channel.rates)
        console.print(f"  {channel.channel}: {rates}; prior: {channel.prior_source}")
    if a.thin_channels:
        console.print(f"  Thin history (under {a.thin_below} messages, mostly the prior): {', '.join(a.thin_channels)}")
    for note in result.notes:
        console.print(f"  Note: {note}")


def _fmt(value: float, name: str) -> str:
    return f"{value:,.2f}" if name in ("cost", "revenue") else f"{value:,.0f}"


@app.callback()
def forecast_command(
    ctx: typer.Context,
    journey: Annotated[str | None, typer.Option("--journey", "-j", help="Journey name or file")] = None,
    audience: Annotated[
        int | None, typer.Option(min=0, help="Customers to send to (default: who meets the entry rules now)")
    ] = None,
    segment: Annotated[str | None, typer.Option(help="Send to this segment's members (counted now)")] = None,
    since: Annotated[str | None, typer.Option(help="History from this date (default: all)")] = None,
    until: Annotated[str | None, typer.Option(help="History up to this date, exclusive")] = None,
    draws: Annotated[int, typer.Option(min=100, max=1_000_000, help="Monte Carlo draws")] = 4000,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same forecast)")] = 0,
    fmt: Annotated[Format, typer.Option("--format", "-f")] = Format.table,
) -> None:
    """Forecast --journey NAME in three scenarios (or run a subcommand)."""
    if ctx.invoked_subcommand is not None:
        return
    if journey is None:
        raise typer.BadParameter("name the journey to forecast", param_hint="'--journey'")
    spec = _journey(journey)
    settings = get_settings()
    start, end = parse_when(since, "--since"), parse_when(until, "--until")
    knobs = ForecastSettings(draws=draws, seed=seed)
    catalog = None
    if segment is not None:
        if audience is not None:
            raise typer.BadParameter("give --audience or --segment, not both", param_hint="'--segment'")
        try:
            catalog = load_segments(settings)
        except SegmentDefinitionError as exc:
            raise typer.BadParameter(f"the segment files do not load: {exc}", param_hint="'--segment'") from None
        if segment not in catalog.names():
            known = ", ".join(catalog.names())
            raise typer.BadParameter(f"no segment named {segment!r} (known: {known})", param_hint="'--segment'")

    async def work(db: Database) -> JourneyForecast:
        return await forecast_journey(
            db,
            spec,
            settings.channel_costs,
            audience=audience,
            segment=segment,
            catalog=catalog,
            since=start,
            until=end,
            settings=knobs,
        )

    result: JourneyForecast = run_with_database(work)
    if fmt is Format.json:
        typer.echo(result.model_dump_json(indent=2))
    else:
        _show_forecast(result, settings.currency)


@command(app, "backtest")
def backtest_command(
    journey: Annotated[str, typer.Option("--journey", "-j", help="Journey name or file")],
    campaign: Annotated[str, typer.Option(help="The past campaign to forecast from the data before it")],
    draws: Annotated[int, typer.Option(min=100, max=1_000_000)] = 4000,
    seed: int = 0,
    fmt: Annotated[Format, typer.Option("--format", "-f")] = Format.table,
) -> None:
    """Forecast a past campaign from the data before its first run and show the error per figure."""
    spec = _journey(journey)
    settings = get_settings()

    async def work(db: Database) -> CampaignBacktest:
        return await backtest_campaign(
            db, spec, campaign, settings.channel_costs, ForecastSettings(draws=draws, seed=seed)
        )

    try:
        result: CampaignBacktest = run_with_database(work)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="'--campaign'") from None
    if fmt is Format.json:
        typer.echo(result.model_dump_json(indent=2))
        return
    table = Table(title=f"Backtest of {result.journey} / {result.campaign} (started {result.started_at:%Y-%m-%d})")
    for name in ("figure", "forecast", "low", "high", "actual", "error", "inside band"):
        table.add_column(name, justify="left" if name == "figure" else "right")
    for e in result.result.errors:
        numbers = [_fmt(v, e.metric) for v in (e.predicted, e.low, e.high, e.actual)]
        rel = f"{e.rel_error:.0%}" if e.rel_error is not None else "-"
        table.add_row(e.metric, *numbers, rel, "yes" if e.inside_band else "no")
    Console().print(table)
    mean = result.result.mean_rel_error
    Console().print(
        f"Audience {result.audience} runs; {result.result.inside_band_share:.0%} of figures inside the band; "
        f"mean relative error {'-' if mean is None else f'{mean:.0%}'}."
    )
    for note in result.notes:
        Console().print(f"Note: {note}")

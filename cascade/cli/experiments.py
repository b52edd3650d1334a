"""`cascade experiments`: an experiment's results, and how long a planned one must run."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from analytics.stats import ExperimentPlan
from cascade.cli.common import command, group
from cascade.experiments.queries import daily_entries, experiment_names
from cascade.experiments.report import ExperimentReport
from cascade.experiments.results import UnknownExperimentError, experiment_plan, experiment_report
from cascade.infra.db import Database
from cascade.infra.settings import get_settings
from models.tables import utcnow

app = group("A/B, multivariate and bandit experiments in journeys: results and planning.")


def parse_share(text: str, option: str) -> float:
    """`10%` -> 0.1, `0.1` -> 0.1; a clear error otherwise."""
    raw = text.strip()
    try:
        return float(raw[:-1]) / 100.0 if raw.endswith("%") else float(raw)
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a share (write 10% or 0.1)", param_hint=option) from None


def _pct(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}%}"


def _database() -> Database:
    return Database.from_settings(get_settings())


async def _report(name: str, seed: int) -> ExperimentReport:
    db = _database()
    try:
        return await experiment_report(db, name, seed=seed)
    finally:
        await db.dispose()


def render_report(report: ExperimentReport, console: Console) -> None:
    """The report as two tables (funnel, statistics) and the sample-ratio verdict."""
    console.print(
        f"[bold]{report.experiment}[/] in journey {report.journey} ({report.mode});"
        f" conversions counted {report.window_days:g} days after entry"
    )
    funnel = Table(
        "arm", "planned", "recipients", "sent", "delivered", "opened", "clicked", "converted", "revenue", "cost"
    )
    for line in report.funnel:
        funnel.add_row(
            line.variant,
            _pct(report.planned_split.get(line.variant), 1),
            *(
                f"{n:,}"
                for n in (line.recipients, line.sent, line.delivered, line.opened, line.clicked, line.converted)
            ),
            f"{line.revenue:,.2f}",
            f"{line.cost:,.2f}",
        )
    console.print(funnel)
    if report.stats is None:
        console.print(report.note or "no statistics yet")
        return
    stats = report.stats
    table = Table(
        "arm", "conversion", f"{stats.confidence:.0%} interval", "lift", "p (z)", "p (Holm)", "P(beat)", "exp. loss"
    )
    for v in stats.variants:
        cmp = v.versus_control
        interval = v.conversion_rate_interval
        table.add_row(
            v.name + (" (control)" if v.is_control and v.name != "control" else ""),
            _pct(v.conversion_rate),
            f"{_pct(interval.low)} - {_pct(interval.high)}" if interval else "-",
            _pct(cmp.relative_lift, 1) if cmp else "",
            f"{cmp.p_value:.4f}" if cmp else "",
            f"{cmp.p_value_holm:.4f}" + (" *" if cmp.significant else "") if cmp else "",
            _pct(cmp.probability_to_beat_control, 1) if cmp else "",
            f"{cmp.expected_loss:.5f}" if cmp and cmp.expected_loss is not None else "",
        )
    console.print(table)
    if stats.chi_square is not None:
        chi = stats.chi_square
        console.print(f"chi-square over all arms: {chi.statistic:.3f} on {chi.dof} df, p = {chi.p_value:.4f}")
    if stats.sample_ratio is not None:
        style = "bold red" if stats.sample_ratio.mismatch else "green"
        console.print(f"[{style}]sample ratio: {stats.sample_ratio.message}[/]")
    console.print(f"* significant at alpha {stats.alpha} after Holm's correction")


@command(app)
def show(
    name: Annotated[str, typer.Argument(help="The experiment's name (experiment.name in the journey file)")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON")] = False,
    seed: Annotated[int, typer.Option(help="Seed of the Bayesian Monte Carlo (same seed, same numbers)")] = 0,
) -> None:
    """Per arm: recipients, sent, delivered, opened, clicked, converted, revenue, cost, and the statistics."""
    try:
        report = asyncio.run(_report(name, seed))
    except UnknownExperimentError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    if as_json:
        typer.echo(report.model_dump_json(indent=2))
        return
    render_report(report, Console(width=140))


@command(app, "list")
def list_experiments() -> None:
    """Experiments that have had at least one entrant."""

    async def names() -> list[str]:
        db = _database()
        try:
            return await experiment_names(db)
        finally:
            await db.dispose()

    for name in asyncio.run(names()):
        typer.echo(name)


async def _traffic(journey: str, days: int) -> float:
    db = _database()
    try:
        return await daily_entries(db, journey, days, utcnow())
    finally:
        await db.dispose()


def render_plan(plan: ExperimentPlan, console: Console) -> None:
    """The plan in a marketer's words."""
    console.print(
        f"To detect {plan.baseline_rate:.2%} -> {plan.target_rate:.2%} ({plan.minimum_detectable_effect:+.0%})"
        f" with {plan.power:.0%} power at alpha {plan.alpha}"
        + (f" ({plan.alpha_per_comparison:.4f} per comparison, Holm)" if plan.variants > 1 else "")
        + ":"
    )
    console.print(f"  control: {plan.control_size:,} customers ({plan.control_share:.0%} of traffic)")
    console.print(f"  each of {plan.variants} variant(s): {plan.variant_size:,} customers ({plan.variant_share:.0%})")
    console.print(f"  total: {plan.total_size:,} customers")
    if plan.days is not None and plan.daily_traffic is not None:
        console.print(f"  at {plan.daily_traffic:,.1f} customers a day: {plan.days:,} days")


@command(app)
def plan(
    baseline: Annotated[str, typer.Option(help="Today's conversion rate: 0.04 or 4%")],
    mde: Annotated[str, typer.Option(help="Smallest relative lift worth detecting: 10% or 0.1")],
    variants: Annotated[int, typer.Option(min=1, help="Variants besides the control")] = 1,
    control: Annotated[str | None, typer.Option(help="Control share (default: equal arms)")] = None,
    power: Annotated[float, typer.Option(help="Chance to detect a real effect of that size")] = 0.8,
    alpha: Annotated[float, typer.Option(help="Significance level")] = 0.05,
    daily_traffic: Annotated[float | None, typer.Option(help="Customers entering per day")] = None,
    journey: Annotated[
        str | None, typer.Option(help="Measure the daily traffic from this journey's entries (journey_runs)")
    ] = None,
    days: Annotated[int, typer.Option(min=1, help="Days of history the traffic is measured over")] = 14,
    as_json: Annotated[bool, typer.Option("--json", help="Print the plan as JSON")] = False,
) -> None:
    """Sample size per arm and the days needed at the current traffic."""
    traffic = daily_traffic
    if traffic is None and journey is not None:
        traffic = asyncio.run(_traffic(journey, days)) or None
        if traffic is None:
            typer.echo(f"note: journey {journey!r} had no entries in the last {days} days", err=True)
    try:
        result = experiment_plan(
            parse_share(baseline, "--baseline"),
            parse_share(mde, "--mde"),
            variants=variants,
            control_share=parse_share(control, "--control") if control is not None else None,
            daily_traffic=traffic,
            power=power,
            alpha=alpha,
        )
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    if as_json:
        typer.echo(json.dumps(result.model_dump(), indent=2))
        return
    render_plan(result, Console(width=120))

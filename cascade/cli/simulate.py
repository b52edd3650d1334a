"""`cascade simulate`: weeks of history from a simulated population, through the real workflows.

cascade simulate --customers 300 --weeks 4 --seed 7
cascade simulate status      # what simulated history the database holds

Runs on Temporal's time-skipping test server (no dev server needed) and writes to the
configured database (CASCADE_DATABASE_URL), so `cascade report ...` and the console show
it at once. See cascade.simulator.history for the population and how rows are dated.
"""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer
from rich.console import Console

from cascade.cli.common import Group, command
from cascade.demo.simulation import HistoryStatus, simulate_history, simulated_history
from cascade.infra.db import Database, run_with_database
from cascade.infra.logging import configure_logging
from cascade.infra.settings import get_settings
from cascade.simulator.history import SimulationReport, time_skipping_server

app = typer.Typer(
    help="Simulate customers with hidden channel habits through the real journeys (time-skipping server).",
    invoke_without_command=True,
    cls=Group,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def summary(report: SimulationReport) -> str:
    """One paragraph: what the simulation did and which days it covers."""
    days = (
        f"{report.first_day:%Y-%m-%d} .. {report.last_day:%Y-%m-%d}"
        if report.first_day is not None and report.last_day is not None
        else "-"
    )
    journeys = ", ".join(f"{name} {n}" for name, n in sorted(report.per_journey.items()))
    return (
        f"Simulated {report.customers} customers over {report.weeks} weeks (seed {report.seed}) in "
        f"{report.seconds:.0f} s: {report.journeys} journeys ({journeys}), {report.messages} messages, "
        f"{report.opens} opens, {report.clicks} clicks, {report.purchases} purchases "
        f"({report.revenue:,.2f}); dated {days}."
    )


@app.callback()
def simulate_command(
    ctx: typer.Context,
    customers: Annotated[int, typer.Option(min=1, max=100_000, help="Simulated customers")] = 300,
    weeks: Annotated[int, typer.Option(min=1, max=52, help="Simulated weeks of journeys")] = 4,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same population and habits)")] = 7,
) -> None:
    """Run the population through abandoned_cart (weekly) and winback (the dormant) into the database."""
    if ctx.invoked_subcommand is not None:
        return
    if time_skipping_server() is None:
        raise typer.BadParameter("no temporal-test-server beside this Python (pip install temporalio's test server)")
    settings = get_settings()
    # The worker's per-message log lines would drown the summary: warnings only.
    configure_logging("WARNING", settings.log_format)
    console = Console()
    report = asyncio.run(
        simulate_history(settings, customers, weeks, seed, say=lambda line: console.print(line, highlight=False))
    )
    console.print(summary(report), highlight=False)


@command(app, "status")
def status_command() -> None:
    """What simulated history the configured database holds: runs, messages, the days they cover."""

    async def work(db: Database) -> HistoryStatus:
        return await simulated_history(db)

    found: HistoryStatus = run_with_database(work)
    if not found.runs:
        typer.echo("No simulated history in this database (run `cascade simulate`).")
        return
    typer.echo(
        f"{found.customers} simulated customers, {found.runs} journey runs, {found.messages} messages, "
        f"from {found.first:%Y-%m-%d} to {found.last:%Y-%m-%d}."
    )

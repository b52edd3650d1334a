"""`cascade <group> <verb>`: the one command-line tool (console script `cascade`).

Each group lives in its own module of this package and exposes `app`; registering a new
group is one `add_typer` line below (keep them alphabetical).
"""

from __future__ import annotations

from cascade.cli import (
    broadcasts,
    channels,
    customers,
    events,
    experiments,
    forecast,
    journeys,
    keys,
    reports,
    routing,
    schedules,
    segments,
    simulate,
)
from cascade.cli.common import group, run_and_exit

app = group("Cascade: omnichannel customer journeys on Temporal.")
app.add_typer(broadcasts.app, name="broadcasts")
app.add_typer(channels.app, name="channels")
app.add_typer(customers.app, name="customers")
app.add_typer(events.app, name="events")
app.add_typer(experiments.app, name="experiments")
app.add_typer(forecast.app, name="forecast")
app.add_typer(journeys.app, name="journeys")
app.add_typer(keys.app, name="keys")
app.add_typer(reports.app, name="report")
app.add_typer(routing.app, name="routing")
app.add_typer(schedules.app, name="schedules")
app.add_typer(segments.app, name="segments")
app.add_typer(simulate.app, name="simulate")


def main() -> None:
    """The `cascade` console script: the app, ended without interpreter teardown (see run_and_exit)."""
    run_and_exit(app, prog_name="cascade")

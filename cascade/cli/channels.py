"""`cascade channels status`: each channel's adapter and its last configuration error."""

from __future__ import annotations

import typer
from rich.table import Table

from cascade.cli.common import command, console, escape, group
from cascade.infra.db import run_with_database
from cascade.infra.settings import Settings, get_settings
from channels.health import ChannelStatus, channel_report
from models.journey import ChannelName

app = group("Channel adapters and their health.")


def channel_health(settings: Settings) -> list[ChannelStatus]:
    """Each channel's configured adapter and its last configuration error."""
    adapters = {name.value: str(getattr(settings, f"channel_{name.value}")) for name in ChannelName}
    return run_with_database(lambda db: channel_report(db, adapters), settings)


@command(app)
def status() -> None:
    """Each channel's adapter and health: a refused token, account or sender shows here.

    Exits 1 while any channel has a configuration error no send has got past since.
    """
    report = channel_health(get_settings())
    table = Table(title="channels")
    for column in ("channel", "adapter", "status", "last configuration error", "when", "recovered"):
        table.add_column(column)
    for row in report:
        colour = {"ok": "green", "recovered": "yellow"}.get(row.status, "red")
        table.add_row(
            row.channel,
            row.adapter,
            f"[{colour}]{row.status}[/{colour}]",
            escape(row.last_error or ""),
            row.last_error_at.isoformat(timespec="seconds") if row.last_error_at else "",
            row.recovered_at.isoformat(timespec="seconds") if row.recovered_at else "",
        )
    console.print(table)
    if any(row.status == "configuration error" for row in report):
        raise typer.Exit(1)

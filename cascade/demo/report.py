"""The demo's closing table: what happened per customer and what the cascade saved."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence

from rich.table import Table

from cascade.demo.supervisor import say
from cascade.infra.settings import Settings
from models.journey import JourneyResult, StepStatus
from models.profiles import CustomerProfile
from models.tables import ContactStatus

REASON_WIDTH = 40


def step_cell(status: StepStatus, reason: str | None, reaction: str | None) -> str:
    """One step of one customer: sent (and the reaction), or why not, shortened on a word boundary."""
    if status == StepStatus.SENT:
        return f"[green]sent[/green] -> [bold]{reaction}[/bold]" if reaction else "sent"
    if status == StepStatus.PENDING:
        return "[dim]-[/dim]"
    colour = "yellow" if status == StepStatus.SKIPPED else "red"
    why = textwrap.shorten(reason or "", REASON_WIDTH, placeholder=" ...").replace("[", "\\[")
    return f"[{colour}]{status.value}[/{colour}]: {why}"


def usable_channels(profile: CustomerProfile) -> set[str]:
    """The channels a send-everywhere campaign would pay for: valid contacts with consent."""
    return {
        c.channel.value for c in profile.contacts if c.status in (None, ContactStatus.VALID) and c.consent is not False
    }


def report(results: Mapping[str, JourneyResult], customers: Sequence[CustomerProfile], settings: Settings) -> Table:
    """The table per customer, and the line comparing the cascade's cost with sending everywhere."""
    first = next(iter(results.values()))
    table = Table(title="What happened per customer (demo journey)")
    table.add_column("customer")
    for step in first.steps:
        table.add_column(f"{step.index + 1}. {step.channel.value}")
    for column in ("outcome", "cost", "every channel"):
        table.add_column(column)
    total = everywhere = 0.0
    for profile in customers:
        result = results[profile.id]
        cost = sum(settings.channel_costs[s.channel] for s in result.steps if s.status == StepStatus.SENT)
        all_cost = sum(settings.channel_costs[c] for c in usable_channels(profile))
        total, everywhere = total + cost, everywhere + all_cost
        table.add_row(
            f"{profile.id} {profile.name}",
            *(step_cell(s.status, s.reason, s.reaction.value if s.reaction else None) for s in result.steps),
            result.outcome.value if result.outcome else "?",
            f"{cost:.3f}",
            f"{all_cost:.3f}",
        )
    say(table)
    saved = (1 - total / everywhere) * 100 if everywhere else 0.0
    say(
        f"Cascade cost {total:.3f} {settings.currency} vs {everywhere:.3f} for sending on every "
        f"usable channel: [bold]{saved:.0f}% saved[/bold]."
    )
    return table

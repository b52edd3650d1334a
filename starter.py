"""Start and steer journeys: `start_journey(...)` for application code, and a CLI over it.

python starter.py start c-42 welcome
python starter.py status journey/welcome/c-42
python starter.py list --customer c-42
python starter.py cancel journey/welcome/c-42 --reason "asked by support"
python starter.py validate                     # every file in journeys/
python starter.py show abandoned_cart          # steps, channels, waits, cost per customer
python starter.py event c-42 cart_abandoned --prop cart_id=9 --prop cart_value=120
python starter.py schedules apply|list|delete  # birthday and win-back scans
python starter.py channels                     # adapters, and any refused token or account
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from temporalio.service import RPCError, RPCStatusCode

from cascade.content.templates import BASE_FIELDS as BASE_TEMPLATE_FIELDS
from cascade.content.templates import check_journey
from cascade.events.outbox import EngineUnavailable
from cascade.infra.db import Database, run_with_database
from cascade.infra.settings import Settings, get_settings
from cascade.infra.temporal import connect, quote
from cascade.journeys.files import (
    JourneyDefinitionError,
    estimate_cost,
    journey_files,
    load_journey,
)
from cascade.journeys.service import (
    TemplateFieldError,
    UnknownCustomerError,
    journey_state,
    journey_status,
    journey_workflow_id,
    start_journey,
)
from channels.health import ChannelStatus, channel_report
from models import search_attributes as sa
from models.events import CancelInput
from models.ids import check_customer_id
from models.journey import ChannelName, JourneyState
from models.loyalty import LoyaltyState
from workflows.cascade import CascadeJourney

# Application code keeps `from starter import start_journey` (the design card's API).
__all__ = ["TemplateFieldError", "UnknownCustomerError", "journey_state", "journey_workflow_id", "start_journey"]


# ---------------------------------------------------------------- CLI
cli = typer.Typer(help="Start, inspect and cancel Cascade journeys.", no_args_is_help=True)
console = Console()


def _fail(message: str) -> None:
    console.print(f"[red]error:[/red] {message}")
    raise typer.Exit(2)


def _parse_context(items: list[str]) -> dict[str, Any]:
    context: dict[str, Any] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            _fail(f"--context {item!r}: expected name=value")
        try:
            context[name] = json.loads(value)
        except json.JSONDecodeError:
            context[name] = value
    return context


@cli.command()
def start(
    customer_id: str,
    journey: Annotated[str, typer.Argument(help="Name in journeys/ or a path to a YAML file")],
    key: Annotated[str | None, typer.Option(help="Run key when a journey may run twice")] = None,
    context: Annotated[list[str] | None, typer.Option(help="Template field, name=value")] = None,
) -> None:
    """Start a journey for a customer (a no-op if it is already running)."""

    async def go() -> None:
        handle = await start_journey(customer_id, journey, key=key, context=_parse_context(context or []))
        console.print(f"started [bold]{handle.id}[/bold] run {handle.result_run_id}")

    try:
        asyncio.run(go())
    except (JourneyDefinitionError, UnknownCustomerError, ValueError) as exc:
        _fail(str(exc))


@cli.command()
def status(workflow_id: str) -> None:
    """Show where a journey stands, step by step (a loyalty loop: its round, points and round)."""

    async def go() -> list[tuple[str, JourneyState | LoyaltyState]]:
        return await journey_status(await connect(get_settings()), workflow_id)

    try:
        found = asyncio.run(go())
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            _fail(f"no journey with id {workflow_id!r}")
        raise
    for wid, state in found:
        if isinstance(state, LoyaltyState):
            console.print(
                f"[bold]{_escape(wid)}[/bold]: loyalty loop, round {state.round}, {state.status}; "
                f"{state.points_accrued} points accrued, {state.purchases} purchase(s) this round"
                + (f"; {_escape(state.outcome_reason)}" if state.outcome_reason else "")
            )
            continue
        table = Table(title=f"{_escape(wid)}: {state.outcome or state.status}")
        for column in ("step", "channel", "status", "reaction", "message id", "reason"):
            table.add_column(column)
        for step in state.steps:
            table.add_row(
                str(step.index),
                step.channel.value,
                step.status.value,
                step.reaction.value if step.reaction else "",
                step.message_id or "",
                step.reason or "",
            )
        console.print(table)


@cli.command("list")
def list_journeys(
    customer: Annotated[str | None, typer.Option(help="Only this customer's journeys")] = None,
    journey: Annotated[str | None, typer.Option(help="Only this journey")] = None,
    status_: Annotated[str | None, typer.Option("--status", help="running, waiting, reacted, ...")] = None,
    limit: int = 50,
) -> None:
    """List journeys through Temporal's search attributes."""
    clauses = []
    if customer:
        clauses.append(f"{sa.CUSTOMER_ID.name} = {quote(customer)}")
    if journey:
        clauses.append(f"{sa.JOURNEY.name} = {quote(journey)}")
    if status_:
        clauses.append(f"{sa.JOURNEY_STATUS.name} = {quote(status_)}")
    query = " AND ".join(clauses) or None

    async def go() -> list[list[str]]:
        client = await connect(get_settings())
        rows = []
        async for wf in client.list_workflows(query, limit=limit):
            attrs = wf.typed_search_attributes
            rows.append(
                [
                    wf.id,
                    attrs.get(sa.CUSTOMER_ID) or "",
                    attrs.get(sa.JOURNEY_STATUS) or "",
                    attrs.get(sa.CHANNEL) or "",
                    str(attrs.get(sa.STEP) if attrs.get(sa.STEP) is not None else ""),
                    wf.start_time.isoformat(timespec="seconds"),
                ]
            )
        return rows

    table = Table(title=query or "all journeys")
    for column in ("workflow id", "customer", "status", "channel", "step", "started"):
        table.add_column(column)
    for row in asyncio.run(go()):
        table.add_row(*row)
    console.print(table)


@cli.command()
def cancel(
    workflow_id: str,
    reason: Annotated[str, typer.Option(help="Recorded as the outcome reason")] = "cancelled by operator",
) -> None:
    """Cancel a running journey gracefully (it ends as `cancelled`)."""

    async def go() -> None:
        client = await connect(get_settings())
        await client.get_workflow_handle(workflow_id).signal(CascadeJourney.cancel, CancelInput(reason=reason))

    try:
        asyncio.run(go())
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            _fail(f"no running journey with id {workflow_id!r}")
        raise
    console.print(f"cancel sent to {workflow_id}")


def _parse_props(items: list[str]) -> dict[str, Any]:
    return _parse_context(items)


@cli.command()
def validate(
    paths: Annotated[
        list[str] | None, typer.Argument(help="Journey names or files (default: all in journeys/)")
    ] = None,
) -> None:
    """Validate journey files; each error names the file, the field and the line."""
    targets: list[str | Path] = list(paths or journey_files())
    bad = 0
    for target in targets:
        try:
            spec = load_journey(target)
        except JourneyDefinitionError as exc:
            bad += 1
            console.print(f"[red]invalid[/red] {_escape(str(exc))}")
            continue
        console.print(f"[green]ok[/green] {target}: {spec.name} v{spec.version} ({len(spec.steps)} steps)")
        # Fields not on every profile must come from the triggering event, the context
        # or custom attributes; start_journey refuses a start where they are missing.
        others, notes = check_journey(spec, BASE_TEMPLATE_FIELDS)
        for line in notes:
            console.print(f"   {_escape(line)}")
        for line in others:
            console.print(f"   [yellow]needs from the event/context/custom attributes:[/yellow] {_escape(line)}")
    if bad:
        raise typer.Exit(1)


def _escape(text: str) -> str:
    return text.replace("[", "\\[")


@cli.command()
def show(journey: Annotated[str, typer.Argument(help="Name in journeys/ or a path to a YAML file")]) -> None:
    """Pretty-print a journey: trigger, entry, rules, steps, waits and cost per customer."""
    try:
        spec = load_journey(journey)
    except JourneyDefinitionError as exc:
        _fail(_escape(str(exc)))
        return
    settings = get_settings()
    expected, worst, shares = estimate_cost(spec, settings.channel_costs)
    console.print(f"[bold]{spec.name}[/bold] v{spec.version} ({spec.topic}) hash {spec.content_hash()}")
    if spec.description:
        console.print(spec.description)
    if spec.trigger:
        console.print(f"trigger: {', '.join(spec.trigger.events)}")
    for cond in spec.entry.conditions:
        console.print(f"entry: {cond.field} {cond.op} {cond.value if cond.value is not None else ''}")
    if spec.exit_on or spec.convert_on:
        console.print(f"exit on: {', '.join(spec.exit_on) or '-'}; converts on: {', '.join(spec.convert_on) or '-'}")
    if spec.valid_for or (spec.trigger and spec.trigger.deadline_property):
        deadline = spec.valid_for or f"event property {spec.trigger.deadline_property if spec.trigger else ''}"
        console.print(f"deadline: {deadline}")
    if spec.frequency_cap:
        console.print(f"frequency cap: {spec.frequency_cap.max} marketing messages per {spec.frequency_cap.per}")
    if spec.quiet_hours:
        q = spec.quiet_hours
        only = f" ({', '.join(q.channels)})" if q.channels else ""
        console.print(f"quiet hours: {q.start:%H:%M}-{q.end:%H:%M} customer's local time{only}")
    if spec.stay_active_days:
        console.print(f"stay where active: {spec.stay_active_days} days")
    if spec.loop:
        console.print(
            f"loop: +{spec.loop.points_per_purchase} points per purchase, ends after {spec.loop.idle_timeout} idle"
        )
    table = Table()
    for column in ("step", "delay", "channel", "awaits", "wait", "if", "reach", "cost"):
        table.add_column(column)
    for i, (step, share) in enumerate(zip(spec.steps, shares, strict=True)):
        table.add_row(
            str(i),
            str(step.delay or ""),
            step.channel.value,
            step.await_reaction.value,
            str(step.wait),
            "; ".join(f"{c.field} {c.op} {c.value}" for c in step.when),
            f"{share:.0%}",
            f"{settings.channel_costs.get(step.channel.value, 0.0):.4f}",
        )
    console.print(table)
    console.print(
        f"estimated cost per customer: {expected:.4f} {settings.currency} "
        f"(worst case, nobody reacts: {worst:.4f}); assumed reaction rates in cascade/journeys/files.py"
    )


@cli.command()
def event(
    customer_id: str,
    event_type: str,
    prop: Annotated[list[str] | None, typer.Option("--prop", help="Event property, name=value")] = None,
) -> None:
    """Route an event: start matching journeys, convert or end running ones."""
    from cascade.journeys.triggers import route_event

    async def go() -> None:
        check_customer_id(customer_id)
        settings = get_settings()
        db = Database.from_settings(settings)
        try:
            result = await route_event(
                await connect(settings), db, customer_id, event_type, _parse_props(prop or []), settings=settings
            )
        finally:
            await db.dispose()
        for wid in result.started:
            console.print(f"started {wid}")
        for wid in result.converted:
            console.print(f"converted {wid}")
        for wid in result.exited:
            console.print(f"ended {wid}")
        for name, why in result.not_entered.items():
            console.print(f"not entered {name}: {why}")
        if not (result.started or result.converted or result.exited or result.not_entered):
            console.print("no journey matches this event")

    try:
        asyncio.run(go())
    except (JourneyDefinitionError, UnknownCustomerError, ValueError, EngineUnavailable) as exc:
        _fail(_escape(str(exc)))


@cli.command()
def schedules(
    action: Annotated[str, typer.Argument(help="apply, list or delete")],
) -> None:
    """Manage the Temporal Schedules of the time-based journeys (no cron outside Temporal)."""
    from cascade.journeys.schedules import apply_schedules, delete_schedules, list_schedules

    async def go() -> None:
        settings = get_settings()
        client = await connect(settings)
        if action == "apply":
            for line in await apply_schedules(client, settings):
                console.print(line)
        elif action == "list":
            for line in await list_schedules(client):
                console.print(line)
        elif action == "delete":
            for line in await delete_schedules(client):
                console.print(line)
        else:
            _fail(f"unknown action {action!r}: apply, list or delete")

    asyncio.run(go())


@cli.command("channels")
def channels_status() -> None:
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
            _escape(row.last_error or ""),
            row.last_error_at.isoformat(timespec="seconds") if row.last_error_at else "",
            row.recovered_at.isoformat(timespec="seconds") if row.recovered_at else "",
        )
    console.print(table)
    if any(row.status == "configuration error" for row in report):
        raise typer.Exit(1)


def channel_health(settings: Settings) -> list[ChannelStatus]:
    """The `channels` report: each channel's configured adapter and its last configuration error."""
    adapters = {name.value: str(getattr(settings, f"channel_{name.value}")) for name in ChannelName}
    return run_with_database(lambda db: channel_report(db, adapters), settings)


if __name__ == "__main__":
    cli()

"""`cascade journeys ...`: start, inspect, list, cancel, validate and show journeys."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from temporalio.service import RPCError, RPCStatusCode

from cascade.cli.common import command, console, escape, fail, group, parse_pairs
from cascade.content.templates import BASE_FIELDS as BASE_TEMPLATE_FIELDS
from cascade.content.templates import check_journey
from cascade.infra.settings import get_settings
from cascade.infra.temporal import connect, quote
from cascade.journeys.files import JourneyDefinitionError, estimate_cost, journey_files, load_journey
from cascade.journeys.service import UnknownCustomerError, journey_status, start_journey
from models import search_attributes as sa
from models.events import CancelInput
from models.journey import JourneyState
from models.loyalty import LoyaltyState

app = group("Start, inspect, list and cancel journeys; validate and show journey files.")

# The workflow's signal, by name: the CLI steers journeys without importing workflow code.
CANCEL_SIGNAL = "cancel"


@command(app)
def start(
    customer_id: Annotated[str, typer.Argument(help="Customer id, e.g. c-1001")],
    journey: Annotated[str, typer.Argument(help="Name in journeys/ or a path to a YAML file")],
    key: Annotated[str | None, typer.Option(help="Run key when a journey may run twice")] = None,
    context: Annotated[
        list[str] | None, typer.Option(help="Template field, name=value (repeatable), e.g. cart_value=120")
    ] = None,
) -> None:
    """Start a journey for a customer (a no-op if it is already running)."""
    values = parse_pairs(context or [], "--context")

    async def go() -> None:
        handle = await start_journey(customer_id, journey, key=key, context=values)
        console.print(f"started [bold]{handle.id}[/bold] run {handle.result_run_id}")

    try:
        asyncio.run(go())
    except (JourneyDefinitionError, UnknownCustomerError, ValueError) as exc:
        fail(str(exc))


def _print_state(wid: str, state: JourneyState | LoyaltyState) -> None:
    if isinstance(state, LoyaltyState):
        console.print(
            f"[bold]{escape(wid)}[/bold]: loyalty loop, round {state.round}, {state.status}; "
            f"{state.points_accrued} points accrued, {state.purchases} purchase(s) this round"
            + (f"; {escape(state.outcome_reason)}" if state.outcome_reason else "")
        )
        return
    table = Table(title=f"{escape(wid)}: {state.outcome or state.status}")
    for column in ("step", "channel", "status", "reaction", "message id", "reason"):
        table.add_column(column)
    for step in state.steps:
        table.add_row(
            str(step.index),
            step.channel.value,
            step.status.value,
            step.reaction.value if step.reaction else "",
            step.message_id or "",
            escape(step.reason or ""),
        )
    console.print(table)
    # Why it ended (a cancel's reason, the exit event, the deadline) belongs to no step.
    if state.outcome_reason:
        console.print(f"reason: {escape(state.outcome_reason)}")


@command(app)
def status(workflow_id: Annotated[str, typer.Argument(help="e.g. journey/welcome/c-1001")]) -> None:
    """Show where a journey stands step by step, and why it ended (a loyalty loop: its round and points)."""

    async def go() -> list[tuple[str, JourneyState | LoyaltyState]]:
        return await journey_status(await connect(get_settings()), workflow_id)

    try:
        found = asyncio.run(go())
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            fail(f"no journey with id {workflow_id!r}")
        raise
    for wid, state in found:
        _print_state(wid, state)


@command(app, "list")
def list_journeys(
    customer: Annotated[str | None, typer.Option(help="Only this customer's journeys")] = None,
    journey: Annotated[str | None, typer.Option(help="Only this journey")] = None,
    status_: Annotated[str | None, typer.Option("--status", help="running, waiting, reacted, ...")] = None,
    limit: Annotated[int, typer.Option(help="At most this many rows")] = 50,
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
            step = attrs.get(sa.STEP)
            rows.append(
                [
                    wf.id,
                    attrs.get(sa.CUSTOMER_ID) or "",
                    attrs.get(sa.JOURNEY_STATUS) or "",
                    attrs.get(sa.CHANNEL) or "",
                    str(step) if step is not None else "",
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


@command(app)
def cancel(
    workflow_id: Annotated[str, typer.Argument(help="e.g. journey/welcome/c-1001")],
    reason: Annotated[str, typer.Option(help="Recorded as the outcome reason")] = "cancelled by operator",
) -> None:
    """Cancel a running journey gracefully (it ends as `cancelled`, with the reason)."""

    async def go() -> None:
        client = await connect(get_settings())
        await client.get_workflow_handle(workflow_id).signal(CANCEL_SIGNAL, CancelInput(reason=reason))

    try:
        asyncio.run(go())
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            fail(f"no running journey with id {workflow_id!r}")
        raise
    console.print(f"cancel sent to {workflow_id}")


@command(app)
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
            console.print(f"[red]invalid[/red] {escape(str(exc))}")
            continue
        console.print(f"[green]ok[/green] {target}: {spec.name} v{spec.version} ({len(spec.steps)} steps)")
        # Fields not on every profile must come from the triggering event, the context
        # or custom attributes; start_journey refuses a start where they are missing.
        others, notes = check_journey(spec, BASE_TEMPLATE_FIELDS)
        for line in notes:
            console.print(f"   {escape(line)}")
        for line in others:
            console.print(f"   [yellow]needs from the event/context/custom attributes:[/yellow] {escape(line)}")
    if bad:
        raise typer.Exit(1)


@command(app)
def show(journey: Annotated[str, typer.Argument(help="Name in journeys/ or a path to a YAML file")]) -> None:
    """Pretty-print a journey: trigger, entry, rules, steps, waits and cost per customer."""
    try:
        spec = load_journey(journey)
    except JourneyDefinitionError as exc:
        fail(str(exc))
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

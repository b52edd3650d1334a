"""`cascade broadcasts`: start a campaign to a segment, watch it, pause, resume, cancel, list."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from datetime import datetime, time
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from cascade.audiences.broadcasts import (
    BroadcastNotRunning,
    broadcast_progress,
    list_broadcasts,
    signal_broadcast,
    start_broadcast,
)
from cascade.audiences.definition import SegmentDefinitionError
from cascade.audiences.service import load_segments
from cascade.cli.common import command, group
from cascade.infra.db import run_with_database
from cascade.infra.settings import Settings
from cascade.infra.temporal import connect
from cascade.journeys.files import JourneyDefinitionError, load_journey
from models.broadcasts import BroadcastProgress

T = TypeVar("T")

app = group("Broadcasts: one cascade per member of a segment (a campaign), with pause, resume and cancel.")
_console = Console()


def _fail(message: str) -> typer.Exit:
    typer.echo(message, err=True)
    return typer.Exit(1)


def _run(work: Coroutine[Any, Any, T]) -> T:
    try:
        return asyncio.run(work)
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            raise _fail("no such broadcast") from None
        raise _fail(f"Temporal: {exc.message}") from None
    except BroadcastNotRunning as exc:
        raise _fail(str(exc)) from None


def _print(progress: BroadcastProgress) -> None:
    skipped = ", ".join(f"{reason} {n}" for reason, n in sorted(progress.skipped.items())) or "0"
    typer.echo(f"broadcast {progress.broadcast_id}: {progress.status}")
    typer.echo(f"segment {progress.segment}, journey {progress.journey}")
    typer.echo(f"audience {progress.audience if progress.audience is not None else '(not frozen yet)'}")
    typer.echo(f"started {progress.started}, skipped {skipped}, failed {progress.failed}")
    if progress.cancelled_journeys:
        typer.echo(f"journeys cancelled before their first send: {progress.cancelled_journeys}")


@command(app)
def start(
    broadcast_id: Annotated[str, typer.Argument(help="A new id for this campaign (a-z, 0-9, _ and -)")],
    segment: Annotated[str, typer.Option(help="Segment name (segments/*.yaml or built-in)")],
    journey: Annotated[str, typer.Option(help="Journey name in journeys/ or a path to a YAML file")],
    at: Annotated[
        str | None, typer.Option(help="Start at this moment (ISO 8601 with a time zone), default now")
    ] = None,
    local_time: Annotated[
        str | None, typer.Option(help="Start each recipient's cascade at this local time, e.g. 10:00")
    ] = None,
    rate: Annotated[float, typer.Option(min=0.001, help="Cascades started per second at most")] = 100.0,
    page_size: Annotated[int, typer.Option(min=1, max=5000, help="Recipients per activity")] = 200,
) -> None:
    """Freeze the segment's members now and start one cascade of the journey for each."""
    settings = Settings()
    try:
        catalog = load_segments(settings)
        spec = load_journey(journey)
    except (SegmentDefinitionError, JourneyDefinitionError) as exc:
        raise _fail(str(exc)) from None
    if segment not in catalog.segments:
        raise _fail(f"unknown segment {segment!r} (known: {', '.join(catalog.names())})")
    try:
        send_at = datetime.fromisoformat(at) if at else None
    except ValueError:
        raise _fail(f"--at {at!r}: use ISO 8601 with a time zone, e.g. 2026-12-01T10:00:00+01:00") from None
    if send_at is not None and send_at.tzinfo is None:
        raise _fail("--at needs a time zone, e.g. 2026-12-01T10:00:00+01:00")
    try:
        local = time.fromisoformat(local_time) if local_time else None
    except ValueError:
        raise _fail(f"--local-time {local_time!r}: use HH:MM, e.g. 10:00") from None

    async def go() -> str:
        client = await connect(settings)
        handle = await start_broadcast(
            client,
            catalog,
            settings.task_queue,
            broadcast_id=broadcast_id,
            segment=segment,
            journey=spec,
            send_at=send_at,
            local_time=local,
            rate_per_second=rate,
            page_size=page_size,
        )
        return handle.id

    try:
        workflow_id = _run(go())
    except WorkflowAlreadyStartedError:
        raise _fail(f"broadcast {broadcast_id!r} exists already (ids are used once)") from None
    except ValueError as exc:
        raise _fail(str(exc)) from None
    typer.echo(f"started {workflow_id}: segment {segment}, journey {spec.name}")


@command(app)
def status(broadcast_id: str) -> None:
    """Audience, started, skipped with reasons, failed: where the broadcast stands."""

    async def go() -> BroadcastProgress:
        return await broadcast_progress(await connect(Settings()), broadcast_id)

    _print(_run(go()))


def _signal(broadcast_id: str, signal: str, reason: str) -> None:
    async def go() -> None:
        await signal_broadcast(await connect(Settings()), broadcast_id, signal, reason)

    _run(go())
    typer.echo(f"{signal} sent to broadcast {broadcast_id}")


@command(app)
def pause(broadcast_id: str, reason: Annotated[str, typer.Option(help="For the record")] = "operator") -> None:
    """Start nobody else until resumed (journeys already started go on)."""
    _signal(broadcast_id, "pause", reason)


@command(app)
def resume(broadcast_id: str, reason: Annotated[str, typer.Option(help="For the record")] = "operator") -> None:
    """Go on from where the broadcast paused."""
    _signal(broadcast_id, "resume", reason)


@command(app)
def cancel(broadcast_id: str, reason: Annotated[str, typer.Option(help="For the record")] = "operator") -> None:
    """Start nobody else and stop the recipients' journeys that have not sent yet."""
    _signal(broadcast_id, "cancel", reason)


@command(app, "list")
def list_command() -> None:
    """Every broadcast: id, segment, journey, audience, recipients handled, created."""
    rows = run_with_database(list_broadcasts, Settings())
    table = Table("broadcast", "segment", "journey", "audience", "handled", "created")
    for row in rows:
        audience = "" if row.audience is None else str(row.audience)
        table.add_row(
            row.id, row.segment, row.journey, audience, str(row.handled or 0), f"{row.created_at:%Y-%m-%d %H:%M}"
        )
    _console.print(table)


if __name__ == "__main__":
    app()

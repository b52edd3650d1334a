"""`cascade segments`: list, show, count, sample and validate segments (segments/*.yaml and the funnel)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
import yaml
from rich.console import Console
from rich.table import Table
from sqlalchemy import select
from temporalio.service import RPCError

from cascade.audiences.compiler import CUSTOMERS, member_query
from cascade.audiences.definition import LoadedSegment, SegmentCatalog, SegmentDefinitionError
from cascade.audiences.membership import apply_refresh_schedule, delete_refresh_schedule, show_refresh_schedule
from cascade.audiences.service import MemberCount, count_customers, count_segment, load_segments, member_page
from cascade.cli.common import command, group
from cascade.infra.db import Database, run_with_database
from cascade.infra.settings import Settings
from cascade.infra.temporal import connect
from models.journey import parse_duration

T = TypeVar("T")

app = group(
    "Segments: who is in them now. Files live in segments/*.yaml (CASCADE_SEGMENTS_DIR);"
    " new, active, loyal, dormant and churned are built in."
)
_console = Console()
DirOption = Annotated[
    Path | None, typer.Option("--dir", help="Folder of segment files (default: CASCADE_SEGMENTS_DIR or segments/)")
]
ExactOption = Annotated[
    bool,
    typer.Option(
        "--exact",
        help="Count the members now (exact): the last refresh's memberships corrected for the customers"
        " changed since, or the segment's query when that cannot be done",
    ),
]


def _freshness(counted: MemberCount) -> str:
    """How a count was taken, for a person reading it."""
    if counted.method == "corrected":
        return f"counted now: the last refresh's memberships corrected for {counted.touched} changed customers"
    if counted.exact:
        return "counted now"
    return f"as of the refresh at {counted.as_of:%Y-%m-%d %H:%M:%S} UTC; --exact to count now"


def _fail(message: str) -> typer.Exit:
    typer.echo(message, err=True)
    return typer.Exit(1)


def _catalog(settings: Settings, directory: Path | None) -> SegmentCatalog:
    try:
        return load_segments(settings, directory)
    except SegmentDefinitionError as exc:
        raise _fail(str(exc)) from None


def _segment(catalog: SegmentCatalog, name: str) -> LoadedSegment:
    try:
        return catalog.get(name)
    except KeyError as exc:
        raise _fail(str(exc.args[0])) from None


def _run(settings: Settings, work: Callable[[Database], Awaitable[T]]) -> T:
    return run_with_database(work, settings)


@command(app, "list")
def list_segments(
    directory: DirOption = None,
    counts: Annotated[bool, typer.Option("--counts", help="Count each segment's members (one query each)")] = False,
    exact: ExactOption = False,
) -> None:
    """Every segment: name, where it is defined, description (and member counts with --counts)."""
    settings = Settings()
    catalog = _catalog(settings, directory)
    found: dict[str, MemberCount] = {}
    if counts:

        async def count_all(db: Database) -> dict[str, MemberCount]:
            return {
                name: await count_segment(db, catalog, name, exact=exact, settings=settings) for name in catalog.names()
            }

        found = _run(settings, count_all)
    columns = ["members", "counted"] if counts else []
    table = Table("segment", "source", "description", *columns)
    for name in catalog.names():
        loaded = catalog.segments[name]
        cells = [str(found[name].members), _freshness(found[name])] if counts else []
        table.add_row(name, loaded.source, loaded.spec.description, *cells)
    _console.print(table)


@command(app)
def show(
    name: str,
    directory: DirOption = None,
    sql: Annotated[bool, typer.Option("--sql", help="Print the compiled SQL for the configured database")] = False,
    exact: ExactOption = False,
) -> None:
    """A segment's rules, its member count out of all live customers, and (--sql) its query."""
    settings = Settings()
    catalog = _catalog(settings, directory)
    loaded = _segment(catalog, name)

    async def counts(db: Database) -> tuple[MemberCount, int, str]:
        query = member_query(catalog, name, dialect=db.engine.dialect.name, now=datetime.now(UTC))
        text = str(query.compile(db.engine, compile_kwargs={"literal_binds": True}))
        counted = await count_segment(db, catalog, name, exact=exact, settings=settings)
        return counted, await count_customers(db), text

    members, customers, text = _run(settings, counts)
    rules = [r.model_dump(mode="json", by_alias=True, exclude_defaults=True) for r in loaded.spec.where]
    typer.echo(f"{name}: {loaded.spec.description}")
    typer.echo(f"source: {loaded.source}")
    typer.echo(f"members: {members.members} of {customers} customers ({_freshness(members)})")
    typer.echo(yaml.safe_dump({"where": rules}, sort_keys=False, allow_unicode=True).rstrip())
    if sql:
        typer.echo(text)


@command(app)
def count(name: str, directory: DirOption = None, exact: ExactOption = False) -> None:
    """Print the number of members of a segment.

    Read from the memberships the last refresh of everyone recorded (the `SegmentRefresh`
    Schedule; an index range), when it ran under the segment's current definition: stderr
    says as of when. Otherwise, or with --exact, counted now: those memberships corrected
    for the customers changed since the refresh (cascade/audiences/corrected.py), or by the
    segment's query when that cannot be done (stderr says which).
    """
    settings = Settings()
    catalog = _catalog(settings, directory)
    _segment(catalog, name)
    counted = _run(settings, lambda db: count_segment(db, catalog, name, exact=exact, settings=settings))
    typer.echo(str(counted.members))
    if not counted.exact or counted.method == "corrected":
        typer.echo(_freshness(counted), err=True)


@command(app)
def sample(
    name: str,
    directory: DirOption = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="How many members to show")] = 10,
) -> None:
    """The first members of a segment (by id): id, name, city, purchases, last purchase."""
    settings = Settings()
    catalog = _catalog(settings, directory)
    _segment(catalog, name)

    async def rows(db: Database) -> list[Any]:
        ids = await member_page(db, catalog, name, limit=limit)
        columns = (CUSTOMERS.c.id, CUSTOMERS.c.name, CUSTOMERS.c.city, CUSTOMERS.c.purchase_count)
        query = select(*columns, CUSTOMERS.c.last_purchase_at).where(CUSTOMERS.c.id.in_(ids))
        async with db.engine.connect() as conn:
            return list(await conn.execute(query.order_by(CUSTOMERS.c.id)))

    table = Table("id", "name", "city", "purchases", "last purchase")
    for row in _run(settings, rows):
        last = f"{row.last_purchase_at:%Y-%m-%d}" if row.last_purchase_at else ""
        table.add_row(row.id, row.name or "", row.city or "", str(row.purchase_count), last)
    _console.print(table)


def _interval(value: str) -> timedelta:
    parsed = parse_duration(value)
    if not isinstance(parsed, timedelta):
        raise _fail(f"--every: {value!r} is not a duration (write it like 15m, 1h or 1d)")
    if not timedelta(minutes=1) <= parsed <= timedelta(days=7):
        raise _fail(f"--every: {value} is out of range (from 1m to 7d)")
    return parsed


@command(app)
def schedule(
    every: Annotated[
        str | None,
        typer.Option("--every", help="How often to refresh: 15m, 1h, 1d (default: CASCADE_SEGMENT_REFRESH_MINUTES)"),
    ] = None,
    show: Annotated[bool, typer.Option("--show", help="Show the schedule: interval, next and recent runs")] = False,
    delete: Annotated[bool, typer.Option("--delete", help="Delete the schedule")] = False,
) -> None:
    """Create or update the Temporal Schedule that runs SegmentRefresh (time-only transitions: dormant, churned).

    With no option it applies the configured interval; `--every 1h` sets another one.
    The refreshes run on the worker of CASCADE_TASK_QUEUE.
    """
    if sum((every is not None, show, delete)) > 1:
        raise _fail("use one of --every, --show and --delete at a time")
    interval = _interval(every) if every is not None else None
    settings = Settings()

    async def act() -> list[str]:
        client = await connect(settings)
        if show:
            return await show_refresh_schedule(client)
        if delete:
            return [await delete_refresh_schedule(client)]
        return [await apply_refresh_schedule(client, settings, interval)]

    try:
        lines = asyncio.run(act())
    except LookupError as exc:
        raise _fail(str(exc.args[0])) from None
    except RPCError as exc:
        raise _fail(f"Temporal at {settings.temporal_address}: {exc.message}") from None
    except RuntimeError as exc:
        # Client.connect reports an unreachable server as a RuntimeError.
        raise _fail(f"Temporal at {settings.temporal_address}: {exc}") from None
    for line in lines:
        typer.echo(line)


@command(app)
def validate(directory: DirOption = None) -> None:
    """Check every segment file (schema, fields, references); errors name file, field and line."""
    catalog = _catalog(Settings(), directory)
    files = [n for n in catalog.names() if catalog.segments[n].source != "built-in"]
    typer.echo(f"ok: {len(files)} segment files and {len(catalog.names()) - len(files)} built-in segments are valid")


if __name__ == "__main__":
    app()

"""`cascade customers ...`: import, show, export and erase customer profiles."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from temporalio.service import RPCError

from cascade.cli.common import command, errors, fail, group
from cascade.infra.codec import CodecError
from cascade.infra.db import run_with_database
from cascade.infra.settings import Settings, get_settings
from cascade.infra.temporal import connect, erase_customer_histories
from cascade.profiles.importer import ImportAborted, ImportReport, import_profiles
from cascade.profiles.privacy import AlreadyErased, UnknownCustomer, erase_customer, export_profile
from cascade.profiles.service import ProfileError

app = group("Import, show, export and erase customer profiles.")


def _count_lines(path: Path) -> int:
    with path.open("rb") as handle:
        return max(sum(1 for _ in handle) - (path.suffix.lower() == ".csv"), 0)


def _print_rejected(report: ImportReport, limit: int = 50) -> None:
    table = Table("line", "why it was rejected", title=f"{len(report.rejected)} rejected row(s)")
    for row in report.rejected[:limit]:
        table.add_row(str(row.line), row.reason)
    errors.print(table)
    if len(report.rejected) > limit:
        errors.print(f"... and {len(report.rejected) - limit} more (use --rejected FILE for all)")


def _import(path: Path, skip_invalid: bool) -> ImportReport:
    # Transient: the bar is for watching a long import; what stays on screen is the summary,
    # not a bar frozen at 0/N when the rows were checked and refused before any was written.
    with Progress(
        TextColumn("importing"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=errors,
        transient=True,
    ) as bar:
        task = bar.add_task("rows", total=_count_lines(path))
        try:
            return run_with_database(
                lambda db: import_profiles(
                    db, path, skip_invalid=skip_invalid, progress=lambda n: bar.update(task, completed=n)
                )
            )
        except ImportAborted as exc:
            return exc.report
        except ValueError as exc:
            bar.stop()
            fail(str(exc), out=errors)


@command(app, "import")
def import_(
    path: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="A .csv or .jsonl file")],
    skip_invalid: Annotated[bool, typer.Option(help="Import the valid rows even if some are rejected")] = False,
    rejected: Annotated[Path | None, typer.Option(help="Write every rejected row (line, reason) as CSV")] = None,
) -> None:
    """Import customers from CSV or JSON Lines: all rows in one transaction, or none."""
    report = _import(path, skip_invalid)
    if rejected is not None and report.rejected:
        rejected.write_text("line,reason\n" + "".join(f'{r.line},"{r.reason}"\n' for r in report.rejected))
    if report.rejected:
        _print_rejected(report)
    if not report.written:
        errors.print("[red]nothing imported[/red]: fix the rows above, or pass --skip-invalid")
        raise typer.Exit(1)
    errors.print(
        f"[green]imported[/green] {report.created} new, {report.updated} updated, {report.merged} merged, "
        f"{len(report.rejected)} rejected of {report.rows} rows in {report.seconds:.1f}s ({report.rate:,.0f} rows/s)"
    )


def _export_or_exit(customer_id: str) -> dict[str, Any]:
    try:
        return run_with_database(lambda db: export_profile(db, customer_id))
    except UnknownCustomer as exc:
        fail(str(exc), out=errors)


@command(app)
def export(customer_id: Annotated[str, typer.Argument(help="Customer id, e.g. c-1001")]) -> None:
    """Print everything stored about a customer as JSON (GDPR access request)."""
    data = _export_or_exit(customer_id)
    json.dump(data, sys.stdout, indent=2, ensure_ascii=False)
    sys.stdout.write("\n")


@command(app)
def show(customer_id: Annotated[str, typer.Argument(help="Customer id, e.g. c-1001")]) -> None:
    """Show a profile as the journeys see it: typed fields, contact points with status, consents."""
    data = _export_or_exit(customer_id)
    out = Console()
    profile = {k: v for k, v in data["profile"].items() if v not in (None, [], {})}
    out.print_json(data=profile)
    points = Table("channel", "address", "status", "why", title="contact points")
    for cp in data["contact_points"]:
        points.add_row(cp["channel"], cp["address"], cp["status"], cp["status_reason"] or "")
    out.print(points)
    consents = Table("channel", "topic", "granted", "source", "when", title="consents")
    for c in data["consents"]:
        consents.add_row(c["channel"], c["topic"], str(c["granted"]), c["source"] or "", c["changed_at"])
    out.print(consents)
    out.print(f"{len(data['messages'])} message(s), {len(data['events'])} event(s), merged: {data['merged_profiles']}")


@command(app)
def erase(
    customer_id: Annotated[str, typer.Argument(help="Customer id, e.g. c-1001")],
    yes: Annotated[bool, typer.Option("--yes", help="Do it without asking")] = False,
    histories: Annotated[
        bool,
        typer.Option("--histories/--no-histories", help="Also delete the customer's workflow histories in Temporal"),
    ] = True,
) -> None:
    """Erase a customer's personal data (GDPR erasure); delivery and event aggregates are kept.

    The customer's journey histories in Temporal are deleted too (running journeys end);
    with --no-histories they go only when the namespace's retention drops them.
    """
    if not yes and not typer.confirm(f"Erase all personal data of {customer_id}?"):
        raise typer.Exit(1)
    try:
        report = run_with_database(lambda db: erase_customer(db, customer_id))
    except AlreadyErased as exc:
        # A second run is how an operator finishes an erasure whose history deletion failed,
        # so it is not an error: the database part is done, the histories are tried again.
        errors.print(f"[yellow]{exc}[/yellow]")
        if not histories:
            return
        erased_id = exc.customer_id
    except (UnknownCustomer, ProfileError) as exc:
        fail(str(exc), out=errors)
    else:
        removed = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in report.removed.items())
        kept = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in report.kept.items())
        errors.print(
            f"[green]erased[/green] {report.customer_id}: removed {removed}; kept as {report.pseudonym}: {kept}"
        )
        erased_id = report.customer_id
    if histories:
        settings = get_settings()
        try:
            deleted = asyncio.run(_erase_histories(settings, erased_id))
        except (RuntimeError, RPCError, CodecError) as exc:
            fail(
                f"the profile is erased but its Temporal histories are not: {exc}. Once that is fixed "
                f"(Temporal at {settings.temporal_address}), run "
                f"`cascade customers erase-histories {erased_id}`.",
                status=3,
                out=errors,
            )
        errors.print(f"[green]deleted[/green] {len(deleted)} workflow histories of {erased_id} in Temporal")


async def _erase_histories(settings: Settings, customer_id: str) -> list[str]:
    return await erase_customer_histories(await connect(settings), customer_id)


@command(app, "erase-histories")
def erase_histories(customer_id: Annotated[str, typer.Argument(help="Customer id, e.g. c-1001")]) -> None:
    """Delete a customer's workflow histories in Temporal (part of `erase`; for a retry)."""
    deleted = asyncio.run(_erase_histories(get_settings(), customer_id))
    errors.print(f"[green]deleted[/green] {len(deleted)} workflow histories of {customer_id} in Temporal")

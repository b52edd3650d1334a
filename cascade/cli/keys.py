"""`cascade keys create|list|revoke`: API keys of tenants for POST /v1/events."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from cascade.cli.common import command, console, errors, group
from cascade.infra.db import run_with_database
from webhooks.keys import create_key, list_keys, revoke_key

app = group("Manage the API keys for POST /v1/events (only a hash is stored; a key is shown once).")


@command(app)
def create(
    tenant: Annotated[str, typer.Option(help="Tenant (shop) the key belongs to")],
    name: Annotated[str, typer.Option(help="What the key is for")] = "default",
) -> None:
    """Create a key and print it once (on stdout; the note on stderr)."""
    key, row = run_with_database(lambda db: create_key(db, tenant, name))
    typer.echo(key)
    errors.print(f"(tenant {row.tenant}, prefix {row.prefix}: store the key now, it is not shown again)")


@command(app, "list")
def list_(tenant: Annotated[str | None, typer.Option(help="Only this tenant's keys")] = None) -> None:
    """List keys: tenant, name, prefix, created, revoked (never the keys)."""
    table = Table("tenant", "name", "prefix", "created", "revoked")
    for row in run_with_database(lambda db: list_keys(db, tenant)):
        table.add_row(row.tenant, row.name, row.prefix, f"{row.created_at:%Y-%m-%d %H:%M}", str(row.revoked_at or ""))
    console.print(table)


@command(app)
def revoke(prefix: Annotated[str, typer.Argument(help="The key's prefix, as `keys list` shows it")]) -> None:
    """Revoke the key with this prefix (requests with it get 401 at once)."""
    if not run_with_database(lambda db: revoke_key(db, prefix)):
        errors.print(f"no active key with prefix {prefix!r}")
        raise typer.Exit(1)
    console.print(f"revoked {prefix}")

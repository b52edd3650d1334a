"""API keys of tenants for POST /v1/events, and a CLI to manage them.

A key looks like `csk_<prefix>_<secret>`. Only the prefix (to find the row) and a
sha256 hash of the whole key are stored: the keys are 190 bits of randomness, so a
fast hash is as safe as a slow one and costs nothing per request. The key is shown
once, at creation.

    python -m webhooks.keys create --tenant shop1 --name "shop backend"
    python -m webhooks.keys list
    python -m webhooks.keys revoke <prefix>
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy import select as sa_select
from sqlmodel import col, select, update

from cascade.infra.db import Database, run_with_database
from models.tables import ApiKey, utcnow

_PREFIX = "csk"


def hash_key(key: str) -> str:
    """sha256 hex of a key (what is stored)."""
    return hashlib.sha256(key.encode()).hexdigest()


def _split(key: str) -> str | None:
    # The secret part is urlsafe base64 and may itself contain "_".
    parts = key.split("_", 2)
    if len(parts) != 3 or parts[0] != _PREFIX or not parts[1] or not parts[2]:
        return None
    return parts[1]


async def create_key(db: Database, tenant: str, name: str = "default") -> tuple[str, ApiKey]:
    """A new key for `tenant`: (the key, shown once; its stored row)."""
    prefix = secrets.token_hex(6)
    key = f"{_PREFIX}_{prefix}_{secrets.token_urlsafe(24)}"
    row = ApiKey(tenant=tenant, name=name, prefix=prefix, key_hash=hash_key(key))
    async with db.session() as session:
        session.add(row)
    return key, row


async def list_keys(db: Database, tenant: str | None = None) -> list[ApiKey]:
    """Every key (revoked ones too), oldest first; never the keys themselves."""
    async with db.session() as session:
        query = select(ApiKey).order_by(col(ApiKey.id))
        if tenant is not None:
            query = query.where(ApiKey.tenant == tenant)
        return list((await session.exec(query)).all())


async def revoke_key(db: Database, prefix: str) -> bool:
    """Revoke the key with this prefix; False when there is no such active key."""
    async with db.session() as session:
        result = await session.exec(
            update(ApiKey)
            .where(col(ApiKey.prefix) == prefix, col(ApiKey.revoked_at).is_(None))
            .values(revoked_at=utcnow())
        )
    _VALID.clear()
    return bool(result.rowcount)


async def authenticate(db: Database, key: str) -> ApiKey | None:
    """The active key row matching `key`, or None (unknown, revoked, or a wrong secret)."""
    prefix = _split(key)
    if prefix is None:
        return None
    row = await key_row(db, prefix)
    if row is None or row.revoked_at is not None:
        return None
    return row if hmac.compare_digest(row.key_hash, hash_key(key)) else None


async def key_row(db: Database, prefix: str) -> ApiKey | None:
    """The stored key with this prefix (revoked or not), or None.

    One statement outside a transaction: a session would add a BEGIN and a COMMIT round
    trip to every console page and every uncached event (each a wait on a loaded machine).
    """
    table = ApiKey.__table__  # type: ignore[attr-defined]
    async with db.engine.connect() as conn:
        conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
        row = (await conn.execute(sa_select(table).where(table.c.prefix == prefix))).mappings().first()
    return ApiKey(**row) if row is not None else None


# Keys this process found valid lately: key hash -> (tenant, monotonic time it expires).
_VALID: dict[str, tuple[str, float]] = {}
_VALID_MAX = 10_000


async def tenant_of_key(db: Database, key: str, cache_seconds: float) -> str | None:
    """The tenant of an active key, or None; a key found valid is trusted `cache_seconds`.

    Every event carries its key, and the look-up was a database round trip per event
    (a session and five hops to SQLite's thread). Only keys found valid are kept, so an
    unknown key is always looked up; a revocation in this process applies at once
    (`revoke_key` empties the cache), one made elsewhere (the CLI) within `cache_seconds`.
    """
    digest = hash_key(key)
    now = time.monotonic()
    cached = _VALID.get(digest)
    if cached is not None and cached[1] > now:
        return cached[0]
    row = await authenticate(db, key)
    if row is None:
        _VALID.pop(digest, None)
        return None
    if cache_seconds > 0:
        if len(_VALID) >= _VALID_MAX:
            _VALID.clear()
        _VALID[digest] = (row.tenant, now + cache_seconds)
    return row.tenant


cli = typer.Typer(help="Manage API keys for POST /v1/events.", no_args_is_help=True)


@cli.command()
def create(tenant: str = typer.Option(..., help="Tenant (shop) the key belongs to"), name: str = "default") -> None:
    """Create a key and print it once."""
    key, row = run_with_database(lambda db: create_key(db, tenant, name))
    typer.echo(key)
    typer.echo(f"(tenant {row.tenant}, prefix {row.prefix}: store the key now, it is not shown again)", err=True)


@cli.command("list")
def list_command(tenant: str | None = None) -> None:
    """List keys: tenant, name, prefix, created, revoked."""
    table = Table("tenant", "name", "prefix", "created", "revoked")
    for row in run_with_database(lambda db: list_keys(db, tenant)):
        table.add_row(row.tenant, row.name, row.prefix, f"{row.created_at:%Y-%m-%d %H:%M}", str(row.revoked_at or ""))
    Console().print(table)


@cli.command()
def revoke(prefix: str) -> None:
    """Revoke the key with this prefix (requests with it get 401 at once)."""
    if not run_with_database(lambda db: revoke_key(db, prefix)):
        typer.echo(f"no active key with prefix {prefix!r}", err=True)
        raise typer.Exit(1)
    typer.echo(f"revoked {prefix}")


if __name__ == "__main__":
    cli()

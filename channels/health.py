"""Channel health: the last configuration error of each channel, for operators.

A refused token or account fails every send on the channel until someone fixes the
setting, so each one is written here (with the provider's words) besides the error
log line, and `python starter.py channels` shows it. The next send that goes through
marks the channel recovered.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlmodel import col, select, update

from cascade.infra.db import Database, insert_ignoring_conflicts
from models.tables import ChannelHealth, utcnow


@dataclass(frozen=True)
class ChannelStatus:
    """One channel as `starter.py channels` shows it."""

    channel: str
    adapter: str
    status: str
    last_error: str | None = None
    last_error_at: datetime | None = None
    errors: int = 0
    recovered_at: datetime | None = None


async def record_configuration_error(db: Database, channel: str, reason: str) -> None:
    """Remember that `channel`'s provider refused our configuration, and why (its words)."""
    now = utcnow()
    async with db.session() as session:
        await session.exec(
            insert_ignoring_conflicts(db, ChannelHealth)
            .values(channel=channel, last_error=reason[:1000], last_error_at=now, errors=0)
            .on_conflict_do_nothing(index_elements=["channel"])
        )
        await session.exec(
            update(ChannelHealth)
            .where(col(ChannelHealth.channel) == channel)
            .values(
                last_error=reason[:1000],
                last_error_at=now,
                errors=col(ChannelHealth.errors) + 1,
                recovered_at=None,
            )
        )


async def record_recovery(db: Database, channel: str) -> None:
    """A send on `channel` went through: its configuration error is over."""
    async with db.session() as session:
        await session.exec(
            update(ChannelHealth)
            .where(col(ChannelHealth.channel) == channel, col(ChannelHealth.recovered_at).is_(None))
            .values(recovered_at=utcnow(), errors=0)
        )


async def failing_channels(db: Database) -> set[str]:
    """Channels whose last configuration error has not been followed by a good send."""
    async with db.session() as session:
        rows = await session.exec(select(ChannelHealth.channel).where(col(ChannelHealth.recovered_at).is_(None)))
        return set(rows.all())


async def channel_report(db: Database, adapters: dict[str, str]) -> list[ChannelStatus]:
    """Every channel (name -> configured adapter) with its health, in the given order."""
    async with db.session() as session:
        rows = {h.channel: h for h in (await session.exec(select(ChannelHealth))).all()}
    report = []
    for channel, adapter in adapters.items():
        health = rows.get(channel)
        if health is None:
            report.append(ChannelStatus(channel, adapter, "ok"))
            continue
        status = "recovered" if health.recovered_at is not None else "configuration error"
        report.append(
            ChannelStatus(
                channel,
                adapter,
                status,
                last_error=health.last_error,
                last_error_at=health.last_error_at,
                errors=health.errors,
                recovered_at=health.recovered_at,
            )
        )
    return report

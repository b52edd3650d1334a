"""Hand-made history for the analytics tests: journey runs, deliveries and events as rows."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import insert, text

from analytics.funnel import deliveries, events, memberships, runs, skips
from cascade.infra.db import Database
from models.tables import Consent, ContactPoint, Customer

T0 = datetime(2026, 10, 1, 9, 0, tzinfo=UTC)
_ids = itertools.count(1)


@dataclass
class History:
    """Rows to insert; `add_*` return what later rows refer to."""

    runs: list[dict[str, Any]] = field(default_factory=list)
    deliveries: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    skips: list[dict[str, Any]] = field(default_factory=list)
    memberships: list[dict[str, Any]] = field(default_factory=list)

    def run(
        self, journey: str, customer: str, *, campaign: str | None = None, at: datetime = T0, outcome: str | None = None
    ) -> tuple[str, str]:
        """A journey run; returns (workflow_id, run_id)."""
        n = next(_ids)
        wf, run_id = f"{journey}-{customer}-{n}", f"run-{n}"
        self.runs.append(
            {
                "workflow_id": wf,
                "run_id": run_id,
                "journey": journey,
                "customer_id": customer,
                "campaign": campaign,
                "started_at": at,
                "finished_at": None if outcome is None else at + timedelta(days=1),
                "outcome": outcome,
            }
        )
        return wf, run_id

    def send(
        self,
        run: tuple[str, str],
        journey: str,
        customer: str,
        step: int,
        channel: str,
        *,
        cost: float,
        at: datetime = T0,
        status: str = "delivered",
        opened_after: timedelta | None = None,
        clicked_after: timedelta | None = None,
        variant: str | None = None,
    ) -> int:
        """A message of `run`; returns its delivery id."""
        n = next(_ids)
        sent = status != "failed"
        self.deliveries.append(
            {
                "id": n,
                "idempotency_key": f"k-{n}",
                "workflow_id": run[0],
                "run_id": run[1],
                "journey": journey,
                "step": step,
                "customer_id": customer,
                "channel": channel,
                "status": status,
                "cost": cost if sent else 0.0,
                "created_at": at,
                "sent_at": at if sent else None,
                "delivered_at": at + timedelta(seconds=5) if status in ("delivered", "opened", "clicked") else None,
                "opened_at": at + opened_after if opened_after is not None else None,
                "clicked_at": at + clicked_after if clicked_after is not None else None,
                "failed_at": at if status == "failed" else None,
                "variant": variant,
            }
        )
        return n

    def event(
        self,
        customer: str,
        type: str,
        at: datetime,
        *,
        delivery_id: int | None = None,
        amount: float | None = None,
        received: datetime | None = None,
    ) -> None:
        """An engagement or shop event (received when it happened, unless `received` says later)."""
        n = next(_ids)
        self.events.append(
            {
                "event_id": f"e-{n}",
                "delivery_id": delivery_id,
                "customer_id": customer,
                "type": type,
                "source": "api",
                "properties": {} if amount is None else {"amount": amount},
                "occurred_at": at,
                "received_at": received or at,
            }
        )

    def skip(
        self,
        run: tuple[str, str],
        journey: str,
        customer: str,
        step: int,
        channel: str,
        reason: str,
        *,
        at: datetime = T0,
        campaign: str | None = None,
        variant: str | None = None,
    ) -> None:
        """A step of `run` that sent nothing, as the journey records it when it ends."""
        self.skips.append(
            {
                "workflow_id": run[0],
                "run_id": run[1],
                "journey": journey,
                "campaign": campaign,
                "variant": variant,
                "customer_id": customer,
                "step": step,
                "channel": channel,
                "reason": reason,
                "skipped_at": at,
            }
        )

    def member(self, customer: str, segment: str, entered: datetime, exited: datetime | None = None) -> None:
        """A stretch of time `customer` was in `segment`."""
        self.memberships.append(
            {"segment": segment, "customer_id": customer, "entered_at": entered, "exited_at": exited}
        )

    async def save(self, db: Database) -> None:
        """Insert every row (runs, then deliveries, events, skips and memberships)."""
        tables = (
            (runs, self.runs),
            (deliveries, self.deliveries),
            (events, self.events),
            (skips, self.skips),
            (memberships, self.memberships),
        )
        async with db.engine.begin() as conn:
            for table, rows in tables:
                if rows:
                    await conn.execute(insert(table), rows)
            if not db.is_sqlite and self.deliveries:
                # The rows carry their own ids: move the sequence past them so later inserts get new ones.
                await conn.execute(
                    text("SELECT setval(pg_get_serial_sequence('deliveries', 'id'), (SELECT max(id) FROM deliveries))")
                )


async def add_customer(db: Database, customer: str, usable: dict[str, bool]) -> None:
    """A customer with a contact point per channel: usable=True valid and consented,
    False present but unsubscribed."""
    async with db.session() as session:
        session.add(Customer(id=customer, name=customer))
        await session.flush()
        for channel, ok in usable.items():
            session.add(
                ContactPoint(
                    customer_id=customer,
                    channel=channel,
                    address=f"{customer}@{channel}",
                    status="valid" if ok else "unsubscribed",
                )
            )
            session.add(Consent(customer_id=customer, channel=channel, granted=ok))

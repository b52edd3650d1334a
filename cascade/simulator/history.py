"""Weeks of realistic history: a population with hidden habits through the REAL workflows.

`cascade simulate --customers 300 --weeks 4 --seed 7` (and `make run`, with a small
population) starts Temporal's time-skipping test server and a worker with the real
activities and the sandbox channels, writing to the configured database. Every few
simulated hours (`step_hours`, 3) the customers look at what the sandbox delivered to
them; each customer has hidden habits of their own per channel (the chance to open, to click after opening, a typical
delay before opening) and a chance to buy after a click. Opens and clicks go through the
same path as a provider's webhook (`apply_delivery_event`), purchases through the same
path as ``POST /v1/events`` (`record_app_event`), so the journeys react to them as they
would in production, and the funnel, savings, time to react and forecasts are computed
from what the engine really did.

Journeys: every week about `cart_share` (35 %) of the customers leave a cart (the
`abandoned_cart` journey, one per cart, started at a random hour of the week); in the
first week the dormant ones (about `dormant_share`, last purchase 200+ days ago) get the
`winback` journey.

A coarser step plays faster: journeys start on the step's grid and a reaction reaches its
journey up to one step after it happened. Rows the simulation writes are re-dated, so run
it on a database no one else writes to meanwhile (the demo runs it once its own example
journeys are done).

**Dates.** The test server's clock starts at the real time and skips ahead, while the
activities stamp rows with the real clock. The simulator notes (real, simulated) time at
every step it plays, and at the end re-dates every row written during the run to its
simulated time, shifted by a whole number of days so the history ends before now (hours
of the day, hence quiet hours, are kept). Opens, clicks and purchases get the exact time
the customer's habit gave them (the journeys saw them at the next step). The
daily rollups are then rebuilt, so the console shows the history at once.
"""

from __future__ import annotations

import bisect
import math
import random
import shutil
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import DateTime, Table, and_, bindparam, func, select, update
from sqlalchemy.types import TypeDecorator
from sqlmodel import SQLModel
from temporalio.testing import WorkflowEnvironment

from cascade.events.engagement import apply_delivery_event
from cascade.events.ingest import record_app_event
from cascade.events.outbox import deliver
from cascade.events.recency import rebuild_event_recency
from cascade.infra.db import Database
from cascade.infra.settings import Settings
from cascade.journeys.files import load_journey
from cascade.journeys.service import start_journey
from cascade.profiles.service import upsert_customer
from models.events import AppEvent, EngagementType
from models.journey import JourneySpec
from models.profiles import ContactIn, CustomerProfile
from models.tables import Delivery, EngagementEvent, EventRecency, JourneyRun, RollupState, SandboxMessage, utcnow

CHANNELS = ("email", "telegram", "fcm", "sms")
# Simulated customers' ids start with this (the demo checks whether a history is loaded).
SIMULATED_PREFIX = "sim-"
# Population averages per channel: (has a contact point, opens | delivered, clicks | opened,
# median hours to open). Each customer's own values are drawn around these.
BASE_HABITS: dict[str, tuple[float, float, float, float]] = {
    "email": (0.95, 0.30, 0.25, 6.0),
    "telegram": (0.40, 0.60, 0.20, 0.5),
    "fcm": (0.45, 0.15, 0.35, 1.0),
    "sms": (0.80, 0.85, 0.10, 0.3),
}
BUY_AFTER_CLICK = 0.25
# Columns the workflows stamp with their own (simulated) clock, workflow.now() passed to an
# activity; every other timestamp is the activities' real clock.
WORKFLOW_CLOCK = {
    ("journey_runs", "finished_at"),
    ("step_skips", "skipped_at"),
    ("routing_decisions", "decided_at"),
}
# How alike customers are (Beta concentration around the population's rates).
CONCENTRATION = 8.0


@dataclass(frozen=True)
class Habit:
    """One customer's hidden habit on one channel."""

    open_rate: float
    click_rate: float
    median_hours: float


@dataclass(frozen=True)
class Person:
    """A simulated customer: channels reachable, habits, chance to buy after a click."""

    id: str
    habits: dict[str, Habit]
    buy_rate: float
    dormant: bool


@dataclass
class SimulationReport:
    """What a simulation did (the figures come from the database afterwards)."""

    customers: int
    weeks: int
    seed: int
    journeys: int = 0
    messages: int = 0
    opens: int = 0
    clicks: int = 0
    purchases: int = 0
    revenue: float = 0.0
    shifted_days: int = 0
    first_day: datetime | None = None
    last_day: datetime | None = None
    seconds: float = 0.0
    per_journey: dict[str, int] = field(default_factory=dict)


def _beta(rng: random.Random, mean: float) -> float:
    return rng.betavariate(mean * CONCENTRATION, (1 - mean) * CONCENTRATION)


def population(customers: int, seed: int, dormant_share: float = 0.3) -> list[Person]:
    """`customers` people with habits drawn from one seeded generator (same seed, same people)."""
    if customers < 1:
        raise ValueError("customers: at least 1")
    if not 0.0 <= dormant_share <= 1.0:
        raise ValueError("dormant_share: a share between 0 and 1")
    rng = random.Random(seed)
    people = []
    for i in range(customers):
        habits = {}
        for channel, (reach, opens, clicks, hours) in BASE_HABITS.items():
            if channel == "email" or rng.random() < reach:
                # Some read at once, some days later: a log-normal around the channel's median.
                habits[channel] = Habit(_beta(rng, opens), _beta(rng, clicks), hours * rng.lognormvariate(0.0, 0.8))
        people.append(
            Person(f"{SIMULATED_PREFIX}{i:05d}", habits, _beta(rng, BUY_AFTER_CLICK), rng.random() < dormant_share)
        )
    return people


def _profile(person: Person, index: int, now: datetime) -> CustomerProfile:
    contacts = []
    for channel in person.habits:
        address = {
            "email": f"{person.id}@example.com",
            "telegram": str(500000 + index),
            "fcm": f"fcm-token-{person.id}",
            "sms": f"+4420{index:08d}",
        }[channel]
        contacts.append(ContactIn.model_validate({"channel": channel, "address": address, "consent": True}))
    last_purchase = now - timedelta(days=200 + index % 200) if person.dormant else now - timedelta(days=10 + index % 60)
    return CustomerProfile(
        id=person.id, name=f"Sim Customer {index}", timezone="UTC", last_purchase_at=last_purchase, contacts=contacts
    )


@dataclass(order=True)
class _Pending:
    at: datetime
    kind: str = field(compare=False)  # opened, clicked, purchase
    delivery_id: int = field(compare=False)
    amount: float = field(compare=False, default=0.0)


class HistorySimulation:
    """One population on one database and a time-skipping server (see the module docstring)."""

    def __init__(
        self,
        env: WorkflowEnvironment,
        db: Database,
        settings: Settings,
        people: list[Person],
        weeks: int,
        seed: int,
        cart_share: float = 0.35,
        say: Callable[[str], None] = lambda line: None,
        step_hours: int = 3,
    ) -> None:
        if weeks < 1:
            raise ValueError("weeks: at least 1")
        if not 1 <= step_hours <= 24:
            raise ValueError("step_hours: between 1 and 24")
        # How often the customers look (and journeys start): a coarser step plays faster,
        # a reaction then reaches its journey up to that much later than it happened.
        self.step_hours = step_hours
        self.env, self.client, self.db, self.settings = env, env.client, db, settings
        self.people = {p.id: p for p in people}
        self.weeks, self.cart_share = weeks, cart_share
        self.rng = random.Random(seed * 7919 + 1)
        self.say = say
        self.report = SimulationReport(customers=len(people), weeks=weeks, seed=seed)
        self.pending: list[_Pending] = []
        # Exact simulated times of reactions: delivery id -> {column: time}, event id -> time.
        self.reaction_times: dict[int, dict[str, datetime]] = {}
        self.event_times: dict[str, datetime] = {}
        self.seen = 0
        # (real clock, simulated clock) at each simulated hour played.
        self.ticks: list[tuple[datetime, datetime]] = []
        self.tag = uuid.uuid4().hex[:6]

    async def _tick(self) -> datetime:
        now = await self.env.get_current_time()
        self.ticks.append((utcnow(), now))
        return now

    async def run(self) -> SimulationReport:
        """Play the weeks hour by hour until every journey started has ended; re-date; rebuild rollups."""
        real_start = utcnow()
        sim_start = await self._tick()
        for index, person in enumerate(self.people.values()):
            await upsert_customer(self.db, _profile(person, index, sim_start))
        cart = load_journey("abandoned_cart")
        winback = load_journey("winback")
        # Starts: (simulated hour offset, customer, journey, context).
        starts: list[tuple[int, str, JourneySpec, dict[str, Any]]] = []
        for week in range(self.weeks):
            for person in self.people.values():
                if week == 0 and person.dormant:
                    starts.append((self.rng.randrange(0, 24), person.id, winback, {"lapse": f"sim-{self.tag}"}))
                if self.rng.random() < self.cart_share:
                    value = round(self.rng.lognormvariate(math.log(70), 0.6), 2)
                    cart_id = f"{self.tag}-{person.id}-w{week}"
                    starts.append(
                        (
                            week * 168 + self.rng.randrange(0, 168),
                            person.id,
                            cart,
                            {"cart_id": cart_id, "cart_value": value},
                        )
                    )
        starts.sort(key=lambda s: s[0])
        hour, next_start = 0, 0
        last_hour = self.weeks * 168
        running = 0
        while True:
            while next_start < len(starts) and starts[next_start][0] <= hour:
                _, customer, spec, context = starts[next_start]
                key = context.get("cart_id") or context.get("lapse")
                await start_journey(
                    customer, spec, key=key, context=context, client=self.client, db=self.db, settings=self.settings
                )
                self.report.journeys += 1
                self.report.per_journey[spec.name] = self.report.per_journey.get(spec.name, 0) + 1
                next_start += 1
            await self.env.sleep(timedelta(hours=self.step_hours))
            hour += self.step_hours
            now = await self._tick()
            await self._look(now)
            await self._react(now)
            if hour >= last_hour and next_start >= len(starts):
                running = await self._running()
                if running == 0 and not self.pending:
                    break
                if hour > last_hour + 24 * 45:
                    self.say(f"{running} journeys still running after 45 simulated days; stopping the simulation")
                    break
            if hour % 168 < self.step_hours:
                self.say(f"  simulated week {hour // 168}: {self.report.messages} messages so far")
        await self._redate(real_start)
        return self.report

    async def _running(self) -> int:
        r = JourneyRun.__table__.c  # type: ignore[attr-defined]
        stmt = select(func.count()).where(r.customer_id.in_(list(self.people)), r.finished_at.is_(None))
        async with self.db.engine.connect() as conn:
            return int((await conn.execute(stmt)).scalar_one())

    async def _look(self, now: datetime) -> None:
        """The customers look at what arrived since their last look; their habits decide what they do."""
        m = SandboxMessage.__table__.c  # type: ignore[attr-defined]
        d = Delivery.__table__.c  # type: ignore[attr-defined]
        stmt = (
            select(m.id, d.id, d.customer_id, d.channel, d.sent_at)
            .join_from(SandboxMessage.__table__, Delivery.__table__, d.idempotency_key == m.idempotency_key)  # type: ignore[attr-defined]
            .where(m.id > self.seen)
            .order_by(m.id)
        )
        async with self.db.engine.connect() as conn:
            rows = (await conn.execute(stmt)).all()
        for message_id, delivery_id, customer_id, channel, sent_at in rows:
            self.seen = max(self.seen, message_id or 0)
            person = self.people.get(customer_id)
            if person is None or delivery_id is None:
                continue  # someone else's message (the demo's own customers)
            self.report.messages += 1
            habit = person.habits.get(channel)
            if habit is None or self.rng.random() >= habit.open_rate:
                continue
            # Read after the customer's own delay from the send, on the simulated clock
            # the message will be dated with (see _redate).
            real_sent = sent_at or now
            sent = self._to_sim(real_sent if real_sent.tzinfo else real_sent.replace(tzinfo=UTC))
            opened = sent + timedelta(hours=habit.median_hours * self.rng.lognormvariate(0.0, 0.7))
            self.pending.append(_Pending(opened, "opened", delivery_id))
            if self.rng.random() < habit.click_rate:
                clicked = opened + timedelta(minutes=self.rng.uniform(0.5, 15))
                self.pending.append(_Pending(clicked, "clicked", delivery_id))
                if self.rng.random() < person.buy_rate:
                    amount = round(self.rng.lognormvariate(math.log(60), 0.5), 2)
                    bought = clicked + timedelta(minutes=self.rng.uniform(5, 90))
                    self.pending.append(_Pending(bought, "purchase", delivery_id, amount))

    async def _react(self, now: datetime) -> None:
        """Report the reactions whose time has come, through the real paths."""
        self.pending.sort()
        due = bisect.bisect_right([p.at for p in self.pending], now)
        todo, self.pending = self.pending[:due], self.pending[due:]
        for item in todo:
            async with self.db.session() as session:
                delivery = await session.get(Delivery, item.delivery_id)
            if delivery is None:
                continue
            if item.kind == "purchase":
                event_id = f"sim-{self.tag}-order-{item.delivery_id}"
                event = AppEvent(
                    event_id=event_id,
                    customer_id=delivery.customer_id,
                    type="purchase",
                    properties={"amount": item.amount},
                )
                await deliver(self.client, self.db, (await record_app_event(self.db, "shop", event)).rows)
                self.event_times[event_id] = item.at
                self.report.purchases += 1
                self.report.revenue += item.amount
                continue
            kind = EngagementType.OPENED if item.kind == "opened" else EngagementType.CLICKED
            event_id = f"sim-{self.tag}-{item.kind}-{item.delivery_id}"
            await apply_delivery_event(self.client, self.db, delivery, kind, event_id=event_id, source="simulator")
            self.reaction_times.setdefault(item.delivery_id, {})[f"{item.kind}_at"] = item.at
            self.event_times[event_id] = item.at
            if item.kind == "opened":
                self.report.opens += 1
            else:
                self.report.clicks += 1

    def _to_sim(self, real: datetime) -> datetime:
        reals = [r for r, _ in self.ticks]
        i = max(0, bisect.bisect_right(reals, real) - 1)
        r, s = self.ticks[i]
        moved = s + (real - r)
        # Rows written while the server skipped an hour belong to that hour.
        if i + 1 < len(self.ticks):
            moved = min(moved, self.ticks[i + 1][1])
        return moved

    async def _redate(self, real_start: datetime) -> None:
        """Every row written since `real_start` gets its simulated time, then all of them
        move back a whole number of days so the history ends before now."""
        sim_end = self.ticks[-1][1]
        real_end = utcnow()
        days = max(0, math.ceil((sim_end - real_end).total_seconds() / 86400))
        shift = timedelta(days=days)
        self.report.shifted_days = days
        # event_recency is derived from the events' times: rebuilt from them below.
        skip = {RollupState.__tablename__, EventRecency.__tablename__}
        async with self.db.engine.begin() as conn:
            for table in SQLModel.metadata.sorted_tables:
                if table.name in skip:
                    continue
                await self._redate_table(conn, table, real_start, real_end, shift)
            # Reactions at the minute the customer's habit gave them, not at the next simulated hour.
            d = Delivery.__table__  # type: ignore[attr-defined]
            for delivery_id, columns in self.reaction_times.items():
                values = {name: at - shift for name, at in columns.items()}
                await conn.execute(update(d).where(d.c.id == delivery_id).values(**values))
            e = EngagementEvent.__table__  # type: ignore[attr-defined]
            stmt = update(e).where(e.c.event_id == bindparam("eid")).values(occurred_at=bindparam("at"))
            rows = [{"eid": eid, "at": at - shift} for eid, at in self.event_times.items()]
            if rows:
                await conn.execute(stmt, rows)
            await rebuild_event_recency(conn)
        self.report.first_day = self.ticks[0][1] - shift
        self.report.last_day = sim_end - shift

    async def _redate_table(
        self, conn: Any, table: Table, real_start: datetime, real_end: datetime, shift: timedelta
    ) -> None:
        # Timestamps only (UTCDateTime decorates DateTime); a `day` (Date) column is left alone.
        columns = [
            c
            for c in table.columns
            if isinstance(c.type, DateTime)
            or (isinstance(c.type, TypeDecorator) and isinstance(c.type.impl_instance, DateTime))
        ]
        keys = list(table.primary_key.columns)
        if not columns or not keys:
            return
        for column in columns:
            rows = (await conn.execute(select(*keys, column).where(column >= real_start))).all()
            if not rows:
                continue
            params = []
            for row in rows:
                at = row[-1] if row[-1].tzinfo else row[-1].replace(tzinfo=UTC)
                # Past the real end only the simulated clock can have written it.
                simulated = (table.name, column.name) in WORKFLOW_CLOCK or at > real_end
                moved = at if simulated else self._to_sim(at)
                params.append({**{f"k_{k.name}": row[i] for i, k in enumerate(keys)}, "v": moved - shift})
            stmt = (
                update(table)
                .where(and_(*(k == bindparam(f"k_{k.name}") for k in keys)))
                .values({column.name: bindparam("v")})
            )
            await conn.execute(stmt, params)


def time_skipping_server() -> str | None:
    """The temporal-test-server pip installed beside this interpreter (no download), if any."""
    return shutil.which("temporal-test-server", path=str(Path(sys.executable).parent)) or shutil.which(
        "temporal-test-server"
    )


__all__ = ["Habit", "HistorySimulation", "Person", "SimulationReport", "population", "time_skipping_server"]

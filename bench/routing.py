"""Is optichannel routing cheaper than the fixed cascade? A simulated population through the real workflows.

    python bench/routing.py [--customers 40] [--weeks 4] [--seed 7]

The population and the way customers read are bench/routing_fast.py's (four kinds of
customer with their own chance per channel, a habitual hour of the day, a personal delay;
a message arriving off their hour is read at their next habitual hour with 55 % of the
chance), with the same luck per (seed, customer, week, channel). Four strategies each get
their own SQLite database and one promotion per customer per week, run by the real
CascadeJourney and activities (sandbox channels) on Temporal's time-skipping server:

- everything: email, telegram and SMS at once (steps one minute apart);
- fixed: email -> telegram -> SMS, a day apart (the classic cascade);
- optichannel: the same pool, routed per customer (`route: optichannel`);
- optichannel+time+wait: plus `send_at: best` (24 h window) and `wait: adaptive`.

The simulated customers look at the sandbox outbox once per simulated hour: a message
they will open gets its open time; when that time has come (at the first hourly look
after it) the open is written to the delivery log and the journey signalled, so no
model learns from an open before it happened. A journey has reacted when any of its
messages is opened within 24 h of being sent. Prices per message: email 0.002, telegram
0.01 (a business messenger's price), SMS 0.05.

Writes bench/results/routing.json and routing.png (cost per reaction by week, totals).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from sqlalchemy import func
from sqlmodel import col, select, update
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment

from bench.routing_fast import CEILING, CHANNELS, COSTS, Person, population, read_at
from cascade.infra.db import Database, migrate
from cascade.infra.settings import Settings
from cascade.infra.temporal import register_search_attributes
from cascade.profiles.service import upsert_customer
from models.events import EngagementInput, EngagementType
from models.journey import JourneySpec
from models.profiles import CustomerProfile
from models.tables import Delivery, JourneyRun, SandboxMessage
from starter import start_journey
from worker import build_worker
from workflows.cascade import CascadeJourney

STRATEGIES = (
    "everything",
    "fixed",
    "optichannel",
    "optichannel+time",
    "optichannel+time+wait",
    "optichannel+time+ceiling",
)
RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class Week:
    """One strategy's numbers for one simulated week."""

    journeys: int = 0
    reacted: int = 0
    cost: float = 0.0
    messages: int = 0
    hours_to_reaction: list[float] = field(default_factory=list)
    reacted_runs: set[str] = field(default_factory=set)

    def summary(self) -> dict[str, float]:
        """Reaction rate, cost per reaction and median time to reaction."""
        return {
            "journeys": self.journeys,
            "reaction_rate": self.reacted / self.journeys if self.journeys else 0.0,
            "cost": round(self.cost, 4),
            "messages": self.messages,
            "cost_per_reaction": self.cost / self.reacted if self.reacted else float("inf"),
            "median_hours_to_reaction": float(np.median(self.hours_to_reaction)) if self.hours_to_reaction else 0.0,
        }


def journey(strategy: str, week: int) -> JourneySpec:
    """The week's promotion as each strategy sends it."""
    steps: list[dict[str, Any]] = [
        {
            "channel": ch,
            "await": "opened",
            "wait": "1m" if strategy == "everything" else "1d",
            "content": {"body": "Sale"},
        }
        for ch in CHANNELS
    ]
    spec: dict[str, Any] = {"name": f"{strategy.replace('+', '-')}-w{week}", "steps": steps}
    if strategy.startswith("optichannel"):
        spec["route"] = "optichannel"
    for step in steps:
        if "+time" in strategy:
            step.update({"send_at": "best", "send_within": "24h"})
        if "+wait" in strategy:
            step.update({"wait": "adaptive", "wait_bounds": {"min": "1h", "max": "1d"}})
    if strategy.endswith("+ceiling"):
        spec["max_cost_per_reaction"] = CEILING
    return JourneySpec.model_validate(spec)


class Simulation:
    """One strategy on its own database, worker and task queue."""

    def __init__(self, env: WorkflowEnvironment, strategy: str, people: list[Person], seed: int, workdir: Path) -> None:
        self.env = env
        self.client: Client = env.client
        self.strategy = strategy
        self.people = {p.id: p for p in people}
        self.seed = seed
        # Opens still to come: (when, delivery id, workflow id, step).
        self.pending: list[tuple[datetime, int, str, int]] = []
        self.settings = Settings(
            database_url=f"sqlite:///{workdir / (strategy.replace('+', '-') + '.db')}",
            task_queue=f"bench-{uuid.uuid4().hex[:8]}",
            channel_costs=COSTS,
        )
        self.db = Database.from_settings(self.settings)
        self.seen = 0
        self.week_started: datetime | None = None

    async def setup(self) -> None:
        """Schema and customers (all three channels, consent given)."""
        await migrate(self.db.engine)
        for i, person in enumerate(self.people.values()):
            contacts = [
                {"channel": "email", "address": f"{person.id}@example.com"},
                {"channel": "telegram", "address": str(100000 + i)},
                {"channel": "sms", "address": f"+1415555{i:04d}"},
            ]
            await upsert_customer(self.db, CustomerProfile.model_validate({"id": person.id, "contacts": contacts}))

    async def react(self, week: Week, week_no: int, started: datetime) -> None:
        """The customers look at what arrived since the last look, and open what is due."""
        now = await self.env.get_current_time()
        async with self.db.session() as session:
            rows = (
                await session.exec(
                    select(SandboxMessage, Delivery)
                    .join(Delivery, col(Delivery.idempotency_key) == col(SandboxMessage.idempotency_key))
                    .where(col(SandboxMessage.id) > self.seen)
                    .order_by(col(SandboxMessage.id))
                )
            ).all()
        for message, delivery in rows:
            self.seen = max(self.seen, message.id or 0)
            assert delivery.id is not None
            person = self.people[delivery.customer_id]
            # Looked at hourly: the message went out within the last hour.
            sent = now - timedelta(minutes=30)
            async with self.db.session() as session:
                await session.exec(update(Delivery).where(col(Delivery.id) == delivery.id).values(sent_at=sent))
            opened = read_at(person, delivery.channel, sent, week_no, self.seed)
            if opened is not None:
                self.pending.append((opened, delivery.id, delivery.workflow_id, delivery.step))
                if delivery.workflow_id not in week.reacted_runs:
                    week.reacted_runs.add(delivery.workflow_id)
                    week.hours_to_reaction.append((opened - started).total_seconds() / 3600)
        due = [p for p in self.pending if p[0] <= now]
        self.pending = [p for p in self.pending if p[0] > now]
        for opened, delivery_id, workflow_id, step in due:
            async with self.db.session() as session:
                await session.exec(
                    update(Delivery).where(col(Delivery.id) == delivery_id).values(opened_at=opened, status="opened")
                )
            handle = self.client.get_workflow_handle(workflow_id)
            # "Send everything" has ended its journey by the time the customer reads.
            with contextlib.suppress(RPCError):
                await handle.signal(CascadeJourney.engagement, EngagementInput(type=EngagementType.OPENED, step=step))

    async def run_week(self, week_no: int) -> Week:
        """Start the week's journeys, play the customers hour by hour until every journey ended."""
        week = Week(journeys=len(self.people))
        spec = journey(self.strategy, week_no)
        started = self.week_started = await self.env.get_current_time()
        # A few starts at a time: each holds a pooled connection, and on a loaded machine a
        # hundred at once outwait the pool's timeout.
        gate = asyncio.Semaphore(8)

        async def start(cid: str) -> None:
            async with gate:
                await start_journey(cid, spec, client=self.client, db=self.db, settings=self.settings)

        await asyncio.gather(*(start(cid) for cid in self.people))
        for _ in range(24 * 8):
            await self.env.sleep(timedelta(hours=1))
            await self.react(week, week_no, started)
            async with self.db.session() as session:
                done = (
                    await session.exec(
                        select(func.count()).where(
                            JourneyRun.journey == spec.name, col(JourneyRun.finished_at).is_not(None)
                        )
                    )
                ).one()
            # Opens still to come are played too, so the next week's decisions see them.
            if done >= len(self.people) and not self.pending:
                break
        # A journey reacted when the customer opened any of its messages (also one that came
        # after "send everything" had ended its journey).
        week.reacted = len(week.reacted_runs)
        async with self.db.session() as session:
            cost, count = (
                await session.exec(
                    select(func.coalesce(func.sum(Delivery.cost), 0.0), func.count()).where(
                        Delivery.journey == spec.name, col(Delivery.status).in_(["sent", "opened"])
                    )
                )
            ).one()
        week.cost, week.messages = float(cost), int(count)
        return week


async def main(
    customers: int, weeks: int, seed: int, strategies: tuple[str, ...] = STRATEGIES, hour: int = 9
) -> dict[str, Any]:
    """Run the strategies over the same population; returns the numbers written to routing.json."""
    people = population(customers, np.random.default_rng(seed))
    env = await WorkflowEnvironment.start_time_skipping(
        data_converter=pydantic_data_converter,
        test_server_existing_path=shutil.which("temporal-test-server")
        or str(Path(sys.executable).parent / "temporal-test-server"),
    )
    await register_search_attributes(env.client)
    workdir = Path(tempfile.mkdtemp(prefix="bench-routing-"))
    out: dict[str, Any] = {
        "customers": customers,
        "weeks": weeks,
        "seed": seed,
        "costs": COSTS,
        "ceiling": CEILING,
        "start_hour_utc": hour,
        "strategies": {},
    }
    try:
        for strategy in strategies:
            # Every strategy's first week starts at `hour` UTC (the fixed cascade's send time,
            # as in bench/routing_fast.py), not at whatever hour the server's clock shows.
            now = await env.get_current_time()
            start = now.replace(hour=hour, minute=0, second=0, microsecond=0)
            if start <= now:
                start += timedelta(days=1)
            await env.sleep(start - now)
            clock = time.perf_counter()
            sim = Simulation(env, strategy, people, seed, workdir)
            await sim.setup()
            results: list[Week] = []
            async with build_worker(env.client, sim.settings, sim.db):
                for w in range(weeks):
                    results.append(await sim.run_week(w))
                    print(strategy, "week", w + 1, json.dumps(results[-1].summary()), flush=True)
                    # The next promotion a week after this one started.
                    now = await env.get_current_time()
                    assert sim.week_started is not None
                    await env.sleep(max(sim.week_started + timedelta(days=7) - now, timedelta(minutes=1)))
            await sim.db.dispose()
            total = Week(
                journeys=sum(r.journeys for r in results),
                reacted=sum(r.reacted for r in results),
                cost=sum(r.cost for r in results),
                messages=sum(r.messages for r in results),
                hours_to_reaction=[h for r in results for h in r.hours_to_reaction],
            )
            out["strategies"][strategy] = {
                "total": total.summary(),
                "by_week": [r.summary() for r in results],
                "seconds": round(time.perf_counter() - clock, 1),
            }
            print(strategy, json.dumps(out["strategies"][strategy]["total"]), flush=True)
    finally:
        await env.shutdown()
        shutil.rmtree(workdir, ignore_errors=True)
    fixed = out["strategies"].get("fixed", {}).get("total")
    if fixed:
        out["vs_fixed"] = {
            name: {
                "reaction_rate": s["total"]["reaction_rate"] / fixed["reaction_rate"],
                "cost_per_reaction": s["total"]["cost_per_reaction"] / fixed["cost_per_reaction"],
            }
            for name, s in out["strategies"].items()
        }
    return out


def chart(data: dict[str, Any], path: Path) -> None:
    """Cost per reaction by week per strategy, and the totals."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for strategy, numbers in data["strategies"].items():
        weekly = [w["cost_per_reaction"] for w in numbers["by_week"]]
        left.plot(range(1, len(weekly) + 1), weekly, marker="o", label=strategy)
    left.set_xlabel("week of simulated time")
    left.set_ylabel("cost per reaction")
    left.set_title("How fast it learns")
    left.legend()
    names = list(data["strategies"])
    totals = [data["strategies"][s]["total"] for s in names]
    x = np.arange(len(names))
    right.bar(x - 0.2, [t["cost_per_reaction"] for t in totals], 0.4, label="cost per reaction")
    twin = right.twinx()
    twin.bar(x + 0.2, [t["reaction_rate"] for t in totals], 0.4, color="tab:orange", label="reaction rate")
    right.set_xticks(x, [n.replace("+", "+\n") for n in names], fontsize=8)
    right.set_ylabel("cost per reaction")
    twin.set_ylabel("reaction rate")
    right.set_title(f"{data['customers']} customers x {data['weeks']} weeks")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def merge(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Runs of the same sizes (split over processes and seeds) as one result, pooled over seeds.

    Each seed needs the fixed cascade once: it is deterministic (same population, luck and
    09:00 start), so one process's fixed run serves the others of that seed.
    """
    seeds: dict[int, dict[str, Any]] = {}
    for part in parts:
        runs = seeds.setdefault(part["seed"], {})
        runs.update(part["strategies"])
    if any("fixed" not in runs for runs in seeds.values()):
        raise SystemExit("every seed needs a fixed run to compare with")
    # A strategy is compared with the fixed cascade over the seeds it ran on.
    names = [s for s in STRATEGIES if any(s in runs for runs in seeds.values())]
    weeks = parts[0]["weeks"]
    tail = min(4, weeks)

    def pooled(name: str, week_range: range, over: list[int]) -> dict[str, float]:
        journeys = reacted = cost = 0.0
        hours: list[float] = []
        for runs in (seeds[seed] for seed in over):
            for w in week_range:
                row = runs[name]["by_week"][w]
                journeys += row["journeys"]
                reacted += row["reaction_rate"] * row["journeys"]
                cost += row["cost"]
            hours.append(runs[name]["total"]["median_hours_to_reaction"])
        return {
            "reaction_rate": reacted / journeys,
            "cost_per_reaction": cost / reacted if reacted else float("inf"),
            "median_hours_to_reaction": float(np.median(hours)),
        }

    out: dict[str, Any] = {
        "customers": parts[0]["customers"],
        "weeks": weeks,
        "seeds": sorted(seeds),
        "start_hour_utc": parts[0].get("start_hour_utc"),
        "ceiling": parts[0].get("ceiling"),
        "strategies": {},
    }
    for name in names:
        over = sorted(seed for seed, runs in seeds.items() if name in runs)
        fixed_all, fixed_tail = pooled("fixed", range(weeks), over), pooled("fixed", range(weeks - tail, weeks), over)
        whole, last = pooled(name, range(weeks), over), pooled(name, range(weeks - tail, weeks), over)
        weekly = []
        for w in range(weeks):
            mine, base = pooled(name, range(w, w + 1), over), pooled("fixed", range(w, w + 1), over)
            weekly.append(
                {
                    "week": w + 1,
                    "cost_per_reaction": mine["cost_per_reaction"],
                    "cost_per_reaction_vs_fixed": mine["cost_per_reaction"] / base["cost_per_reaction"],
                    "reaction_rate_vs_fixed": mine["reaction_rate"] / base["reaction_rate"],
                }
            )
        out["strategies"][name] = {
            "total": whole,
            "last_weeks": last,
            "vs_fixed": {
                "cost_per_reaction": whole["cost_per_reaction"] / fixed_all["cost_per_reaction"],
                "reaction_rate": whole["reaction_rate"] / fixed_all["reaction_rate"],
                "last_cost_per_reaction": last["cost_per_reaction"] / fixed_tail["cost_per_reaction"],
                "last_reaction_rate": last["reaction_rate"] / fixed_tail["reaction_rate"],
            },
            "seeds": over,
            "per_seed_cost_vs_fixed": {
                str(seed): seeds[seed][name]["total"]["cost_per_reaction"]
                / seeds[seed]["fixed"]["total"]["cost_per_reaction"]
                for seed in over
            },
            "by_week": weekly,
        }
    return out


def merged_chart(data: dict[str, Any], path: Path) -> None:
    """Cost per reaction and reaction rate against the fixed cascade by week (seeds pooled), and the totals."""
    fig, (left, middle, right) = plt.subplots(1, 3, figsize=(17, 4.8))
    for name, numbers in data["strategies"].items():
        rows = numbers["by_week"]
        weeks = [r["week"] for r in rows]
        # A strategy that ran on fewer seeds says which.
        label = name if numbers["seeds"] == data["seeds"] else f"{name} (seed {', '.join(map(str, numbers['seeds']))})"
        left.plot(weeks, [r["cost_per_reaction_vs_fixed"] for r in rows], marker="o", label=label)
        middle.plot(weeks, [r["reaction_rate_vs_fixed"] for r in rows], marker="o", label=label)
    left.axhline(0.7, color="grey", lw=0.8, ls=":")
    middle.axhline(1.0, color="grey", lw=0.8, ls=":")
    seeds = ", ".join(str(s) for s in data["seeds"])
    left.set_title(f"Real workflows: cost per reaction vs fixed (seeds {seeds})")
    left.set_xlabel("week of simulated time")
    left.set_ylabel("x fixed cascade (goal: <= 0.7)")
    middle.set_title("reaction rate vs fixed (goal: >= 1)")
    middle.set_xlabel("week of simulated time")
    middle.set_ylabel("x fixed cascade")
    middle.legend(fontsize=8)
    names = list(data["strategies"])
    x = np.arange(len(names))
    right.bar(
        x - 0.2, [data["strategies"][n]["vs_fixed"]["cost_per_reaction"] for n in names], 0.4, label="cost per reaction"
    )
    right.bar(x + 0.2, [data["strategies"][n]["vs_fixed"]["reaction_rate"] for n in names], 0.4, label="reaction rate")
    right.axhline(1.0, color="grey", lw=0.8)
    right.set_xticks(x, [n.replace("+", "+\n") for n in names], fontsize=8)
    right.set_ylabel("x fixed cascade, all weeks")
    right.set_title(f"{data['customers']} customers x {data['weeks']} weeks per seed")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=40)
    parser.add_argument("--weeks", type=int, default=4)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--strategies", nargs="+", choices=STRATEGIES, default=list(STRATEGIES))
    parser.add_argument("--hour", type=int, default=9, choices=range(24), help="UTC hour the weeks start at")
    parser.add_argument("--out", default="routing", help="name of the .json and .png in bench/results")
    parser.add_argument("--merge", nargs="+", type=Path, help="pool these result files (split runs, seeds); no run")
    args = parser.parse_args()
    if args.merge:
        merged = merge([json.loads(p.read_text()) for p in args.merge])
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / f"{args.out}.json").write_text(json.dumps(merged, indent=2))
        merged_chart(merged, RESULTS / f"{args.out}.png")
        for name, numbers in merged["strategies"].items():
            t, v = numbers["total"], numbers["vs_fixed"]
            print(
                f"| {name} | {t['reaction_rate']:.3f} | {t['cost_per_reaction']:.4f} | {v['cost_per_reaction']:.2f}x"
                f" ({' / '.join(f'{x:.2f}' for x in numbers['per_seed_cost_vs_fixed'].values())})"
                f" | {v['last_cost_per_reaction']:.2f}x (rate {v['last_reaction_rate']:.2f}x)"
                f" | {v['reaction_rate']:.2f}x | {t['median_hours_to_reaction']:.1f} |"
            )
        raise SystemExit(0)
    chosen = tuple(s for s in STRATEGIES if s in args.strategies)
    data = asyncio.run(main(args.customers, args.weeks, args.seed, chosen, args.hour))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.out}.json").write_text(json.dumps(data, indent=2))
    chart(data, RESULTS / f"{args.out}.png")
    print(json.dumps(data.get("vs_fixed")))

"""Optichannel routing against the fixed cascade on a few hundred simulated customers, fast.

    python bench/routing_fast.py [--customers 400] [--weeks 12] [--seeds 7 8 9]

The decision code is the production code (cascade/routing/: `rank_channels`,
`fit_prior_strength`, `hour_profile` + `next_send_time`, `adaptive_wait`), called directly
in a simulation loop instead of through Temporal, so hundreds of customers over months
take seconds. bench/routing.py runs the same population model through the real
workflows (slower, smaller).

The population (hidden from the strategies):

- each customer is one of four kinds with their own chance to react per channel (email
  readers, messenger users, SMS-only and hardly-reachable people), plus noise of their own;
- each has a habitual hour of the day when they check their phone (mornings, lunch or
  evenings); a message that arrives within 2 h before it is read then with the full
  chance, any other message is read at their next habitual hour with `OFF_HOUR_FACTOR` of
  it (buried under newer ones). So the open time says when the customer reads, as in
  real delivery logs;
- a personal delay from arrival to opening (log-normal, median 40 min across customers).

Rules the same for every strategy: one promotion per customer per week, sent on Monday
09:00 UTC unless the strategy picks the time; a journey has reacted when any of its
messages is opened within 24 h of being sent; the journey ends at the first open (later
steps are not sent) or when its pool is exhausted. Costs per message as in bench/routing.py.

Strategies: everything (all channels at once), fixed (email -> telegram -> sms, a day
apart), optichannel (each step the customer's cheapest channel per expected reaction by
`rank_channels`, a day apart), optichannel+time+wait (plus the send hour from the
customer's reaction hours and the wait from their reaction delays), and an oracle that
knows each customer's true chances and hour (the best any ranking could do).

One simplification against the activities: everyone's counts, the fitted prior strengths
and the channels' reaction delays are read once per simulated week (the activity reads
them at each decision); the customer's own history is read at each decision, as there.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cascade.routing.scoring import (
    ChannelOption,
    ReactionCounts,
    RoutingInput,
    RoutingParams,
    decision_seed,
    fit_prior_strength,
    rank_channels,
)
from cascade.routing.sendtime import hour_profile, next_send_time
from cascade.routing.waiting import adaptive_wait

CHANNELS = ("email", "telegram", "sms")
COSTS = {"email": 0.002, "telegram": 0.01, "sms": 0.05}
# (share, chance to react per channel when the message arrives at the customer's hour).
KINDS = (
    (0.30, {"email": 0.45, "telegram": 0.05, "sms": 0.35}),  # read their email
    (0.35, {"email": 0.05, "telegram": 0.55, "sms": 0.35}),  # live in the messenger
    (0.20, {"email": 0.03, "telegram": 0.03, "sms": 0.50}),  # only SMS gets through
    (0.15, {"email": 0.04, "telegram": 0.04, "sms": 0.08}),  # hardly reachable anywhere
)
# Habitual hours (UTC): mornings, lunch, evenings.
HABITS = ((0.3, (7, 8, 9)), (0.2, (12, 13)), (0.5, (18, 19, 20, 21, 22)))
OFF_HOUR_FACTOR = 0.55
DEFAULT_OFF_HOUR_FACTOR = OFF_HOUR_FACTOR  # the population the README describes
NEAR_HOURS = 2
WINDOW = timedelta(days=1)
WEEK0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)  # a Monday, 09:00 UTC
STRATEGIES = (
    "everything",
    "fixed",
    "optichannel",
    "optichannel+time",
    "optichannel+time+wait",
    "optichannel+ceiling",
    "optichannel+time+ceiling",
    "oracle",
    "oracle+time",
)
RESULTS = Path(__file__).resolve().parent / "results"
# max_cost_per_reaction of the "+ceiling" strategies: what one reaction is worth, here set
# to five SMS (a marketer's figure, not fitted; README shows the sweep over --ceiling).
CEILING = 0.25


@dataclass
class Person:
    """A simulated customer's hidden traits."""

    id: str
    p: dict[str, float]
    hour: int
    delay_minutes: float


def population(n: int, rng: np.random.Generator) -> list[Person]:
    """`n` customers of the four kinds, each with noise of their own on every chance."""
    shares = np.array([k[0] for k in KINDS])
    habit_shares = np.array([h[0] for h in HABITS])
    people = []
    for i in range(n):
        kind = KINDS[int(rng.choice(len(KINDS), p=shares / shares.sum()))][1]
        p = {ch: float(np.clip(v + rng.normal(0, 0.05), 0.01, 0.95)) for ch, v in kind.items()}
        hours = HABITS[int(rng.choice(len(HABITS), p=habit_shares / habit_shares.sum()))][1]
        people.append(Person(f"sim{i:04d}", p, int(rng.choice(hours)), float(rng.lognormal(np.log(40), 0.8))))
    return people


def read_at(person: Person, channel: str, sent: datetime, week: int, seed: int) -> datetime | None:
    """When `person` opens a message sent at `sent`, or None (not within the day, or never).

    The draws come from (seed, customer, week, channel) alone: every strategy meets the
    same luck for the same message, so differences between strategies are theirs, not noise.
    """
    rng = np.random.default_rng(decision_seed("read", seed, person.id, week, channel))
    luck, spread = rng.random(), rng.normal()
    # Hours until the customer's habitual hour comes round (0..23).
    until = (person.hour - sent.hour) % 24
    near = min(until, 24 - until) <= NEAR_HOURS
    chance = person.p[channel] * (1.0 if near else OFF_HOUR_FACTOR)
    if luck >= chance:
        return None
    delay = timedelta(minutes=float(person.delay_minutes * np.exp(0.5 * spread)))
    if near:
        opened = sent + delay
    else:
        check = sent.replace(minute=0, second=0, microsecond=0) + timedelta(hours=until)
        opened = max(check, sent) + delay
    return opened if opened - sent <= WINDOW else None


@dataclass
class Message:
    """One message of the simulated delivery log."""

    customer: str
    channel: str
    sent: datetime
    opened: datetime | None


@dataclass
class Log:
    """The delivery log the routing models learn from (what history.py and timing.py read)."""

    by_customer: dict[str, list[Message]] = field(default_factory=dict)

    def add(self, message: Message) -> None:
        """Append one message."""
        self.by_customer.setdefault(message.customer, []).append(message)

    def own(self, customer: str, at: datetime) -> tuple[dict[str, ReactionCounts], dict[str, datetime]]:
        """The customer's counts per channel and last reaction per channel, as known at `at`."""
        counts: dict[str, list[int]] = {}
        last: dict[str, datetime] = {}
        for m in self.by_customer.get(customer, []):
            if m.sent > at:
                continue
            c = counts.setdefault(m.channel, [0, 0])
            c[1] += 1
            if m.opened is not None and m.opened <= at:
                c[0] += 1
                if m.channel not in last or m.opened > last[m.channel]:
                    last[m.channel] = m.opened
        return {ch: ReactionCounts(reactions=r, messages=n) for ch, (r, n) in counts.items()}, last

    def snapshot(self, at: datetime) -> tuple[dict[str, ReactionCounts], dict[str, float]]:
        """Everyone's counts per channel and the fitted prior strength per channel at `at`."""
        per: dict[str, list[ReactionCounts]] = {}
        for customer in self.by_customer:
            own, _ = self.own(customer, at)
            for ch, c in own.items():
                per.setdefault(ch, []).append(c)
        population = {
            ch: ReactionCounts(reactions=sum(c.reactions for c in cs), messages=sum(c.messages for c in cs))
            for ch, cs in per.items()
        }
        return population, {ch: fit_prior_strength(cs) for ch, cs in per.items()}

    def reaction_times(self, customer: str, at: datetime) -> list[datetime]:
        """When the customer opened anything, as known at `at`."""
        return [m.opened for m in self.by_customer.get(customer, []) if m.opened is not None and m.opened <= at]

    def delays(self, channel: str, at: datetime, customer: str | None = None) -> list[timedelta]:
        """Send-to-open delays on `channel` (one customer's or everyone's), as known at `at`."""
        rows = self.by_customer.get(customer, []) if customer else (m for ms in self.by_customer.values() for m in ms)
        return [m.opened - m.sent for m in rows if m.channel == channel and m.opened is not None and m.opened <= at]


@dataclass
class Week:
    """One strategy's totals for one week."""

    journeys: int = 0
    reacted: int = 0
    cost: float = 0.0
    messages: int = 0
    sms: int = 0
    hours: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, float]:
        """Reaction rate, cost per reaction, messages, SMS share and median hours to reaction."""
        return {
            "journeys": self.journeys,
            "reaction_rate": round(self.reacted / self.journeys, 4) if self.journeys else 0.0,
            "cost": round(self.cost, 4),
            "messages": self.messages,
            "sms_per_journey": round(self.sms / self.journeys, 4) if self.journeys else 0.0,
            "cost_per_reaction": round(self.cost / self.reacted, 5) if self.reacted else float("inf"),
            "median_hours_to_reaction": round(float(np.median(self.hours)), 2) if self.hours else 0.0,
        }


class Strategy:
    """Plays one strategy over the population, week by week, on its own delivery log."""

    def __init__(
        self, name: str, people: list[Person], seed: int, params: RoutingParams, ceiling: float | None = None
    ) -> None:
        self.name = name
        # The journey's max_cost_per_reaction, for the strategies named "+ceiling".
        self.ceiling = ceiling if name.endswith("+ceiling") else None
        self.people = people
        self.seed = seed
        self.params = params
        self.log = Log()
        self.channel_delays: dict[str, list[timedelta]] = {}

    def _order(self, person: Person, at: datetime, pool: list[str], key: str, snapshot: Any) -> str | None:
        if self.name.startswith("oracle"):
            return min(pool, key=lambda ch: (COSTS[ch] / person.p[ch], -person.p[ch]))
        own, last = self.log.own(person.id, at)
        population, strength = snapshot
        decision = rank_channels(
            RoutingInput(
                options=[ChannelOption(channel=ch, cost=COSTS[ch]) for ch in pool],
                own=own,
                population=population,
                prior_strength=strength,
                last_reaction_at=last,
                now=at,
                seed=decision_seed(key),
                max_cost_per_reaction=self.ceiling,
            ),
            self.params,
        )
        return decision.chosen

    def _send_time(self, person: Person, at: datetime) -> datetime:
        if self.name == "oracle+time":
            # The next moment inside the customer's habitual 2 h.
            until = (person.hour - at.hour) % 24
            return at if min(until, 24 - until) <= NEAR_HOURS else at + timedelta(hours=until)
        profile = hour_profile(self.log.reaction_times(person.id, at), ZoneInfo("UTC"))
        return next_send_time(at, profile, ZoneInfo("UTC"), timedelta(hours=24)).send_at

    def _wait(self, person: Person, channel: str, at: datetime) -> timedelta:
        return adaptive_wait(
            self.log.delays(channel, at, person.id),
            self.channel_delays.get(channel, []),
            default=timedelta(days=1),
            minimum=timedelta(hours=1),
            maximum=timedelta(days=1),
        ).wait

    def week(self, number: int) -> Week:
        """Every customer's journey of week `number`."""
        start = WEEK0 + timedelta(weeks=number)
        routed = self.name.startswith(("optichannel", "oracle"))
        timed = "+time" in self.name
        snapshot = self.log.snapshot(start) if routed and not self.name.startswith("oracle") else None
        if self.name == "optichannel+time+wait":
            # Everyone's delays per channel as of the week's start (like the population's counts).
            self.channel_delays = {ch: self.log.delays(ch, start) for ch in CHANNELS}
        result = Week(journeys=len(self.people))
        for person in self.people:
            sent_messages: list[Message] = []
            if self.name == "everything":
                for ch in CHANNELS:
                    sent_messages.append(Message(person.id, ch, start, read_at(person, ch, start, number, self.seed)))
            else:
                pool = list(CHANNELS)
                at = start
                first_open: datetime | None = None
                step = 0
                while pool and first_open is None:
                    key = f"{self.name}/{number}/{person.id}/{step}"
                    channel = self._order(person, at, pool, key, snapshot) if routed else pool[0]
                    if channel is None:
                        break  # every channel left is above the ceiling: the journey ends
                    pool.remove(channel)
                    send = self._send_time(person, at) if timed else at
                    message = Message(person.id, channel, send, read_at(person, channel, send, number, self.seed))
                    sent_messages.append(message)
                    self.log.add(message)
                    wait = self._wait(person, channel, send) if self.name == "optichannel+time+wait" else WINDOW
                    # An open of any earlier message before the step's wait ends the journey.
                    opens = [m.opened for m in sent_messages if m.opened is not None]
                    if opens and min(opens) <= send + wait:
                        first_open = min(opens)
                    at = send + wait
                    step += 1
            if self.name == "everything":
                for m in sent_messages:
                    self.log.add(m)
            opens = [m.opened for m in sent_messages if m.opened is not None]
            result.messages += len(sent_messages)
            result.cost += sum(COSTS[m.channel] for m in sent_messages)
            result.sms += sum(m.channel == "sms" for m in sent_messages)
            if opens:
                result.reacted += 1
                result.hours.append((min(opens) - start).total_seconds() / 3600)
        return result


def run(
    customers: int,
    weeks: int,
    seed: int,
    params: RoutingParams,
    ceiling: float | None = None,
    strategies: tuple[str, ...] | None = None,
) -> dict[str, Any]:
    """Every strategy over the same population and the same seed; the numbers of one run."""
    people = population(customers, np.random.default_rng(seed))
    out: dict[str, Any] = {"customers": customers, "weeks": weeks, "seed": seed, "ceiling": ceiling, "strategies": {}}
    for name in strategies or STRATEGIES:
        clock = time.perf_counter()
        strategy = Strategy(name, people, seed, params, ceiling)
        by_week = [strategy.week(w) for w in range(weeks)]
        total = Week(
            journeys=sum(w.journeys for w in by_week),
            reacted=sum(w.reacted for w in by_week),
            cost=sum(w.cost for w in by_week),
            messages=sum(w.messages for w in by_week),
            sms=sum(w.sms for w in by_week),
            hours=[h for w in by_week for h in w.hours],
        )
        out["strategies"][name] = {
            "total": total.summary(),
            "by_week": [w.summary() for w in by_week],
            "seconds": round(time.perf_counter() - clock, 1),
        }
    fixed = out["strategies"]["fixed"]["total"]
    out["vs_fixed"] = {
        name: {
            "reaction_rate": round(s["total"]["reaction_rate"] / fixed["reaction_rate"], 3),
            "cost_per_reaction": round(s["total"]["cost_per_reaction"] / fixed["cost_per_reaction"], 3),
        }
        for name, s in out["strategies"].items()
    }
    return out


def pooled_by_week(runs: list[dict[str, Any]]) -> dict[str, list[dict[str, float]]]:
    """Per strategy and week, over every seed: cost per reaction, reaction rate, and both against fixed."""
    weeks = runs[0]["weeks"]
    out: dict[str, list[dict[str, float]]] = {}
    for name in runs[0]["strategies"]:
        rows = []
        for w in range(weeks):

            def total(strategy: str, key: str, week: int = w) -> float:
                return sum(float(r["strategies"][strategy]["by_week"][week][key]) for r in runs)

            cost, journeys = total(name, "cost"), total(name, "journeys")
            reacted = sum(
                r["strategies"][name]["by_week"][w]["reaction_rate"] * r["strategies"][name]["by_week"][w]["journeys"]
                for r in runs
            )
            fixed_reacted = sum(
                r["strategies"]["fixed"]["by_week"][w]["reaction_rate"]
                * r["strategies"]["fixed"]["by_week"][w]["journeys"]
                for r in runs
            )
            cpr = cost / reacted if reacted else float("inf")
            fixed_cpr = total("fixed", "cost") / fixed_reacted if fixed_reacted else float("inf")
            rows.append(
                {
                    "week": w + 1,
                    "cost_per_reaction": round(cpr, 4),
                    "reaction_rate": round(reacted / journeys, 3),
                    "cost_per_reaction_vs_fixed": round(cpr / fixed_cpr, 3),
                    "reaction_rate_vs_fixed": round(reacted / fixed_reacted, 3) if fixed_reacted else 0.0,
                }
            )
        out[name] = rows
    return out


def chart(runs: list[dict[str, Any]], weekly: dict[str, list[dict[str, float]]], path: Path) -> None:
    """Cost per reaction by week per strategy (all seeds pooled), and cost and reaction rate against fixed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, middle, right) = plt.subplots(1, 3, figsize=(17, 4.8))
    for name, rows in weekly.items():
        style = "--" if name.startswith("oracle") else "-"
        weeks = [r["week"] for r in rows]
        left.plot(weeks, [r["cost_per_reaction"] for r in rows], style, marker="o", ms=3, label=name)
        middle.plot(weeks, [r["cost_per_reaction_vs_fixed"] for r in rows], style, marker="o", ms=3, label=name)
        right.plot(weeks, [r["reaction_rate_vs_fixed"] for r in rows], style, marker="o", ms=3, label=name)
    seeds = ", ".join(str(r["seed"]) for r in runs)
    left.set_title(f"Cost per reaction by week ({runs[0]['customers']} customers, seeds {seeds})")
    left.set_xlabel("week of simulated time")
    left.set_ylabel("cost per reaction")
    middle.axhline(0.7, color="grey", lw=0.8, ls=":")
    middle.set_title("cost per reaction against fixed (goal: <= 0.7)")
    middle.set_xlabel("week of simulated time")
    middle.set_ylabel("x fixed cascade")
    right.axhline(1.0, color="grey", lw=0.8, ls=":")
    right.set_title("reaction rate against fixed (goal: >= 1)")
    right.set_xlabel("week of simulated time")
    right.set_ylabel("x fixed cascade")
    right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def table(weekly: dict[str, list[dict[str, float]]]) -> str:
    """The weekly cost per reaction as a Markdown table (README), with the ratio to fixed in brackets."""
    names = list(weekly)
    lines = ["| week | " + " | ".join(names) + " |", "|---:|" + "---:|" * len(names)]
    for w in range(len(weekly[names[0]])):
        cells = []
        for name in names:
            row = weekly[name][w]
            cells.append(f"{row['cost_per_reaction']:.4f} ({row['cost_per_reaction_vs_fixed']:.2f}x)")
        lines.append(f"| {w + 1} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    """Run the seeds, print the ratios, write routing_fast.json, the chart and the weekly table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=400)
    parser.add_argument("--weeks", type=int, default=12)
    parser.add_argument("--seeds", type=int, nargs="+", default=[7])
    parser.add_argument("--exploration", type=float, default=RoutingParams().exploration)
    parser.add_argument(
        "--ceiling", type=float, default=CEILING, help="max_cost_per_reaction of the +ceiling strategies"
    )
    parser.add_argument(
        "--off-hour",
        type=float,
        default=DEFAULT_OFF_HOUR_FACTOR,
        help="share of the chance left to a message that arrives off the customer's hour (sensitivity check)",
    )
    parser.add_argument("--strategies", nargs="+", choices=STRATEGIES, default=None, help="fixed is always run")
    args = parser.parse_args()
    global OFF_HOUR_FACTOR
    OFF_HOUR_FACTOR = args.off_hour
    params = RoutingParams(exploration=args.exploration)
    chosen = None if args.strategies is None else tuple(s for s in STRATEGIES if s == "fixed" or s in args.strategies)
    runs = []
    for seed in args.seeds:
        data = run(args.customers, args.weeks, seed, params, args.ceiling, chosen)
        runs.append(data)
        for name, s in data["strategies"].items():
            t = s["total"]
            print(
                f"seed {seed} {name:24s} rate {t['reaction_rate']:.3f} cost/reaction {t['cost_per_reaction']:.4f}"
                f" sms/journey {t['sms_per_journey']:.3f} vs fixed {data['vs_fixed'][name]} ({s['seconds']} s)",
                flush=True,
            )
    weekly = pooled_by_week(runs)
    RESULTS.mkdir(exist_ok=True)
    if args.strategies is None and args.off_hour == DEFAULT_OFF_HOUR_FACTOR and args.ceiling == CEILING:
        # Only the full, default run writes the files the README's figures come from.
        (RESULTS / "routing_fast.json").write_text(json.dumps({"runs": runs, "by_week_pooled": weekly}, indent=1))
        chart(runs, weekly, RESULTS / "routing_fast.png")
        (RESULTS / "routing_fast_weeks.md").write_text(table(weekly) + "\n")
    print(table(weekly))
    last = min(4, args.weeks)
    for name, rows in weekly.items():
        tail = rows[-last:]
        cost = np.mean([r["cost_per_reaction_vs_fixed"] for r in tail])
        rate = np.mean([r["reaction_rate_vs_fixed"] for r in tail])
        print(f"{name}: last {last} weeks, cost per reaction {cost:.3f}x fixed, reaction rate {rate:.3f}x fixed")


if __name__ == "__main__":
    main()

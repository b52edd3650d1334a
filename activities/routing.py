"""Routing activities: which channel a step uses (optichannel) and how long it waits (adaptive).

All scoring happens here, never in the workflow: the workflow records the answer, so a
replay gives the same decision whatever the delivery log says by then.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio import activity

from cascade.infra.db import Database, insert_ignoring_conflicts
from cascade.infra.logging import get_logger
from cascade.infra.settings import Settings
from cascade.profiles.contacts import load_reachability
from cascade.routing.history import channel_history, reaction_delays
from cascade.routing.scoring import (
    MODEL_VERSION,
    ChannelOption,
    RoutingInput,
    RoutingParams,
    decision_seed,
    rank_channels,
)
from cascade.routing.timing import plan_send_time, segment_of
from cascade.routing.waiting import adaptive_wait
from models.journey import ChannelName
from models.routing import (
    ChannelRank,
    ChooseChannelInput,
    ChooseChannelResult,
    ChooseSendTimeInput,
    ChooseSendTimeResult,
    ChooseWaitInput,
    ChooseWaitResult,
)
from models.tables import Customer, RoutingDecision

log = get_logger(__name__)


class RoutingActivities:
    """Routing decisions, bound to a database and settings (costs, exploration, segment attribute)."""

    def __init__(self, db: Database, settings: Settings) -> None:
        self._db = db
        self._settings = settings

    def _since(self, at: datetime) -> datetime:
        """The oldest delivery that still teaches the models.

        The delivery log is stamped with the wall clock and decisions with the workflow's
        clock; they agree in production, but a time-skipping test server runs ahead, so
        the earlier of the two anchors the window.
        """
        return min(at, datetime.now(UTC)) - timedelta(days=self._settings.routing_history_days)

    @activity.defn
    async def choose_channel(self, input: ChooseChannelInput) -> ChooseChannelResult:
        """Rank the step's pool by expected cost per reaction for this customer; record the decision.

        Unusable channels (no contact point, no consent, unsubscribed, dead address) are
        left out with their reason. The stated preferred channel, the customer's segment
        and their recent reactions feed the model (cascade/routing/scoring.py). The
        Thompson draw is seeded by the step's idempotency key, so a retry decides the same.
        """
        async with self._db.session() as session:
            result = await self._rank(session, input)
            await self._record(session, input, result)
        log.info(
            "routing.chosen",
            customer_id=input.customer_id,
            workflow_id=input.workflow_id,
            step=input.step,
            chosen=result.chosen,
            summary=result.summary,
            at=input.at.isoformat(),
        )
        return result

    async def rank(
        self, customer_id: str, channels: list[ChannelName], at: datetime, max_cost_per_reaction: float | None = None
    ) -> ChooseChannelResult:
        """The ranking `choose_channel` would make now, recorded nowhere (`cascade routing explain`)."""
        probe = ChooseChannelInput(
            customer_id=customer_id,
            journey="explain",
            workflow_id="explain",
            run_id="explain",
            step=0,
            idempotency_key=f"explain/{customer_id}",
            channels=channels,
            at=at,
            max_cost_per_reaction=max_cost_per_reaction,
        )
        async with self._db.session() as session:
            return await self._rank(session, probe)

    async def _rank(self, session: AsyncSession, input: ChooseChannelInput) -> ChooseChannelResult:
        settings = self._settings
        unusable: dict[str, str] = {}
        options: list[ChannelOption] = []
        preferred: str | None = None
        segment: tuple[str, str] | None = None
        for channel in input.channels:
            reach = await load_reachability(session, input.customer_id, channel.value, input.topic)
            if reach.customer is not None:
                preferred = reach.customer.preferred_channel
                segment = segment_of(reach.customer, settings.routing_segment_attribute)
            if not reach.usable:
                unusable[channel.value] = reach.reason or "not usable"
                continue
            options.append(ChannelOption(channel=channel.value, cost=settings.channel_costs.get(channel.value, 0.0)))
        if not options:
            return ChooseChannelResult(
                chosen=None,
                summary="no usable channel: " + "; ".join(f"{c}: {why}" for c, why in unusable.items()),
                unusable=unusable,
                model_version=MODEL_VERSION,
            )
        conn = await session.connection()
        # A conversion is not on the delivery log; a click is the nearest it records.
        awaited = {ch: ("clicked" if r == "converted" else r.value) for ch, r in input.await_reaction.items()}
        reactions = {o.channel: awaited.get(o.channel, "opened") for o in options}
        since = self._since(input.at)
        history = await channel_history(conn, input.customer_id, reactions, since, segment)
        decision = rank_channels(
            RoutingInput(
                options=options,
                own=history.own,
                segment=history.segment,
                population=history.population,
                prior_strength=history.prior_strength,
                preferred_channel=preferred,
                last_reaction_at=history.last_reaction_at,
                now=input.at,
                seed=decision_seed(input.idempotency_key),
                max_cost_per_reaction=input.max_cost_per_reaction,
            ),
            RoutingParams(exploration=settings.routing_exploration),
        )
        return ChooseChannelResult(
            chosen=ChannelName(decision.chosen) if decision.chosen else None,
            summary=decision.summary + ("; explored" if decision.explored else ""),
            ranked=[
                ChannelRank(
                    channel=ChannelName(s.channel),
                    p_reaction=s.p_reaction,
                    cost=s.cost,
                    expected_cost_per_reaction=s.expected_cost_per_reaction,
                    reason=s.reason,
                )
                for s in decision.ranked
            ],
            unusable=unusable,
            over_ceiling={
                s.channel: f"{s.expected_cost_per_reaction:.3f} per expected reaction"
                f" above max_cost_per_reaction {input.max_cost_per_reaction:.3f}"
                for s in decision.ranked
                if s.over_ceiling and input.max_cost_per_reaction is not None
            },
            explored=decision.explored,
            model_version=decision.model_version,
        )

    async def _record(self, session: AsyncSession, input: ChooseChannelInput, result: ChooseChannelResult) -> None:
        """The decision's row, keyed like the step's delivery; a retry's second insert changes nothing."""
        await session.exec(
            insert_ignoring_conflicts(self._db, RoutingDecision)
            .values(
                idempotency_key=input.idempotency_key,
                workflow_id=input.workflow_id,
                journey=input.journey,
                step=input.step,
                customer_id=input.customer_id,
                chosen=result.chosen.value if result.chosen else None,
                explored=result.explored,
                summary=result.summary[:2000],
                ranking=[r.model_dump(mode="json") for r in result.ranked],
                model_version=result.model_version,
                decided_at=input.at,
            )
            .on_conflict_do_nothing()
        )

    @activity.defn
    async def choose_wait(self, input: ChooseWaitInput) -> ChooseWaitResult:
        """The wait before escalating: this customer's (shrunk toward the channel's) reaction-delay percentile."""
        since = self._since(input.at)
        async with self._db.session() as session:
            conn = await session.connection()
            own = await reaction_delays(conn, input.channel.value, input.reaction.value, input.customer_id, since)
            channel = await reaction_delays(conn, input.channel.value, input.reaction.value, None, since)
        bounds = input.bounds
        decision = adaptive_wait(
            own,
            channel,
            default=min(max(bounds.default, bounds.min), bounds.max),
            minimum=bounds.min,
            maximum=bounds.max,
            percentile=bounds.percentile,
        )
        return ChooseWaitResult(wait=decision.wait, source=decision.source, reason=decision.reason)

    @activity.defn
    async def choose_send_time(self, input: ChooseSendTimeInput) -> ChooseSendTimeResult:
        """The hour this customer reacts (shrunk toward their segment's), in the window, outside quiet hours."""
        quiet = []
        if input.quiet_hours is not None and (
            input.quiet_hours.channels is None or input.channel in input.quiet_hours.channels
        ):
            quiet.append(input.quiet_hours)
        async with self._db.session() as session:
            customer = await session.get(Customer, input.customer_id)
            if customer is None:
                return ChooseSendTimeResult(send_at=input.at, source="none", reason="unknown customer: now")
            conn = await session.connection()
            decision = await plan_send_time(
                conn,
                customer,
                segment_attribute=self._settings.routing_segment_attribute,
                at=input.at,
                window=input.window,
                quiet=quiet,
                history=input.at - self._since(input.at),
            )
        return ChooseSendTimeResult(send_at=decision.send_at, source=decision.source, reason=decision.reason)

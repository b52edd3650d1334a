"""Activities of the cascade journey: is a contact usable, and send one step's message."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta

from sqlalchemy import func, or_
from sqlmodel import col, select, update
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.contacts import load_reachability
from activities.rules import (
    cap_frees_at,
    customer_zone,
    describe,
    failed_condition,
    quiet_hours_end,
    stay_channels,
)
from channels.base import Button, Channel, OutboundMessage, PermanentSendError, TransientSendError
from core.db import Database, insert_ignoring_conflicts
from core.logging import get_logger
from core.profiles import mark_contact_point, template_fields
from core.settings import Settings
from core.templates import TemplateRenderError, render_content
from core.tracking import add_tracking, save_tracking, unsubscribe_link
from models.activities import (
    CheckContactInput,
    CheckContactResult,
    SendMessageInput,
    SendMessageResult,
    StepRules,
)
from models.journey import ChannelName
from models.tables import Customer, Delivery, DeliveryStatus, EngagementEvent, Topic, utcnow

_ALREADY_SENT = {
    DeliveryStatus.SENT,
    DeliveryStatus.DELIVERED,
    DeliveryStatus.OPENED,
    DeliveryStatus.CLICKED,
}


def _finished_result(row: Delivery) -> SendMessageResult | None:
    """The result an earlier attempt already reached for this delivery, if it finished."""
    if row.status in _ALREADY_SENT:
        return SendMessageResult(status="sent", message_id=row.provider_message_id, cost=row.cost, duplicate=True)
    if row.status == DeliveryStatus.FAILED:
        return SendMessageResult(status="failed", reason=row.failure_reason)
    return None


class JourneyActivities:
    """The side effects of a journey, bound to a database, channels and settings."""

    def __init__(self, db: Database, channels: Mapping[str, Channel], settings: Settings) -> None:
        self._db = db
        self._channels = channels
        self._settings = settings

    @activity.defn
    async def check_contact(self, input: CheckContactInput) -> CheckContactResult:
        """Whether the customer can be messaged on the channel now (valid, consented)."""
        async with self._db.session() as session:
            reach = await load_reachability(session, input.customer_id, input.channel, input.topic)
        if input.channel not in self._channels:
            return CheckContactResult(usable=False, reason=f"channel {input.channel} not configured")
        result = CheckContactResult(
            usable=reach.usable,
            reason=reach.reason,
            contact_point_id=reach.contact.id if reach.contact else None,
        )
        if input.rules is None or not result.usable or reach.customer is None:
            return result
        return await self._apply_rules(input, input.rules, reach.customer, result)

    async def _apply_rules(
        self, input: CheckContactInput, rules: StepRules, customer: Customer, result: CheckContactResult
    ) -> CheckContactResult:
        """Conditions, stay-where-active, quiet hours, frequency cap -- in that order.

        A failed condition or another active channel skips the step; quiet hours and a
        full cap only postpone it (`wake_at`).
        """
        now = rules.at
        if (cond := failed_condition(rules.conditions, template_fields(customer), rules.context, now)) is not None:
            return CheckContactResult(usable=False, reason=f"condition not met: {describe(cond)}")
        if rules.stay_active_days:
            reactions = await self._reactions(customer.id)
            stay = stay_channels(reactions, now, rules.stay_active_days, rules.journey_channels)
            if stay is not None:
                kept = sorted(ChannelName(c) for c in stay)
                result.stay_channels = kept
                if input.channel not in stay:
                    return CheckContactResult(
                        usable=False,
                        reason=f"customer is active on {', '.join(kept)}",
                        stay_channels=kept,
                    )
        if rules.quiet_hours and (
            end := quiet_hours_end(rules.quiet_hours, input.channel, customer_zone(customer.timezone), now)
        ):
            result.usable, result.reason, result.wake_at = False, "quiet hours", end
            return result
        if rules.frequency_cap and input.topic == Topic.MARKETING:
            sent = await self._marketing_sends(customer.id, now - rules.frequency_cap.per)
            if (frees := cap_frees_at(rules.frequency_cap, sent, now)) is not None:
                result.usable, result.wake_at = False, frees
                result.reason = f"frequency cap {rules.frequency_cap.max} per {rules.frequency_cap.per}"
                return result
        return result

    async def _reactions(self, customer_id: str) -> list[tuple[str, datetime]]:
        """(channel, when) of every open/click of the customer, from deliveries and events."""
        reacted = func.coalesce(col(Delivery.clicked_at), col(Delivery.opened_at))
        async with self._db.session() as session:
            connection = await session.connection()
            rows = (
                await connection.execute(
                    select(Delivery.channel, reacted)
                    .where(Delivery.customer_id == customer_id, reacted.is_not(None))
                    .union_all(
                        select(col(EngagementEvent.channel), col(EngagementEvent.occurred_at)).where(
                            EngagementEvent.customer_id == customer_id,
                            col(EngagementEvent.channel).is_not(None),
                            col(EngagementEvent.type).in_(["opened", "clicked"]),
                        )
                    )
                )
            ).all()
        return [(str(channel), at) for channel, at in rows if at is not None]

    async def _marketing_sends(self, customer_id: str, since: datetime) -> list[datetime]:
        """When the customer's marketing messages went out since `since`, over all journeys."""
        async with self._db.session() as session:
            rows = (
                await session.exec(
                    select(Delivery.sent_at).where(
                        Delivery.customer_id == customer_id,
                        Delivery.topic == Topic.MARKETING.value,
                        col(Delivery.sent_at).is_not(None),
                        col(Delivery.sent_at) > since,
                    )
                )
            ).all()
        return [t for t in rows if t is not None]

    @activity.defn
    async def send_message(self, input: SendMessageInput) -> SendMessageResult:
        """Send one step's message exactly once per idempotency key.

        A retry after a crash finds the delivery row: already sent -> the same result,
        nothing sent again; only queued -> the provider call is repeated with the same
        idempotency key, which the provider deduplicates.
        """
        log = get_logger(
            __name__,
            workflow_id=input.workflow_id,
            customer_id=input.customer_id,
            channel=input.channel.value,
            step=input.step,
            attempt=activity.info().attempt,
        )
        async with self._db.session() as session:
            existing = (
                await session.exec(select(Delivery).where(Delivery.idempotency_key == input.idempotency_key))
            ).one_or_none()
            if existing is not None and (finished := _finished_result(existing)) is not None:
                log.info("send.duplicate_suppressed", status=finished.status, message_id=finished.message_id)
                return finished
            reach = await load_reachability(session, input.customer_id, input.channel, input.topic)

        if not reach.usable or reach.contact is None or reach.customer is None:
            # Consent can be withdrawn between the check and the send: never send then.
            log.info("send.skipped", reason=reach.reason)
            return SendMessageResult(status="skipped", reason=reach.reason)

        channel = self._channels.get(input.channel)
        if channel is None:
            raise ApplicationError(f"channel {input.channel} is not configured", non_retryable=True)
        now = utcnow()
        fields = {
            **template_fields(reach.customer),
            **input.context,
            "unsubscribe_url": unsubscribe_link(input, self._settings, now),
        }
        try:
            rendered = render_content(input.content, fields, input.channel.value)
        except TemplateRenderError as exc:
            raise ApplicationError(
                f"template of step {input.step} ({input.channel}): {exc}",
                type="TemplateError",
                non_retryable=True,
            ) from exc

        # Signed click/pixel/unsubscribe links; the originals are kept for the redirect.
        rendered, tracking = add_tracking(rendered, input, self._settings, now)
        await save_tracking(self._db, input.idempotency_key, tracking)

        cost = self._settings.channel_costs.get(input.channel, 0.0)
        # Logged under the surviving profile's id when the journey's customer was merged
        # away, so caps and history see one customer.
        claim = await self._claim(input, reach.customer.id, reach.contact.id, rendered.content_hash)
        if claim is not None:
            log.info("send.duplicate_suppressed", status=claim.status)
            return claim

        message = OutboundMessage(
            channel=input.channel.value,
            to=reach.contact.address,
            body=rendered.body,
            subject=rendered.subject,
            html=rendered.html,
            url=rendered.url,
            title=rendered.title,
            icon=rendered.icon,
            image=rendered.image,
            buttons=tuple(Button(text, url) for text, url in rendered.buttons),
            template_name=rendered.template_name,
            template_language=rendered.template_language,
            template_params=rendered.template_params,
            metadata=(("journey", input.journey), ("step", str(input.step))),
            idempotency_key=input.idempotency_key,
            unsubscribe_url=tracking.unsubscribe_url,
        )
        try:
            receipt = await channel.send(message)
        except PermanentSendError as exc:
            await self._record_permanent_failure(input, reach.contact.id, exc)
            log.warning("send.permanent_failure", reason=exc.reason, contact_status=exc.contact_status)
            return SendMessageResult(status="failed", reason=exc.reason)
        except TransientSendError as exc:
            await self._release(input.idempotency_key)
            log.warning("send.transient_failure", reason=exc.reason, retry_after=exc.retry_after)
            raise ApplicationError(
                f"{input.channel}: {exc.reason}",
                type="TransientSendError",
                next_retry_delay=timedelta(seconds=exc.retry_after) if exc.retry_after else None,
            ) from exc

        cost = receipt.cost or cost
        async with self._db.session() as session:
            await session.exec(
                update(Delivery)
                .where(col(Delivery.idempotency_key) == input.idempotency_key)
                .values(
                    status=DeliveryStatus.SENT,
                    provider_message_id=receipt.provider_message_id,
                    sent_at=utcnow(),
                    cost=cost,
                    claimed_until=None,
                )
            )
        log.info("send.sent", message_id=receipt.provider_message_id, cost=cost, segments=receipt.segments)
        return SendMessageResult(
            status="sent",
            message_id=receipt.provider_message_id,
            cost=cost,
            duplicate=receipt.duplicate,
        )

    async def _claim(
        self, input: SendMessageInput, customer_id: str, contact_point_id: int | None, content_hash: str
    ) -> SendMessageResult | None:
        """Make this attempt the only one that may call the provider for this key.

        None: claimed, go ahead. A result: an earlier attempt already finished it.
        Raises a retryable error while another live attempt holds the claim, so a
        retry racing a slow first attempt never reaches a provider that cannot
        deduplicate. A crashed attempt's claim expires after the send timeout.
        """
        now = utcnow()
        lease = timedelta(seconds=self._settings.send_timeout_seconds * 2)
        async with self._db.session() as session:
            await session.exec(
                insert_ignoring_conflicts(self._db, Delivery)
                .values(
                    idempotency_key=input.idempotency_key,
                    workflow_id=input.workflow_id,
                    run_id=input.run_id,
                    journey=input.journey,
                    step=input.step,
                    customer_id=customer_id,
                    channel=input.channel.value,
                    topic=input.topic.value,
                    contact_point_id=contact_point_id,
                    status=DeliveryStatus.QUEUED,
                    content_hash=content_hash,
                    currency=self._settings.currency,
                )
                .on_conflict_do_nothing(index_elements=["idempotency_key"])
            )
            claimed = await session.exec(
                update(Delivery)
                .where(
                    col(Delivery.idempotency_key) == input.idempotency_key,
                    col(Delivery.status) == DeliveryStatus.QUEUED,
                    or_(col(Delivery.claimed_until).is_(None), col(Delivery.claimed_until) < now),
                )
                .values(claimed_until=now + lease, attempts=col(Delivery.attempts) + 1)
            )
            if claimed.rowcount == 1:
                return None
            row = (await session.exec(select(Delivery).where(Delivery.idempotency_key == input.idempotency_key))).one()
        if (finished := _finished_result(row)) is not None:
            return finished
        raise ApplicationError(
            "another attempt is sending this message; retrying after it finishes",
            type="SendInProgress",
            next_retry_delay=lease,
        )

    async def _release(self, idempotency_key: str) -> None:
        # The provider said "not now": let the next attempt claim at once.
        async with self._db.session() as session:
            await session.exec(
                update(Delivery).where(col(Delivery.idempotency_key) == idempotency_key).values(claimed_until=None)
            )

    async def _record_permanent_failure(
        self, input: SendMessageInput, contact_point_id: int | None, exc: PermanentSendError
    ) -> None:
        async with self._db.session() as session:
            await session.exec(
                update(Delivery)
                .where(col(Delivery.idempotency_key) == input.idempotency_key)
                .values(status=DeliveryStatus.FAILED, failure_reason=exc.reason[:1000], failed_at=utcnow())
            )
            if exc.contact_status is not None:
                # None: the provider refused this message, not the address (e.g. an
                # unknown WhatsApp template); the contact stays usable.
                await mark_contact_point(session, contact_point_id, exc.contact_status, exc.reason)

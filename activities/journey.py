"""Activities of the cascade journey: is a contact usable, and send one step's message."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import structlog
from sqlalchemy import and_, func, or_, text
from sqlmodel import col, delete, select, update
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio import activity
from temporalio.exceptions import ApplicationError

from cascade.content.templates import TemplateRenderError, render_content
from cascade.infra.db import Database, insert_ignoring_conflicts
from cascade.infra.logging import get_logger
from cascade.infra.settings import Settings
from cascade.journeys.rules import (
    cap_frees_at,
    customer_zone,
    describe,
    failed_condition,
    quiet_hours_end,
    stay_channels,
)
from cascade.profiles.contacts import load_reachability
from cascade.profiles.service import mark_contact_point, template_fields
from cascade.tracking.tokens import add_tracking, save_tracking, unsubscribe_link
from channels.base import (
    Button,
    Channel,
    ConfigurationError,
    OutboundMessage,
    PermanentSendError,
    SendReceipt,
    TransientSendError,
    UnknownOutcomeError,
)
from channels.health import failing_channels, record_configuration_error, record_recovery
from models.activities import (
    CheckContactInput,
    CheckContactResult,
    FailureCode,
    SendMessageInput,
    SendMessageResult,
    SettleDeliveryInput,
    SettleDeliveryResult,
    StepRules,
)
from models.journey import ChannelName, FrequencyCap
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
        return SendMessageResult(status="failed", reason=row.failure_code or FailureCode.PROVIDER_REJECTED)
    if row.status == DeliveryStatus.UNKNOWN:
        return _UNKNOWN
    return None


class JourneyActivities:
    """The side effects of a journey, bound to a database, channels and settings."""

    def __init__(self, db: Database, channels: Mapping[str, Channel], settings: Settings) -> None:
        self._db = db
        self._channels = channels
        self._settings = settings
        # Channels with an unresolved configuration error, so a good send can clear it.
        self._failing: set[str] = set()
        self._failing_loaded = False

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
        """When the customer's marketing messages went out since `since`, over all journeys.

        A message whose outcome is `unknown` counts (it may well have arrived), at the
        time it was attempted.
        """
        async with self._db.session() as session:
            rows = (
                await session.exec(
                    select(func.coalesce(col(Delivery.sent_at), col(Delivery.created_at))).where(
                        Delivery.customer_id == customer_id,
                        Delivery.topic == Topic.MARKETING.value,
                        or_(
                            col(Delivery.sent_at) > since,
                            and_(col(Delivery.status) == DeliveryStatus.UNKNOWN, col(Delivery.created_at) > since),
                        ),
                    )
                )
            ).all()
        return [t for t in rows if t is not None]

    @activity.defn
    async def send_message(self, input: SendMessageInput) -> SendMessageResult:
        """Send one step's message at most once per idempotency key.

        A retry finds the delivery row: already sent -> the same result, nothing sent
        again. A row whose last attempt claimed the send and vanished (a crash after the
        provider call, before the result was written) is sent again with the same key
        only on a provider that honours it; on any other it is settled as `unknown`.
        The claim is a lease of the activity's heartbeat timeout, renewed by heartbeats
        while the provider call runs, so it ends when the attempt's worker does.
        """
        info = activity.info()
        log = get_logger(
            __name__,
            workflow_id=input.workflow_id,
            customer_id=input.customer_id,
            channel=input.channel.value,
            step=input.step,
            attempt=info.attempt,
        )
        attempt_time = info.start_to_close_timeout or _DEFAULT_ATTEMPT
        held = _HeldClaim(lease=info.heartbeat_timeout or attempt_time)
        beat = asyncio.create_task(self._heartbeat(input.idempotency_key, held, log))
        try:
            return await self._send(input, held, attempt_time, log)
        finally:
            beat.cancel()

    async def _heartbeat(self, idempotency_key: str, held: _HeldClaim, log: structlog.stdlib.BoundLogger) -> None:
        """Tell Temporal this attempt lives, and keep its claim on the send while it does."""
        interval = max(held.lease.total_seconds() / 3, 0.05)
        while True:
            activity.heartbeat()
            await asyncio.sleep(interval)
            if held.attempt is None:
                continue
            try:
                async with self._db.session() as session:
                    await session.exec(
                        update(Delivery)
                        .where(
                            col(Delivery.idempotency_key) == idempotency_key,
                            col(Delivery.status) == DeliveryStatus.QUEUED,
                            col(Delivery.attempts) == held.attempt,
                        )
                        .values(claimed_until=utcnow() + held.lease)
                    )
            except Exception as exc:  # the send goes on; the lease just is not extended
                log.warning("send.lease_not_renewed", error=type(exc).__name__)

    async def _send(
        self, input: SendMessageInput, held: _HeldClaim, attempt_time: timedelta, log: structlog.stdlib.BoundLogger
    ) -> SendMessageResult:
        channel = self._channels.get(input.channel)
        idempotent = bool(getattr(channel, "idempotent", False))
        async with self._db.session() as session:
            existing = (
                await session.exec(select(Delivery).where(Delivery.idempotency_key == input.idempotency_key))
            ).one_or_none()
            if existing is not None and (finished := _finished_result(existing)) is not None:
                log.info("send.duplicate_suppressed", status=finished.status, message_id=finished.message_id)
                return finished
            # A vanished attempt is settled before consent is looked at again: the
            # message may be out already.
            if (
                existing is not None
                and _dangling(existing, utcnow())
                and not idempotent
                and await _mark_unknown(session, existing, _CRASHED)
            ):
                log.warning("send.outcome_unknown", reason=_CRASHED)
                return _UNKNOWN
            reach = await load_reachability(session, input.customer_id, input.channel, input.topic)

        if not reach.usable or reach.contact is None or reach.customer is None:
            # Consent can be withdrawn between the check and the send: never send then.
            log.info("send.skipped", reason=reach.reason)
            return SendMessageResult(status="skipped", reason=reach.reason)

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
        claim = await self._claim(
            input, reach.customer.id, reach.contact.id, rendered.content_hash, held.lease, idempotent
        )
        if isinstance(claim, SendMessageResult):
            log.info("send.not_claimed", status=claim.status, reason=claim.reason)
            return claim
        held.attempt = claim

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
            # Bounded inside the attempt's time: a call hanging past it would go on
            # renewing the claim for an attempt Temporal has already given up on.
            receipt = await asyncio.wait_for(channel.send(message), timeout=attempt_time.total_seconds() * 0.8)
        except TimeoutError:
            receipt_error: Exception = UnknownOutcomeError("no answer within the attempt's time")
        except (PermanentSendError, TransientSendError, UnknownOutcomeError, ConfigurationError) as exc:
            receipt_error = exc
        else:
            return await self._record_sent(input, receipt, cost, log)
        finally:
            held.attempt = None
        return await self._record_failure(input, reach.contact.id, claim, receipt_error, idempotent, log)

    async def _record_sent(
        self, input: SendMessageInput, receipt: SendReceipt, cost: float, log: structlog.stdlib.BoundLogger
    ) -> SendMessageResult:
        cost = receipt.cost or cost
        async with self._db.session() as session:
            await session.exec(
                update(Delivery)
                .where(
                    col(Delivery.idempotency_key) == input.idempotency_key,
                    # An attempt whose claim ran out may have been settled `unknown` by
                    # another; the provider's answer is the truth.
                    col(Delivery.status).in_([DeliveryStatus.QUEUED, DeliveryStatus.UNKNOWN]),
                )
                .values(
                    status=DeliveryStatus.SENT,
                    provider_message_id=receipt.provider_message_id,
                    sent_at=utcnow(),
                    cost=cost,
                    claimed_until=None,
                )
            )
        if input.channel in await self._failing_channels():
            await record_recovery(self._db, input.channel)
            self._failing.discard(input.channel)
            log.info("channel.recovered")
        log.info("send.sent", message_id=receipt.provider_message_id, cost=cost, segments=receipt.segments)
        return SendMessageResult(
            status="sent",
            message_id=receipt.provider_message_id,
            cost=cost,
            duplicate=receipt.duplicate,
        )

    async def _record_failure(
        self,
        input: SendMessageInput,
        contact_point_id: int | None,
        attempt: int,
        exc: Exception,
        idempotent: bool,
        log: structlog.stdlib.BoundLogger,
    ) -> SendMessageResult:
        """Write what the provider said to the delivery log; tell the workflow only a code.

        Provider texts quote addresses, so they go to the log and the delivery row,
        never into an activity result or error message (both land in the history).
        """
        channel = input.channel.value
        if isinstance(exc, PermanentSendError):
            await self._record_permanent_failure(input, contact_point_id, exc)
            log.warning("send.permanent_failure", reason=exc.reason, contact_status=exc.contact_status)
            return SendMessageResult(status="failed", reason=exc.code)
        if isinstance(exc, ConfigurationError):
            await self._set_status(input.idempotency_key, DeliveryStatus.FAILED, exc.code, exc.reason, failed=True)
            await record_configuration_error(self._db, channel, exc.reason)
            (await self._failing_channels()).add(channel)
            log.error("send.configuration_error", provider_said=exc.reason)
            raise ApplicationError(
                f"{channel}: {exc.code}: the provider refused our credentials or account"
                " (see `python starter.py channels`); not retried",
                type="ChannelConfigurationError",
                non_retryable=True,
            )
        if isinstance(exc, UnknownOutcomeError) and not idempotent:
            await self._set_status(input.idempotency_key, DeliveryStatus.UNKNOWN, exc.code, exc.reason, attempt=attempt)
            log.warning("send.outcome_unknown", reason=exc.reason)
            return _UNKNOWN
        assert isinstance(exc, TransientSendError | UnknownOutcomeError)
        # Nothing was sent (transient), or the provider drops a repeat of this key:
        # let the next attempt claim at once and call again with the same key.
        await self._release(input.idempotency_key, attempt, exc.code, exc.reason)
        retry_after = exc.retry_after if isinstance(exc, TransientSendError) else None
        log.warning("send.transient_failure", reason=exc.reason, code=exc.code, retry_after=retry_after)
        raise ApplicationError(
            f"{channel}: {exc.code}",
            type="SendOutcomeUnknown" if isinstance(exc, UnknownOutcomeError) else "TransientSendError",
            next_retry_delay=timedelta(seconds=retry_after) if retry_after else None,
        )

    async def _failing_channels(self) -> set[str]:
        """Channels with an unresolved configuration error (read once per process)."""
        if self._failing_loaded is False:
            self._failing |= await failing_channels(self._db)
            self._failing_loaded = True
        return self._failing

    async def _claim(
        self,
        input: SendMessageInput,
        customer_id: str,
        contact_point_id: int | None,
        content_hash: str,
        lease: timedelta,
        idempotent: bool,
    ) -> SendMessageResult | int:
        """Make this attempt the only one that may call the provider for this key.

        Returns the attempt number it claimed, or the result when there is nothing to
        send: an earlier attempt finished it, an earlier attempt vanished mid-send on a
        provider without idempotency keys (`unknown`), or the frequency cap is full
        (`postponed`). The cap is counted in the same transaction as the claim, under
        a per-customer lock, so two journeys of one customer cannot both take the last
        slot. Raises a retryable error while another live attempt holds the claim.
        """
        now = utcnow()
        cap = input.frequency_cap if input.topic == Topic.MARKETING else None
        async with self._db.session() as session:
            if cap is not None and not self._db.is_sqlite:
                # One customer's claims one after another; SQLite gets the same from the
                # insert below, which takes the database's single write lock first.
                connection = await session.connection()
                await connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _lock_key(customer_id)})
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
                    variant=input.variant,
                )
                .on_conflict_do_nothing(index_elements=["idempotency_key"])
            )
            row = await _delivery(session, input.idempotency_key)
            if (finished := _finished_result(row)) is not None:
                return finished
            if _dangling(row, now) and not idempotent and await _mark_unknown(session, row, _CRASHED):
                return _UNKNOWN
            if row.claimed_until is None or _aware(row.claimed_until) < now:
                if cap is not None and (postponed := await self._cap_full(session, input, customer_id, cap, now)):
                    if row.attempts == 0:
                        # Nothing was tried yet: no row until the send really starts.
                        await session.exec(
                            delete(Delivery)
                            .where(col(Delivery.id) == row.id, col(Delivery.attempts) == 0)
                            .execution_options(synchronize_session=False)
                        )
                    return postponed
                claimed = await session.exec(
                    update(Delivery)
                    .where(
                        col(Delivery.idempotency_key) == input.idempotency_key,
                        col(Delivery.status) == DeliveryStatus.QUEUED,
                        or_(col(Delivery.claimed_until).is_(None), col(Delivery.claimed_until) < now),
                    )
                    .values(claimed_until=now + lease, attempts=col(Delivery.attempts) + 1)
                    # The row object is re-read below; SQLite's zone-less timestamps
                    # cannot be compared in Python to keep it in step.
                    .execution_options(synchronize_session=False)
                )
                if claimed.rowcount == 1:
                    return (await _delivery(session, input.idempotency_key)).attempts
                row = await _delivery(session, input.idempotency_key)
        if (finished := _finished_result(row)) is not None:
            return finished
        remaining = (_aware(row.claimed_until) - now) if row.claimed_until is not None else lease
        raise ApplicationError(
            "another attempt is sending this message; retrying after it finishes",
            type="SendInProgress",
            next_retry_delay=max(remaining, timedelta(seconds=1)),
        )

    async def _cap_full(
        self, session: AsyncSession, input: SendMessageInput, customer_id: str, cap: FrequencyCap, now: datetime
    ) -> SendMessageResult | None:
        """None if one more marketing message fits the cap now, else `postponed` until it does.

        Counts the customer's marketing sends in the window over all journeys: sent ones,
        `unknown` ones (they may have arrived), and ones another attempt is sending right
        now. When only those in flight fill the cap, their outcome decides: retry shortly.
        """
        at = max(input.at or now, now)
        since = at - cap.per
        rows = (
            await session.exec(
                select(Delivery.status, Delivery.sent_at, Delivery.created_at, Delivery.claimed_until).where(
                    col(Delivery.customer_id) == customer_id,
                    col(Delivery.topic) == Topic.MARKETING.value,
                    col(Delivery.idempotency_key) != input.idempotency_key,
                    or_(
                        col(Delivery.sent_at) > since,
                        and_(col(Delivery.status) == DeliveryStatus.UNKNOWN, col(Delivery.created_at) > since),
                        and_(col(Delivery.status) == DeliveryStatus.QUEUED, col(Delivery.claimed_until) >= now),
                    ),
                )
            )
        ).all()
        settled = [sent_at or created_at for status, sent_at, created_at, _ in rows if status != DeliveryStatus.QUEUED]
        in_flight = [at for status, *_ in rows if status == DeliveryStatus.QUEUED]
        if (frees := cap_frees_at(cap, [*settled, *in_flight], at)) is None:
            return None
        if in_flight and cap_frees_at(cap, settled, at) is None:
            raise ApplicationError(
                "the frequency cap is full only with sends still in flight; retrying when they finish",
                type="SendInProgress",
                next_retry_delay=timedelta(seconds=2),
            )
        return SendMessageResult(status="postponed", reason=f"frequency cap {cap.max} per {cap.per}", wake_at=frees)

    async def _release(self, idempotency_key: str, attempt: int, code: str, reason: str) -> None:
        # Nothing reached the customer: let the next attempt claim at once. The last
        # error stays on the row for whoever looks (the workflow gets only the code).
        async with self._db.session() as session:
            await session.exec(
                update(Delivery)
                .where(
                    col(Delivery.idempotency_key) == idempotency_key,
                    col(Delivery.status) == DeliveryStatus.QUEUED,
                    col(Delivery.attempts) == attempt,
                )
                .values(claimed_until=None, failure_code=code, failure_reason=reason[:1000])
            )

    async def _set_status(
        self,
        idempotency_key: str,
        status: DeliveryStatus,
        code: str,
        reason: str,
        *,
        attempt: int | None = None,
        failed: bool = False,
    ) -> None:
        conditions = [
            col(Delivery.idempotency_key) == idempotency_key,
            col(Delivery.status).in_([DeliveryStatus.QUEUED, DeliveryStatus.UNKNOWN]),
        ]
        if attempt is not None:
            conditions.append(col(Delivery.attempts) == attempt)
        values: dict[str, object] = {
            "status": status,
            "failure_code": code,
            "failure_reason": reason[:1000],
            "claimed_until": None,
        }
        if failed:
            values["failed_at"] = utcnow()
        async with self._db.session() as session:
            await session.exec(update(Delivery).where(*conditions).values(**values))

    async def _record_permanent_failure(
        self, input: SendMessageInput, contact_point_id: int | None, exc: PermanentSendError
    ) -> None:
        async with self._db.session() as session:
            await session.exec(
                update(Delivery)
                .where(
                    col(Delivery.idempotency_key) == input.idempotency_key,
                    col(Delivery.status).in_([DeliveryStatus.QUEUED, DeliveryStatus.UNKNOWN]),
                )
                .values(
                    status=DeliveryStatus.FAILED,
                    failure_code=exc.code,
                    failure_reason=exc.reason[:1000],
                    failed_at=utcnow(),
                    claimed_until=None,
                )
            )
            if exc.contact_status is not None:
                # None: the provider refused this message, not the address (e.g. an
                # unknown WhatsApp template); the contact stays usable.
                await mark_contact_point(session, contact_point_id, exc.contact_status, exc.reason)

    @activity.defn
    async def settle_delivery(self, input: SettleDeliveryInput) -> SettleDeliveryResult:
        """What became of a send, from the delivery log, before a journey calls it failed.

        Called when the send activity gave up (its time ran out, or a non-retryable
        error): the message may have gone out on an attempt whose result was lost. A
        claim still live means an attempt is still running: retried until it ends. A
        claim that ended without a result is settled `unknown` here, once.
        """
        now = utcnow()
        async with self._db.session() as session:
            row = (
                await session.exec(select(Delivery).where(Delivery.idempotency_key == input.idempotency_key))
            ).one_or_none()
            if row is None:
                return SettleDeliveryResult(status="not_sent")
            if (finished := _finished_result(row)) is not None:
                return SettleDeliveryResult(
                    status=finished.status, message_id=finished.message_id, reason=finished.reason
                )
            if row.claimed_until is None:
                # Every attempt so far released its claim: none reached the provider.
                return SettleDeliveryResult(status="not_sent", reason=row.failure_code)
            if _aware(row.claimed_until) >= now:
                raise ApplicationError(
                    "a send attempt is still running",
                    type="SendInProgress",
                    next_retry_delay=max(_aware(row.claimed_until) - now, timedelta(seconds=1)),
                )
            if not await _mark_unknown(session, row, _CRASHED):
                raise ApplicationError("the delivery changed while settling it", type="SendInProgress")
        get_logger(__name__, workflow_id=row.workflow_id, channel=row.channel, step=row.step).warning(
            "send.outcome_unknown", reason=_CRASHED
        )
        return SettleDeliveryResult(status="unknown", reason=FailureCode.OUTCOME_UNKNOWN)


# An attempt's time when Temporal gives none (tests calling the activity directly).
_DEFAULT_ATTEMPT = timedelta(seconds=60)
_CRASHED = "an earlier attempt claimed the send and ended without a result (worker lost mid-send)"
_UNKNOWN = SendMessageResult(status="unknown", reason=FailureCode.OUTCOME_UNKNOWN)


@dataclass
class _HeldClaim:
    """The claim this attempt holds (its attempt number), renewed by the heartbeat loop."""

    lease: timedelta
    attempt: int | None = None


def _aware(value: datetime) -> datetime:
    # SQLite hands timestamps back without their zone; every one we write is UTC.
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _dangling(row: Delivery, now: datetime) -> bool:
    """Claimed by an attempt that neither finished nor released it, and its lease is over."""
    return row.status == DeliveryStatus.QUEUED and row.claimed_until is not None and _aware(row.claimed_until) < now


async def _mark_unknown(session: AsyncSession, row: Delivery, reason: str) -> bool:
    """Settle a dangling claim as `unknown`; False if another attempt changed the row first."""
    result = await session.exec(
        update(Delivery)
        .where(
            col(Delivery.idempotency_key) == row.idempotency_key,
            col(Delivery.status) == DeliveryStatus.QUEUED,
            col(Delivery.attempts) == row.attempts,
            col(Delivery.claimed_until).is_not(None),
        )
        .values(
            status=DeliveryStatus.UNKNOWN,
            failure_code=FailureCode.OUTCOME_UNKNOWN,
            failure_reason=reason,
            claimed_until=None,
        )
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount == 1)


async def _delivery(session: AsyncSession, idempotency_key: str) -> Delivery:
    row = (await session.exec(select(Delivery).where(Delivery.idempotency_key == idempotency_key))).one()
    # A fresh read every time: the session must not answer from its identity map.
    await session.refresh(row)
    return row


def _lock_key(customer_id: str) -> int:
    """A stable signed 64-bit key for pg_advisory_xact_lock, one per customer."""
    return int.from_bytes(hashlib.sha256(f"cascade-cap:{customer_id}".encode()).digest()[:8], "big", signed=True)

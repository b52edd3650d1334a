"""Activities of the cascade journey: is a contact usable, and send one step's message."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog
from sqlmodel import Session, select
from temporalio import activity
from temporalio.exceptions import ApplicationError

from cascade.content.templates import TemplateRenderError, render_content
from cascade.delivery.claims import (
    CRASHED,
    UNKNOWN,
    SendInProgress,
    claim_send,
    dangling,
    finished_result,
    mark_unknown,
    record_permanent_failure,
    record_sent,
    release_claim,
    renew_claim,
    set_status,
    settle,
)
from cascade.infra.db import Database
from cascade.infra.logging import get_logger
from cascade.infra.settings import Settings
from cascade.journeys.rule_queries import customer_reactions, marketing_sends
from cascade.journeys.rules import (
    cap_frees_at,
    customer_zone,
    describe,
    failed_condition,
    quiet_hours_end,
    stay_channels,
)
from cascade.journeys.runs import record_run
from cascade.profiles.contacts import Reachability, load_reachability, reachability
from cascade.profiles.service import template_fields
from cascade.tracking.tokens import add_tracking, save_tracking_in, unsubscribe_link
from channels.base import (
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
    SendMessageInput,
    SendMessageResult,
    SettleDeliveryInput,
    SettleDeliveryResult,
    StepRules,
)
from models.journey import ChannelName
from models.tables import Customer, Delivery, DeliveryStatus, Topic, utcnow


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
        return await customer_reactions(self._db, customer_id)

    async def _marketing_sends(self, customer_id: str, since: datetime) -> list[datetime]:
        return await marketing_sends(self._db, customer_id, since)

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
        """Tell Temporal this attempt lives, and keep its claim on the send while it does.

        The renewal runs beside the beat, never in its way: on a busy database it may
        wait for a connection or SQLite's write lock for longer than the heartbeat
        timeout, and a beat held up behind it would make Temporal give up on (and
        retry) an attempt that is alive and about to send.
        """
        interval = max(held.lease.total_seconds() / 3, 0.05)
        renewal: asyncio.Task[None] | None = None
        try:
            while True:
                # The first beat after an interval, not at once: the heartbeat timeout runs
                # from the attempt's start anyway, and a beat is an RPC and a server write
                # for every send, nearly all of which finish long before the first one is due.
                await asyncio.sleep(interval)
                activity.heartbeat()
                if held.attempt is None or (renewal is not None and not renewal.done()):
                    continue
                renewal = asyncio.create_task(self._renew(idempotency_key, held.attempt, held.lease, log))
        finally:
            if renewal is not None:
                renewal.cancel()

    async def _renew(
        self, idempotency_key: str, attempt: int, lease: timedelta, log: structlog.stdlib.BoundLogger
    ) -> None:
        try:
            await renew_claim(self._db, idempotency_key, attempt, lease)
        except Exception as exc:  # the send goes on; the lease just is not extended
            log.warning("send.lease_not_renewed", error=type(exc).__name__)

    async def _send(
        self, input: SendMessageInput, held: _HeldClaim, attempt_time: timedelta, log: structlog.stdlib.BoundLogger
    ) -> SendMessageResult:
        channel = self._channels.get(input.channel)
        idempotent = bool(getattr(channel, "idempotent", False))
        found = await self._db.transaction(_read_for_send, input, idempotent)
        if isinstance(found, _SettledNow):
            log.warning("send.outcome_unknown", reason=CRASHED)
            return UNKNOWN
        if isinstance(found, SendMessageResult):
            log.info("send.duplicate_suppressed", status=found.status, message_id=found.message_id)
            return found
        reach = found

        if channel is None and input.unchecked:
            # What the contact check says of it: the step is skipped, the cascade goes on.
            log.info("send.skipped", reason="channel not configured")
            await self._record_run(input)
            return SendMessageResult(status="skipped", reason=f"channel {input.channel} not configured")
        if not reach.usable or reach.contact is None or reach.customer is None:
            # Consent can be withdrawn between the check and the send: never send then.
            log.info("send.skipped", reason=reach.reason)
            await self._record_run(input)
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

        def with_the_claim(session: Session) -> None:
            # The tracking row (and the run's row, lean steps) in the claim's transaction.
            save_tracking_in(session, self._db, input.idempotency_key, tracking)
            if input.record_run is not None:
                record_run(session, self._db, input.record_run)

        cost = self._settings.channel_costs.get(input.channel, 0.0)
        # Logged under the surviving profile's id when the journey's customer was merged
        # away, so caps and history see one customer.
        claim = await self._claim(
            input, reach.customer.id, reach.contact.id, rendered.content_hash, held.lease, idempotent, with_the_claim
        )
        if isinstance(claim, SendMessageResult):
            log.info("send.not_claimed", status=claim.status, reason=claim.reason)
            return claim
        held.attempt = claim

        message = OutboundMessage.of(
            rendered,
            channel=input.channel.value,
            to=reach.contact.address,
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
        await record_sent(self._db, input.idempotency_key, receipt.provider_message_id, cost)
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
            await set_status(self._db, input.idempotency_key, DeliveryStatus.FAILED, exc.code, exc.reason, failed=True)
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
            await set_status(
                self._db, input.idempotency_key, DeliveryStatus.UNKNOWN, exc.code, exc.reason, attempt=attempt
            )
            log.warning("send.outcome_unknown", reason=exc.reason)
            return UNKNOWN
        assert isinstance(exc, TransientSendError | UnknownOutcomeError)
        # Nothing was sent (transient), or the provider drops a repeat of this key:
        # let the next attempt claim at once and call again with the same key.
        await release_claim(self._db, input.idempotency_key, attempt, exc.code, exc.reason)
        retry_after = exc.retry_after if isinstance(exc, TransientSendError) else None
        log.warning("send.transient_failure", reason=exc.reason, code=exc.code, retry_after=retry_after)
        raise ApplicationError(
            f"{channel}: {exc.code}",
            type="SendOutcomeUnknown" if isinstance(exc, UnknownOutcomeError) else "TransientSendError",
            next_retry_delay=timedelta(seconds=retry_after) if retry_after else None,
        )

    async def _record_run(self, input: SendMessageInput) -> None:
        """The journey run's row, when this send was to write it and sends nothing (lean steps)."""
        if input.record_run is not None:
            await self._db.transaction(record_run, self._db, input.record_run)

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
        also: Callable[[Session], None] | None = None,
    ) -> SendMessageResult | int:
        """The claim protocol (cascade/delivery/claims.py); a live claim elsewhere is a retry."""
        try:
            return await claim_send(
                self._db,
                input,
                customer_id,
                contact_point_id,
                content_hash,
                lease,
                idempotent,
                self._settings.currency,
                also,
            )
        except SendInProgress as exc:
            raise _in_progress(exc) from None

    async def _record_permanent_failure(
        self, input: SendMessageInput, contact_point_id: int | None, exc: PermanentSendError
    ) -> None:
        await record_permanent_failure(
            self._db, input.idempotency_key, contact_point_id, exc.code, exc.reason, exc.contact_status
        )

    @activity.defn
    async def settle_delivery(self, input: SettleDeliveryInput) -> SettleDeliveryResult:
        """What became of a send, from the delivery log, before a journey calls it failed.

        Called when the send activity gave up (its time ran out, or a non-retryable
        error): the message may have gone out on an attempt whose result was lost. A
        claim still live means an attempt is still running: retried until it ends. A
        claim that ended without a result is settled `unknown` here, once.
        """
        try:
            result, settled = await settle(self._db, input.idempotency_key)
        except SendInProgress as exc:
            raise _in_progress(exc) from None
        if settled is not None:
            get_logger(__name__, workflow_id=settled.workflow_id, channel=settled.channel, step=settled.step).warning(
                "send.outcome_unknown", reason=CRASHED
            )
        return result


class _SettledNow:
    """The send's first read settled a vanished attempt `unknown` (an already `unknown` row is a duplicate)."""


def _read_for_send(
    session: Session, input: SendMessageInput, idempotent: bool
) -> Reachability | SendMessageResult | _SettledNow:
    """The send's first look, in one transaction: an earlier attempt's result, or the contact to use.

    A vanished attempt is settled (`unknown`) before consent is looked at again: the
    message may be out already.
    """
    existing = session.exec(select(Delivery).where(Delivery.idempotency_key == input.idempotency_key)).one_or_none()
    if existing is not None and (finished := finished_result(existing)) is not None:
        return finished
    if (
        existing is not None
        and dangling(existing, utcnow())
        and not idempotent
        and mark_unknown(session, existing, CRASHED)
    ):
        return _SettledNow()
    return reachability(session, input.customer_id, input.channel, input.topic)


# An attempt's time when Temporal gives none (tests calling the activity directly).
_DEFAULT_ATTEMPT = timedelta(seconds=60)


@dataclass
class _HeldClaim:
    """The claim this attempt holds (its attempt number), renewed by the heartbeat loop."""

    lease: timedelta
    attempt: int | None = None


def _in_progress(exc: SendInProgress) -> ApplicationError:
    """Another attempt holds the claim: a retryable error, after the time the claim says."""
    return ApplicationError(exc.reason, type="SendInProgress", next_retry_delay=exc.retry_after)

"""Inputs and results of the activities a journey calls."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field

from models.journey import ChannelName, Condition, FrequencyCap, MessageContent, QuietHours
from models.runs import RecordRunStartedInput
from models.tables import Topic


class FailureCode(StrEnum):
    """Why a send did not (certainly) reach the customer, as the workflow records it.

    Provider texts stay in the delivery log (`failure_reason`, which erasure scrubs):
    they quote addresses ("550 5.1.1 <ann@example.com>: no such user"), and workflow
    histories must not carry personal data.
    """

    BOUNCED = "bounced"
    INVALID_ADDRESS = "invalid_address"
    BLOCKED = "blocked"
    UNSUBSCRIBED = "unsubscribed"
    # The provider refused this message (template, length, content), not the address.
    PROVIDER_REJECTED = "provider_rejected"
    RATE_LIMITED = "rate_limited"
    # 5xx, refused connections, timeouts before the request went out.
    PROVIDER_UNAVAILABLE = "provider_unavailable"
    # Our token, account or sender was refused: an operator must act.
    CONFIGURATION_ERROR = "configuration_error"
    # The request may have reached the provider; nobody knows (recorded `unknown`).
    OUTCOME_UNKNOWN = "outcome_unknown"
    TEMPLATE_ERROR = "template_error"


class StepRules(BaseModel):
    """The rules a step obeys besides consent, with the workflow's clock."""

    at: datetime = Field(description="workflow.now(): the rules judge the journey's time")
    conditions: list[Condition] = Field(default_factory=list)
    context: dict[str, Any] = Field(default_factory=dict, description="Event data the conditions may test")
    frequency_cap: FrequencyCap | None = None
    quiet_hours: QuietHours | None = None
    stay_active_days: int | None = None
    journey_channels: list[ChannelName] = Field(default_factory=list)


# StepRules comes first: a model whose field names a class defined after it is only built
# on first use, by looking the name up in sys.modules, and inside the workflow sandbox
# that lookup fails when the module was imported outside it (workflows passed through):
# "CheckContactInput is not fully defined", a workflow task failing for ever.
class CheckContactInput(BaseModel):
    """Is the customer reachable on `channel` right now?"""

    customer_id: str
    channel: ChannelName
    topic: Topic = Topic.MARKETING
    rules: StepRules | None = Field(default=None, description="Step rules to apply (None: contact only)")


class CheckContactResult(BaseModel):
    """Usable or not, and why not. No address: personal data stays out of the history.

    `wake_at` set: not now, but try again then (quiet hours, a full frequency cap) --
    the workflow sleeps on a durable timer instead of failing or skipping.
    """

    usable: bool
    reason: str | None = None
    contact_point_id: int | None = None
    wake_at: datetime | None = None
    stay_channels: list[ChannelName] | None = Field(
        default=None, description="The channels the customer is kept on (stay where active)"
    )


class SendMessageInput(BaseModel):
    """Send one step's message; `idempotency_key` makes every retry the same message."""

    idempotency_key: str
    workflow_id: str
    run_id: str
    journey: str
    step: int
    customer_id: str
    channel: ChannelName
    topic: Topic = Topic.MARKETING
    content: MessageContent
    context: dict[str, Any] = Field(default_factory=dict)
    frequency_cap: FrequencyCap | None = Field(
        default=None, description="Checked again atomically with the send's claim (marketing only)"
    )
    at: datetime | None = Field(default=None, description="workflow.now() when the send was scheduled")
    variant: str | None = Field(default=None, description="The journey's experiment arm (delivery row, utm_content)")
    record_run: RecordRunStartedInput | None = Field(
        default=None, description="The journey run's start, written by this send (lean steps: no activity of its own)"
    )
    unchecked: bool = Field(
        default=False,
        description="No contact check ran before this send: a channel without an adapter is a skipped step, "
        "as the check would have said, not a failed send",
    )


class SendMessageResult(BaseModel):
    """What became of one send.

    `sent`; `failed` (permanent: the contact point was marked, or the message refused);
    `skipped` (consent gone since the check); `unknown` (the provider may have it, and
    it cannot be asked again without risking a second message); `postponed` (another
    journey of the customer filled the frequency cap first: try again at `wake_at`).
    `reason` is a FailureCode (or the template error), never a provider's text.
    """

    status: str
    message_id: str | None = None
    reason: str | None = None
    cost: float = 0.0
    duplicate: bool = Field(default=False, description="True when an earlier attempt had sent it")
    wake_at: datetime | None = None


class SettleDeliveryInput(BaseModel):
    """Ask the delivery log what became of one send, by its idempotency key."""

    idempotency_key: str


class SettleDeliveryResult(BaseModel):
    """The delivery log's answer: `sent`, `unknown`, `failed` or `not_sent` (no attempt reached it).

    An attempt that claimed the send and then vanished (a crash after the provider
    call, before the result was written) is settled as `unknown` here, once.
    """

    status: str
    message_id: str | None = None
    reason: str | None = None

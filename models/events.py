"""Engagement events: signal inputs of a journey and the webhook request that carries them."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, StrictBool, model_validator

from models.ids import (
    MAX_AMOUNT,
    MAX_POINTS_PER_EVENT,
    BoundedJson,
    CustomerId,
    NestedValueError,
    VisibleId,
    check_event_time,
)


class EngagementType(StrEnum):
    """What a provider, our tracking links or the shop reported about a message."""

    DELIVERED = "delivered"
    OPENED = "opened"
    CLICKED = "clicked"
    CONVERTED = "converted"
    UNSUBSCRIBED = "unsubscribed"
    BOUNCED = "bounced"
    COMPLAINED = "complained"
    FAILED = "failed"


class EngagementInput(BaseModel):
    """Signal input: one event, tied to the step whose message it concerns when known."""

    type: EngagementType
    step: int | None = Field(default=None, ge=0, description="Step index of the message, if known")
    message_id: str | None = None
    occurred_at: datetime | None = None
    event_id: str | None = Field(
        default=None,
        max_length=300,
        description="Identifies the event: a journey ignores an id it has already seen (signals are at least once)",
    )


class CancelInput(BaseModel):
    """Signal input: stop the journey now, with a reason for the record."""

    reason: str = "cancelled by operator"


class EngagementRequest(BaseModel):
    """Body of POST /v1/engagement: name the message or the journey, and what happened."""

    model_config = ConfigDict(extra="forbid")

    event: EngagementType
    message_id: VisibleId | None = Field(
        default=None, min_length=1, max_length=256, description="Provider message id from the delivery log"
    )
    workflow_id: VisibleId | None = Field(
        default=None, min_length=1, max_length=512, description="Journey workflow id (e.g. for conversions)"
    )
    occurred_at: Annotated[datetime | None, AfterValidator(check_event_time)] = Field(
        default=None, description="When it happened (default: now); 1970 to one day ahead"
    )

    @model_validator(mode="after")
    def _exactly_one_target(self) -> EngagementRequest:
        if (self.message_id is None) == (self.workflow_id is None):
            raise ValueError("give exactly one of message_id or workflow_id")
        return self


class EngagementResponse(BaseModel):
    """Answer of POST /v1/engagement."""

    workflow_id: str
    step: int | None
    signalled: bool
    detail: str


# Event types the engine understands; any other lower-case name is a custom event.
KNOWN_APP_EVENTS = ("purchase", "cart_updated", "page_viewed", "registered")


class AppEvent(BaseModel):
    """One event from the shop's application (POST /v1/events).

    `event_id` is the shop's own id for the event: sending it again (a retry) stores and
    signals nothing new. `purchase` is a conversion unless `conversion` says otherwise;
    a custom event is one when `conversion` is true.
    """

    model_config = ConfigDict(extra="forbid")

    event_id: VisibleId = Field(min_length=1, max_length=200, pattern=r"^\S+$", description="The sender's unique id")
    customer_id: CustomerId
    type: str = Field(
        pattern=r"^[a-z][a-z0-9_]{0,31}$",
        description="purchase, cart_updated, page_viewed, registered, or a custom name",
        examples=["purchase"],
    )
    occurred_at: Annotated[AwareDatetime | None, AfterValidator(check_event_time)] = Field(
        default=None, description="When it happened (default: now); 1970 to one day ahead"
    )
    properties: BoundedJson = Field(
        default_factory=dict,
        description=(
            "order_id, amount, currency, url ... Every number must be finite and at most 2^53-1 in magnitude; "
            f"for a purchase, amount is 0..{MAX_AMOUNT} and loyalty_points an integer 0..{MAX_POINTS_PER_EVENT}"
        ),
    )
    # Strict: 0, 1, "true" are refused; a conversion flag must be a JSON boolean.
    conversion: StrictBool | None = Field(
        default=None, description="Ends journeys as converted (default: purchase only)"
    )

    @model_validator(mode="after")
    def _purchase_properties(self) -> AppEvent:
        if self.type == "purchase":
            amount = self.properties.get("amount")
            if amount is not None and (
                isinstance(amount, bool) or not isinstance(amount, int | float) or not 0 <= amount <= MAX_AMOUNT
            ):
                raise NestedValueError(("properties", "amount"), f"must be a number from 0 to {MAX_AMOUNT}")
            points = self.properties.get("loyalty_points")
            if points is not None and (
                isinstance(points, bool) or not isinstance(points, int) or not 0 <= points <= MAX_POINTS_PER_EVENT
            ):
                raise NestedValueError(
                    ("properties", "loyalty_points"), f"must be an integer from 0 to {MAX_POINTS_PER_EVENT}"
                )
        return self

    @property
    def is_conversion(self) -> bool:
        """Whether this event ends journeys that wait for a conversion."""
        return self.conversion if self.conversion is not None else self.type == "purchase"


class AppEventBatch(BaseModel):
    """Body of POST /v1/events/batch: up to 1000 events, processed in order."""

    model_config = ConfigDict(extra="forbid")

    events: list[AppEvent] = Field(min_length=1, max_length=1000)


class AppEventResult(BaseModel):
    """What happened to one application event."""

    event_id: str
    status: Literal["accepted", "duplicate", "unknown_customer"]
    signalled: list[str] = Field(default_factory=list, description="Workflow ids of the journeys signalled")
    started: list[str] = Field(
        default_factory=list, description="Workflow ids of the journeys this event triggered (journeys/*.yaml)"
    )
    detail: str = ""


class AppEventBatchResult(BaseModel):
    """Answer of POST /v1/events/batch, one result per event in the order sent."""

    accepted: int
    duplicates: int
    unknown_customers: int
    results: list[AppEventResult]

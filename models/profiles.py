"""A customer profile as the shop sends it to us (import, API, demo data)."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any, TypeVar, overload
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers
from email_validator import EmailNotValidError, validate_email
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator, model_validator

from models.ids import MAX_LOYALTY_POINTS, MAX_PURCHASE_COUNT, BoundedJson, CustomerId
from models.journey import ChannelName
from models.tables import ContactStatus, Topic

T = TypeVar("T")

PHONE_CHANNELS = {ChannelName.SMS, ChannelName.VOICE, ChannelName.WHATSAPP}


class ContactIn(BaseModel):
    """One contact point; emails and phone numbers are validated and normalised."""

    model_config = ConfigDict(extra="forbid")

    channel: ChannelName
    address: str = Field(min_length=1, max_length=2048)
    # None leaves what we know alone: re-importing a profile must not clear a bounce
    # or an unsubscribe that a provider reported. New contact points start valid.
    status: ContactStatus | None = None
    consent: bool | None = Field(
        default=None, description="Marketing consent on this channel. None: keep; a new point gets True"
    )
    consent_source: str | None = Field(default=None, max_length=200)

    @model_validator(mode="after")
    def _normalise_address(self) -> ContactIn:
        if self.channel == ChannelName.EMAIL:
            try:
                # No DNS look-up: validation must work offline and must not stall imports.
                # Lower-cased whole: mailbox providers ignore case in practice, and two
                # spellings of one address must find (and merge) one customer.
                self.address = validate_email(self.address, check_deliverability=False).normalized.lower()
            except EmailNotValidError as exc:
                raise ValueError(f"email address {self.address!r}: {exc}") from exc
        elif self.channel in PHONE_CHANNELS:
            try:
                number = phonenumbers.parse(self.address, None)
            except phonenumbers.NumberParseException as exc:
                raise ValueError(
                    f"phone number {self.address!r}: {exc} (use international format, +<country><number>)"
                ) from exc
            if not phonenumbers.is_valid_number(number):
                raise ValueError(f"phone number {self.address!r}: not a valid number")
            self.address = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
        return self


class ConsentIn(BaseModel):
    """The customer's decision for one channel and topic (a form, a checkbox, an unsubscribe)."""

    model_config = ConfigDict(extra="forbid")

    channel: ChannelName
    topic: Topic = Topic.MARKETING
    granted: bool
    source: str | None = Field(default=None, max_length=200, description="Where it was given, e.g. 'checkout form'")


class CustomerProfile(BaseModel):
    """A customer as the shop sends it: typed attributes, custom ones, contact points, consents.

    Fields left out (None) keep what the profile already has, so a partial update from a
    form or pop-up never wipes what an import wrote.
    """

    model_config = ConfigDict(extra="forbid")

    id: CustomerId
    name: str | None = Field(default=None, max_length=200)
    gender: str | None = Field(default=None, pattern=r"^(female|male|other|unknown)$")
    birth_date: date | None = None
    timezone: str | None = None
    city: str | None = Field(default=None, max_length=200)
    language: str | None = Field(
        default=None, pattern=r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})?$", description="BCP 47, e.g. en, ru"
    )
    children_ages: list[int] | None = None
    favourite_categories: list[str] | None = None
    purchase_count: int | None = Field(default=None, ge=0, le=MAX_PURCHASE_COUNT)
    last_purchase_at: AwareDatetime | None = None
    loyalty_points: int | None = Field(default=None, ge=0, le=MAX_LOYALTY_POINTS)
    preferred_channel: ChannelName | None = None
    attributes: BoundedJson = Field(
        default_factory=dict, description="Custom attributes (JSON), merged key by key; numbers finite, |n| <= 2^53-1"
    )
    external_ids: dict[str, str] = Field(default_factory=dict, description="Ids in the shop's other systems, by source")
    contacts: list[ContactIn] = Field(default_factory=list)
    consents: list[ConsentIn] = Field(default_factory=list)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                ZoneInfo(value)
            except (ZoneInfoNotFoundError, ValueError):
                raise ValueError(f"unknown time zone {value!r} (use an IANA name like Europe/Moscow)") from None
        return value

    @field_validator("children_ages")
    @classmethod
    def _ages(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and any(not 0 <= age <= 30 for age in value):
            raise ValueError("children's ages must be between 0 and 30")
        return value

    @field_validator("birth_date")
    @classmethod
    def _born_in_the_past(cls, value: date | None) -> date | None:
        if value is not None and not date(1900, 1, 1) <= value <= datetime.now().date():
            raise ValueError("must be between 1900-01-01 and today")
        return value


@overload
def typed_attribute(attributes: dict[str, Any], key: str, kind: type[T]) -> T | None: ...
@overload
def typed_attribute(attributes: dict[str, Any], key: str, kind: type[T], default: T) -> T: ...
def typed_attribute(attributes: dict[str, Any], key: str, kind: type[T], default: T | None = None) -> T | None:
    """A custom attribute read as `kind` (int, float, str, bool, date, datetime), or `default`.

    Raises ValueError naming the attribute when the stored value does not fit the type,
    so a template or segment never silently compares "12" with 12.
    """
    value = attributes.get(key)
    if value is None:
        return default
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    try:
        if kind is bool and isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")  # type: ignore[return-value]
        if kind in (date, datetime) and isinstance(value, str):
            return kind.fromisoformat(value)  # type: ignore[attr-defined,no-any-return]
        if kind in (int, float, str) and not isinstance(value, (dict, list, bool)):
            return kind(value)  # type: ignore[call-arg]
    except ValueError:
        pass
    raise ValueError(f"attribute {key!r}: {value!r} is not a {kind.__name__}")

"""A customer profile as the shop sends it to us (import, API, demo data)."""

from __future__ import annotations

from typing import Any

import phonenumbers
from email_validator import EmailNotValidError, validate_email
from pydantic import BaseModel, ConfigDict, Field, model_validator

from models.journey import ChannelName
from models.tables import ContactStatus

PHONE_CHANNELS = {ChannelName.SMS, ChannelName.VOICE, ChannelName.WHATSAPP}


class ContactIn(BaseModel):
    """One contact point; emails and phone numbers are validated and normalised."""

    model_config = ConfigDict(extra="forbid")

    channel: ChannelName
    address: str = Field(min_length=1, max_length=2048)
    # None leaves what we know alone: re-importing a profile must not clear a bounce
    # or an unsubscribe that a provider reported. New contact points start valid.
    status: ContactStatus | None = None
    consent: bool | None = Field(default=None, description="None: keep; new points get True")
    consent_source: str | None = None

    @model_validator(mode="after")
    def _normalise_address(self) -> ContactIn:
        if self.channel == ChannelName.EMAIL:
            try:
                # No DNS look-up: validation must work offline and must not stall imports.
                self.address = validate_email(self.address, check_deliverability=False).normalized
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


class CustomerProfile(BaseModel):
    """A customer with attributes for personalisation and contact points per channel."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=128, pattern=r"^[^\s/]+$")
    name: str | None = Field(default=None, max_length=200)
    timezone: str = "UTC"
    attributes: dict[str, Any] = Field(default_factory=dict)
    contacts: list[ContactIn] = Field(default_factory=list)

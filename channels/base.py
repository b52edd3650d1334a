"""The Channel protocol every provider adapter implements, and its failure classes."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, fields
from typing import Any, Protocol, Self

from cascade.content.rendered import Button, RenderedContent
from models.activities import FailureCode
from models.tables import ContactStatus

# The reason code a workflow sees for a contact point the provider condemned.
_CONTACT_CODES = {
    ContactStatus.BOUNCED: FailureCode.BOUNCED,
    ContactStatus.INVALID: FailureCode.INVALID_ADDRESS,
    ContactStatus.BLOCKED: FailureCode.BLOCKED,
    ContactStatus.UNSUBSCRIBED: FailureCode.UNSUBSCRIBED,
}


__all__ = [
    "Button",
    "Channel",
    "ConfigurationError",
    "OutboundMessage",
    "PermanentSendError",
    "SendReceipt",
    "TransientSendError",
    "UnknownOutcomeError",
]


@dataclass(frozen=True, kw_only=True)
class OutboundMessage(RenderedContent):
    """A rendered message for one address on one channel: the content plus its envelope.

    The content fields (body, subject, html, url, push title/icon/image, buttons, the
    WhatsApp template) are RenderedContent's; `body` is already the variant meant for the
    channel (short SMS text, messenger text, push body, voice script), and each adapter
    uses the fields it can show and ignores the rest.
    """

    channel: str
    to: str
    idempotency_key: str
    # RFC 8058 one-click unsubscribe link; email adds List-Unsubscribe headers for it.
    unsubscribe_url: str | None = None
    # Extra email headers (e.g. campaign tags for the ESP); never secrets.
    headers: tuple[tuple[str, str], ...] = ()
    # Free-form key/values some providers echo back in receipts (FCM data, Viber tracking).
    metadata: tuple[tuple[str, str], ...] = field(default=())

    @classmethod
    def of(cls, content: RenderedContent, **envelope: Any) -> Self:
        """`content` addressed: `envelope` gives channel, to, idempotency_key and the optional rest."""
        return cls(**{f.name: getattr(content, f.name) for f in fields(RenderedContent)}, **envelope)

    def key_digest(self, length: int = 32) -> str:
        """A stable hex digest of the idempotency key (for provider ids with size limits)."""
        return hashlib.sha256(self.idempotency_key.encode()).hexdigest()[:length]


@dataclass(frozen=True)
class SendReceipt:
    """What the provider answered: its message id, and what the message cost."""

    provider_message_id: str
    cost: float = 0.0
    duplicate: bool = False
    # SMS parts billed (1 for every other channel).
    segments: int = 1


class PermanentSendError(Exception):
    """The provider will never deliver this message to this address.

    With a `contact_status` (bad number, blocked, gone) the contact point gets it; with
    None the message itself was refused (a template the provider does not know, a body
    too long) and the address stays usable. Either way the cascade moves on at once.
    `reason` is the provider's own words (kept in the delivery log only); `code` is what
    the workflow sees, since provider texts quote addresses.
    """

    def __init__(self, reason: str, contact_status: ContactStatus | None = ContactStatus.INVALID) -> None:
        super().__init__(reason)
        self.reason = reason
        self.contact_status = contact_status
        self.code = (
            FailureCode.PROVIDER_REJECTED
            if contact_status is None
            else _CONTACT_CODES.get(contact_status, FailureCode.PROVIDER_REJECTED)
        )


class TransientSendError(Exception):
    """Nothing was sent and it is worth retrying later (rate limit, 5xx, refused connection).

    Raise it only when the provider certainly did not take the message; when it may
    have (the request went out and no answer came back), raise UnknownOutcomeError.
    """

    def __init__(
        self, reason: str, retry_after: float | None = None, code: FailureCode = FailureCode.PROVIDER_UNAVAILABLE
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after
        self.code = code


class UnknownOutcomeError(Exception):
    """The request may have reached the provider, but no answer says what it did.

    A read timeout after the request was written, a connection reset before the
    answer, an SMTP session lost after the message data. A provider that honours our
    idempotency key makes a retry safe; for any other, repeating it could send twice,
    so the delivery is recorded `unknown` and never repeated.
    """

    code = FailureCode.OUTCOME_UNKNOWN

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ConfigurationError(Exception):
    """The provider refused our credentials, account or sender: no retry can succeed.

    Nothing the customer did, so the contact point is untouched. `reason` carries the
    provider's words for the operator (logged at error level and kept as the channel's
    health); the workflow sees only the code.
    """

    code = FailureCode.CONFIGURATION_ERROR

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Channel(Protocol):
    """A provider adapter: turns one rendered message into one provider call.

    `idempotent` is True only when the provider itself drops a second request with the
    same idempotency key (VK's `random_id`, the sandbox): then an attempt whose outcome
    is unknown may be repeated with that key. For every other provider it is False and
    such an attempt is never repeated.
    """

    name: str
    idempotent: bool

    async def send(self, message: OutboundMessage) -> SendReceipt:
        """Deliver `message`; raise Permanent/Transient/UnknownOutcome/ConfigurationError."""
        ...

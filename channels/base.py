"""The Channel protocol every provider adapter implements, and its failure classes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from models.tables import ContactStatus


@dataclass(frozen=True)
class OutboundMessage:
    """A rendered message for one address on one channel."""

    channel: str
    to: str
    body: str
    idempotency_key: str
    subject: str | None = None
    html: str | None = None
    url: str | None = None
    # Marketing only: the one-click unsubscribe URL (email adapters put it in List-Unsubscribe).
    unsubscribe_url: str | None = None


@dataclass(frozen=True)
class SendReceipt:
    """What the provider answered: its message id, and what the message cost."""

    provider_message_id: str
    cost: float = 0.0
    duplicate: bool = False


class PermanentSendError(Exception):
    """The provider will never deliver to this address (bad number, blocked, gone).

    The contact point gets `contact_status` and the cascade moves to the next step.
    """

    def __init__(self, reason: str, contact_status: ContactStatus = ContactStatus.INVALID) -> None:
        super().__init__(reason)
        self.reason = reason
        self.contact_status = contact_status


class TransientSendError(Exception):
    """Worth retrying later (rate limit, 5xx, timeout); Temporal retries with backoff."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class Channel(Protocol):
    """A provider adapter: turns one rendered message into one provider call."""

    name: str

    async def send(self, message: OutboundMessage) -> SendReceipt:
        """Deliver `message` once per idempotency key; raise Permanent/TransientSendError."""
        ...

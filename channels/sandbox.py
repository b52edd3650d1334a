"""Sandbox channels: a provider stand-in that "delivers" into the sandbox_outbox table.

It behaves like a provider that honours idempotency keys (a repeated key returns the
first message id, nothing is delivered twice) and, like Twilio's or SendGrid's test
credentials or the SES mailbox simulator, rejects a few reserved addresses so permanent
failures can be seen: emails whose local part is `bounce` or ends in `+bounce`,
Twilio's magic invalid number +15005550001, and messenger ids starting with `blocked`.
"""

from __future__ import annotations

import uuid

from sqlmodel import Session, select

from cascade.infra.db import Database, insert_ignoring_conflicts
from channels.base import OutboundMessage, PermanentSendError, SendReceipt
from models.tables import ContactStatus, SandboxMessage

_INVALID_NUMBER = "+15005550001"


def _rejection(message: OutboundMessage) -> PermanentSendError | None:
    to = message.to.strip().lower()
    local = to.rpartition("@")[0]
    if message.channel == "email" and (local == "bounce" or local.endswith("+bounce")):
        return PermanentSendError("550 5.1.1 mailbox does not exist", ContactStatus.BOUNCED)
    if to == _INVALID_NUMBER:
        return PermanentSendError("21211 invalid 'To' phone number", ContactStatus.INVALID)
    if to.startswith("blocked"):
        return PermanentSendError("403 bot was blocked by the user", ContactStatus.BLOCKED)
    return None


class SandboxChannel:
    """A channel named `name` whose provider is a table in our own database."""

    # Unique by key, like a provider with idempotency keys: a repeat is safe.
    idempotent = True

    def __init__(self, name: str, db: Database, cost: float = 0.0) -> None:
        self.name = name
        self._db = db
        self._cost = cost

    async def send(self, message: OutboundMessage) -> SendReceipt:
        """Record `message` in the outbox once per idempotency key."""
        if (rejected := _rejection(message)) is not None:
            raise rejected
        provider_id = f"sbx-{self.name}-{uuid.uuid4().hex}"
        # One transaction in one hop (Database.transaction): the dev and demo sends, and the
        # journey benchmarks' provider, should not cost more than a real provider's call.
        stored = await self._db.transaction(self._store, message, provider_id)
        return SendReceipt(provider_message_id=stored, cost=self._cost, duplicate=stored != provider_id)

    def _store(self, session: Session, message: OutboundMessage, provider_id: str) -> str:
        """Insert the message unless its key is there; the provider id its key has now."""
        session.connection().execute(
            insert_ignoring_conflicts(self._db, SandboxMessage)
            .values(
                channel=self.name,
                idempotency_key=message.idempotency_key,
                provider_message_id=provider_id,
                to_address=message.to,
                subject=message.subject,
                body=message.body,
                html=message.html,
            )
            .on_conflict_do_nothing(index_elements=["idempotency_key"])
        )
        return session.exec(
            select(SandboxMessage.provider_message_id).where(SandboxMessage.idempotency_key == message.idempotency_key)
        ).one()

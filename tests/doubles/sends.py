"""Stand-ins for the moments a send can go wrong in: slow providers, lost answers, crashes.

Each wraps a real channel (usually the sandbox) or the real journey activities and
changes one thing, so a test or a recorded history can put the journey exactly there.
"""

from __future__ import annotations

import asyncio
from typing import Any

from temporalio import activity
from temporalio.client import Client

from activities.journey import JourneyActivities
from cascade.infra.db import Database
from cascade.infra.settings import Settings
from channels.base import Channel, ConfigurationError, OutboundMessage, SendReceipt, UnknownOutcomeError
from channels.registry import build_channels
from models.activities import CheckContactInput, CheckContactResult
from models.events import CancelInput
from models.journey import ChannelName
from workflows.cascade import CascadeJourney


class DiesAfterTheCall:
    """The provider takes the message, then the worker dies before writing `sent`."""

    def __init__(self, inner: Channel, idempotent: bool) -> None:
        self.name, self.inner, self.idempotent, self.calls = inner.name, inner, idempotent, 0

    async def send(self, message: OutboundMessage) -> SendReceipt:
        self.calls += 1
        receipt = await self.inner.send(message)
        if self.calls == 1:
            raise RuntimeError("worker lost between the provider call and the `sent` update")
        return receipt


class AnswerLost:
    """The provider takes every message and its answer never arrives; no idempotency key."""

    idempotent = False

    def __init__(self, inner: Channel) -> None:
        self.name, self.inner, self.calls = inner.name, inner, 0

    async def send(self, message: OutboundMessage) -> SendReceipt:
        self.calls += 1
        await self.inner.send(message)
        raise UnknownOutcomeError(f"{self.name}: no answer after the request was sent (ReadTimeout)")


class RefusesCredentials:
    """A provider that refuses our token, whatever the message."""

    idempotent = False

    def __init__(self, name: str) -> None:
        self.name = name

    async def send(self, message: OutboundMessage) -> SendReceipt:
        raise ConfigurationError(f"{self.name}: configuration error: 401 Unauthorized")


class SlowProvider:
    """A provider call that takes `seconds` (a busy SMTP pool, a slow API)."""

    def __init__(self, inner: Channel, seconds: float) -> None:
        self.name, self.inner, self.idempotent, self.seconds, self.calls = inner.name, inner, False, seconds, 0
        self.started = asyncio.Event()

    async def send(self, message: OutboundMessage) -> SendReceipt:
        self.calls += 1
        self.started.set()
        await asyncio.sleep(self.seconds)
        return await self.inner.send(message)


class SignalDuringCheck(JourneyActivities):
    """The contact check, with a signal reaching the journey while it runs."""

    def __init__(
        self, db: Database, settings: Settings, client: Client, signal: Any, on: str, journey: str = "test"
    ) -> None:
        super().__init__(db, build_channels(settings, db), settings)
        self._client, self._signal, self._on, self._journey = client, signal, on, journey

    @activity.defn(name="check_contact")
    async def check_contact(self, input: CheckContactInput) -> CheckContactResult:
        result = await super().check_contact(input)
        if input.channel == self._on:
            handle = self._client.get_workflow_handle(f"journey/{self._journey}/{input.customer_id}")
            if isinstance(self._signal, CancelInput):
                await handle.signal(CascadeJourney.cancel, self._signal)
            else:
                await handle.signal(CascadeJourney.engagement, self._signal)
        return result


class FirstSendStarted(JourneyActivities):
    """The SMS journey's check waits until the email journey's send is with the provider."""

    def __init__(self, db: Database, settings: Settings, slow: SlowProvider) -> None:
        super().__init__(db, {**build_channels(settings, db), "email": slow}, settings)
        self._slow = slow

    @activity.defn(name="check_contact")
    async def check_contact(self, input: CheckContactInput) -> CheckContactResult:
        if input.channel == ChannelName.SMS:
            await self._slow.started.wait()
        return await super().check_contact(input)

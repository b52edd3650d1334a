"""Which adapter serves each channel name, chosen by configuration.

`CASCADE_CHANNEL_<NAME>` picks the adapter (default: the sandbox, so the demo and
the tests need no provider account); the provider's nested settings hold its
credentials as SecretStr.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping

from channels.base import Channel
from channels.sandbox import SandboxChannel
from core.db import Database
from core.settings import Settings
from models.journey import ChannelName


def build_channel(name: str, settings: Settings, db: Database) -> Channel:
    """The configured adapter for channel `name`."""
    cost = settings.channel_costs.get(name, 0.0)
    choice = getattr(settings, f"channel_{name}", "sandbox")
    # Imported here so a process using only the sandbox never loads provider libraries.
    if choice == "smtp":
        from channels.email import SmtpChannel

        return SmtpChannel(settings.smtp, cost=cost)
    if choice == "twilio" and name == "sms":
        from channels.sms_twilio import TwilioSmsChannel

        return TwilioSmsChannel(settings.twilio, cost_per_segment=cost)
    if choice == "twilio" and name == "voice":
        from channels.voice import TwilioVoiceChannel

        return TwilioVoiceChannel(settings.twilio, cost=cost)
    if choice == "smsru":
        from channels.sms_ru import SmsRuChannel

        return SmsRuChannel(settings.smsru, cost_per_segment=cost)
    if choice == "telegram":
        from channels.telegram import TelegramChannel

        return TelegramChannel(settings.telegram, cost=cost)
    if choice == "whatsapp":
        from channels.whatsapp import WhatsAppChannel

        return WhatsAppChannel(settings.whatsapp, cost=cost)
    if choice == "viber":
        from channels.viber import ViberChannel

        return ViberChannel(settings.viber, cost=cost)
    if choice == "vk":
        from channels.vk import VkChannel

        return VkChannel(settings.vk, cost=cost)
    if choice == "webpush":
        from channels.webpush import WebPushChannel

        return WebPushChannel(settings.webpush, cost=cost)
    if choice == "fcm":
        from channels.fcm import FcmChannel

        return FcmChannel(settings.fcm, cost=cost)
    if choice != "sandbox":
        raise ValueError(f"channel {name}: unknown adapter {choice!r}")
    return SandboxChannel(name, db, cost=cost)


def build_channels(settings: Settings, db: Database) -> dict[str, Channel]:
    """One adapter per channel name."""
    return {name.value: build_channel(name.value, settings, db) for name in ChannelName}


async def close_channels(channels: Mapping[str, Channel]) -> None:
    """Close every adapter that holds connections (HTTP pools, SMTP sessions)."""
    for channel in channels.values():
        aclose = getattr(channel, "aclose", None)
        if aclose is not None:
            with contextlib.suppress(Exception):
                await aclose()

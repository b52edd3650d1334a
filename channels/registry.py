"""Which adapter serves each channel name, chosen by configuration.

`CASCADE_CHANNEL_<NAME>` picks the adapter (default: the sandbox, so the demo and
the tests need no provider account); the provider's nested settings hold its
credentials as SecretStr.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Mapping
from typing import cast

from cascade.infra.db import Database
from cascade.infra.settings import Settings
from channels.base import Channel
from channels.sandbox import SandboxChannel
from models.journey import ChannelName

# (channel or None for any, adapter) -> (module, class, provider settings, cost keyword).
# Modules are imported only when chosen, so a process using only the sandbox never
# loads provider libraries.
_ADAPTERS: dict[tuple[str | None, str], tuple[str, str, str, str]] = {
    (None, "smtp"): ("channels.email", "SmtpChannel", "smtp", "cost"),
    ("sms", "twilio"): ("channels.sms_twilio", "TwilioSmsChannel", "twilio", "cost_per_segment"),
    ("voice", "twilio"): ("channels.voice", "TwilioVoiceChannel", "twilio", "cost"),
    (None, "smsru"): ("channels.sms_ru", "SmsRuChannel", "smsru", "cost_per_segment"),
    (None, "telegram"): ("channels.telegram", "TelegramChannel", "telegram", "cost"),
    (None, "whatsapp"): ("channels.whatsapp", "WhatsAppChannel", "whatsapp", "cost"),
    (None, "viber"): ("channels.viber", "ViberChannel", "viber", "cost"),
    (None, "vk"): ("channels.vk", "VkChannel", "vk", "cost"),
    (None, "webpush"): ("channels.webpush", "WebPushChannel", "webpush", "cost"),
    (None, "fcm"): ("channels.fcm", "FcmChannel", "fcm", "cost"),
}


def build_channel(name: str, settings: Settings, db: Database) -> Channel:
    """The configured adapter for channel `name`."""
    cost = settings.channel_costs.get(name, 0.0)
    choice = getattr(settings, f"channel_{name}", "sandbox")
    if choice == "sandbox":
        return SandboxChannel(name, db, cost=cost)
    found = _ADAPTERS.get((name, choice)) or _ADAPTERS.get((None, choice))
    if found is None:
        raise ValueError(f"channel {name}: unknown adapter {choice!r}")
    module, class_name, settings_field, cost_keyword = found
    adapter = getattr(importlib.import_module(module), class_name)
    return cast(Channel, adapter(getattr(settings, settings_field), **{cost_keyword: cost}))


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

"""Configuration picks each channel's adapter; the sandbox stays the default."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from cascade.infra.db import Database
from cascade.infra.settings import Settings
from channels.registry import build_channel, close_channels
from channels.sandbox import SandboxChannel
from tests.doubles.webpush import new_vapid_key

CHOICES = [
    ("email", "smtp", "SmtpChannel"),
    ("sms", "twilio", "TwilioSmsChannel"),
    ("sms", "smsru", "SmsRuChannel"),
    ("voice", "twilio", "TwilioVoiceChannel"),
    ("telegram", "telegram", "TelegramChannel"),
    ("whatsapp", "whatsapp", "WhatsAppChannel"),
    ("viber", "viber", "ViberChannel"),
    ("vk", "vk", "VkChannel"),
    ("webpush", "webpush", "WebPushChannel"),
    ("fcm", "fcm", "FcmChannel"),
]


@pytest.mark.parametrize(("channel", "choice", "class_name"), CHOICES)
async def test_each_adapter_is_chosen_by_configuration(db: Database, channel, choice, class_name) -> None:
    settings = Settings(**{f"channel_{channel}": choice})
    if choice == "webpush":
        settings.webpush.vapid_private_key = SecretStr(new_vapid_key())
    adapter = build_channel(channel, settings, db)
    assert type(adapter).__name__ == class_name
    await close_channels({channel: adapter})


async def test_web_push_without_a_key_is_refused_naming_the_setting(db: Database) -> None:
    with pytest.raises(ValueError, match="CASCADE_WEBPUSH__VAPID_PRIVATE_KEY"):
        build_channel("webpush", Settings(channel_webpush="webpush"), db)


async def test_the_sandbox_is_the_default(db: Database) -> None:
    assert isinstance(build_channel("sms", Settings(), db), SandboxChannel)

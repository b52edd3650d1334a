"""Telegram, WhatsApp, Viber and VK adapters against HTTP doubles speaking their wire formats."""

from __future__ import annotations

import json

import pytest
from pydantic import SecretStr

from cascade.infra.settings import TelegramSettings, ViberSettings, VkSettings, WhatsAppSettings
from channels.base import Button, ConfigurationError, OutboundMessage, PermanentSendError, TransientSendError
from channels.telegram import TelegramChannel
from channels.viber import ViberChannel
from channels.vk import VkChannel, random_id
from channels.whatsapp import WhatsAppChannel
from models.tables import ContactStatus
from tests.doubles.telegram import TelegramDouble
from tests.doubles.viber import ViberDouble
from tests.doubles.vk import VkDouble
from tests.doubles.whatsapp import WhatsAppDouble


def _msg(to: str, key: str = "journey/w/c-1/run/1", **kw) -> OutboundMessage:
    return OutboundMessage(channel="messenger", to=to, body="Hello, Ann! WELCOME10", idempotency_key=key, **kw)


BUTTONS = (Button("Shop now", "https://shop.example/w?c=1"), Button("Stores", "https://shop.example/map"))


# --- Telegram ----------------------------------------------------------------------


@pytest.fixture
async def telegram():
    double = TelegramDouble()
    async with double.serve() as url:
        channel = TelegramChannel(TelegramSettings(base_url=url, bot_token=SecretStr(double.token)), cost=0.0)
        yield double, channel
        await channel.aclose()


async def test_telegram_sends_text_with_inline_buttons(telegram):
    double, channel = telegram
    receipt = await channel.send(_msg("1001", buttons=BUTTONS))
    [sent] = double.messages
    assert sent["chat_id"] == "1001" and sent["text"] == "Hello, Ann! WELCOME10"
    assert sent["reply_markup"] == {
        "inline_keyboard": [
            [{"text": "Shop now", "url": "https://shop.example/w?c=1"}],
            [{"text": "Stores", "url": "https://shop.example/map"}],
        ]
    }
    assert receipt.provider_message_id == f"tg-{_msg('1001').key_digest(16)}-1"
    # A bare url becomes one button.
    await channel.send(_msg("1002", url="https://shop.example/x"))
    assert double.messages[1]["reply_markup"] == {
        "inline_keyboard": [[{"text": "Open", "url": "https://shop.example/x"}]]
    }


async def test_telegram_errors_are_classified(telegram):
    double, channel = telegram
    with pytest.raises(PermanentSendError) as blocked:
        await channel.send(_msg("blocked-1"))
    assert blocked.value.contact_status == ContactStatus.BLOCKED and "blocked by the user" in blocked.value.reason
    with pytest.raises(PermanentSendError) as missing:
        await channel.send(_msg("missing-1"))
    assert missing.value.contact_status == ContactStatus.INVALID and "chat not found" in missing.value.reason
    with pytest.raises(TransientSendError) as flood:
        await channel.send(_msg("flood-1"))
    assert flood.value.retry_after == double.retry_after
    # The retry after the wait goes through.
    assert (await channel.send(_msg("flood-1"))).provider_message_id.startswith("tg-")


async def test_telegram_wrong_token_is_configuration_and_never_leaks(telegram):
    double, _ = telegram
    channel = TelegramChannel(TelegramSettings(base_url=double.url, bot_token=SecretStr("999:LEAKME")))
    try:
        with pytest.raises(ConfigurationError) as err:
            await channel.send(_msg("1001"))
    finally:
        await channel.aclose()
    assert "configuration" in err.value.reason and "LEAKME" not in str(err.value)
    assert "LEAKME" not in repr(TelegramSettings(bot_token=SecretStr("999:LEAKME")))


async def test_telegram_down_is_transient_without_the_token_in_the_error():
    channel = TelegramChannel(TelegramSettings(base_url="http://127.0.0.1:9", bot_token=SecretStr("1:SECRET")))
    with pytest.raises(TransientSendError) as err:
        await channel.send(_msg("1001"))
    await channel.aclose()
    assert "SECRET" not in str(err.value) and "SECRET" not in repr(err.value.__cause__)


# --- WhatsApp ----------------------------------------------------------------------


@pytest.fixture
async def whatsapp():
    double = WhatsAppDouble()
    async with double.serve() as url:
        settings = WhatsAppSettings(
            base_url=f"{url}/v21.0",
            phone_number_id=double.phone_number_id,
            access_token=SecretStr(double.access_token),
        )
        channel = WhatsAppChannel(settings, cost=0.03)
        yield double, channel
        await channel.aclose()


async def test_whatsapp_sends_an_approved_template_with_parameters(whatsapp):
    double, channel = whatsapp
    receipt = await channel.send(
        _msg(
            "+4915112345678",
            template_name="welcome_offer",
            template_language="de",
            template_params=("Ann", "WELCOME10"),
        )
    )
    [sent] = double.messages
    assert sent["type"] == "template" and sent["to"] == "+4915112345678"
    assert sent["template"] == {
        "name": "welcome_offer",
        "language": {"code": "de"},
        "components": [
            {"type": "body", "parameters": [{"type": "text", "text": "Ann"}, {"type": "text", "text": "WELCOME10"}]}
        ],
    }
    assert receipt.provider_message_id.startswith("wamid.") and receipt.cost == 0.03


async def test_whatsapp_free_text_needs_an_open_window(whatsapp):
    double, channel = whatsapp
    with pytest.raises(PermanentSendError) as closed:
        await channel.send(_msg("+4915112345678"))
    # The number is fine; only this message (free text, no template) cannot go.
    assert closed.value.contact_status is None and "131047" in closed.value.reason
    double.open_windows.add("+4915112345678")
    await channel.send(_msg("+4915112345678", url="https://shop.example"))
    assert double.messages[0]["text"] == {"body": "Hello, Ann! WELCOME10\nhttps://shop.example", "preview_url": True}


async def test_whatsapp_errors_are_classified(whatsapp):
    _, channel = whatsapp
    tpl = {"template_name": "welcome_offer"}
    with pytest.raises(PermanentSendError) as undeliverable:
        await channel.send(_msg("+4915100000026", **tpl))
    assert undeliverable.value.contact_status == ContactStatus.INVALID and "131026" in undeliverable.value.reason
    with pytest.raises(PermanentSendError) as unknown:
        await channel.send(_msg("+4915112345678", template_name="no_such_template"))
    assert unknown.value.contact_status is None and "132001" in unknown.value.reason
    with pytest.raises(TransientSendError) as throttled:
        await channel.send(_msg("+4915100000429", **tpl))
    assert "130429" in throttled.value.reason and throttled.value.retry_after
    await channel.send(_msg("+4915100000429", **tpl))


# --- Viber -------------------------------------------------------------------------


@pytest.fixture
async def viber():
    double = ViberDouble()
    async with double.serve() as url:
        channel = ViberChannel(ViberSettings(base_url=url, auth_token=SecretStr(double.auth_token), sender_name="Shop"))
        yield double, channel
        await channel.aclose()


async def test_viber_sends_text_with_url_buttons_and_tracking_data(viber):
    double, channel = viber
    receipt = await channel.send(_msg("01234567890A=", buttons=BUTTONS[:1]))
    [sent] = double.messages
    assert sent["receiver"] == "01234567890A=" and sent["sender"] == {"name": "Shop"}
    assert sent["tracking_data"] == "journey/w/c-1/run/1"
    assert sent["keyboard"]["Buttons"][0]["ActionType"] == "open-url"
    assert sent["keyboard"]["Buttons"][0]["ActionBody"] == "https://shop.example/w?c=1"
    assert receipt.provider_message_id.isdigit()


async def test_viber_status_codes_are_classified(viber):
    double, channel = viber
    with pytest.raises(PermanentSendError) as unsub:
        await channel.send(_msg("unsub-1"))
    assert unsub.value.contact_status == ContactStatus.UNSUBSCRIBED
    with pytest.raises(PermanentSendError) as nodevice:
        await channel.send(_msg("nodevice-1"))
    assert nodevice.value.contact_status == ContactStatus.INVALID
    with pytest.raises(TransientSendError):
        await channel.send(_msg("busy-1"))
    await channel.send(_msg("busy-1"))
    bad = ViberChannel(ViberSettings(base_url=double.url, auth_token=SecretStr("nope")))
    with pytest.raises(ConfigurationError) as config:
        await bad.send(_msg("1"))
    await bad.aclose()
    assert "configuration" in config.value.reason and "invalidAuthToken" in config.value.reason


# --- VK ----------------------------------------------------------------------------


@pytest.fixture
async def vk():
    double = VkDouble()
    async with double.serve() as url:
        channel = VkChannel(VkSettings(base_url=url, access_token=SecretStr(double.access_token)))
        yield double, channel
        await channel.aclose()


async def test_vk_random_id_makes_a_repeated_send_one_message(vk):
    double, channel = vk
    first = await channel.send(_msg("100500", buttons=BUTTONS[:1]))
    again = await channel.send(_msg("100500"))
    other = await channel.send(_msg("100500", key="journey/w/c-1/run/2"))
    assert first.provider_message_id == again.provider_message_id != other.provider_message_id
    assert len(double.messages) == 2
    sent = double.messages[0]
    assert sent["random_id"] == str(random_id("journey/w/c-1/run/1")) and sent["v"] == "5.199"
    keyboard = json.loads(sent["keyboard"])
    assert keyboard["inline"] is True
    assert keyboard["buttons"][0][0]["action"] == {
        "type": "open_link",
        "link": "https://shop.example/w?c=1",
        "label": "Shop now",
    }


async def test_vk_error_codes_are_classified(vk):
    _, channel = vk
    expected = {
        "900123": ContactStatus.BLOCKED,
        "901123": ContactStatus.UNSUBSCRIBED,
        "902123": ContactStatus.BLOCKED,
    }
    for peer, status in expected.items():
        with pytest.raises(PermanentSendError) as err:
            await channel.send(_msg(peer))
        assert err.value.contact_status == status and err.value.reason.startswith(peer[:3])
    with pytest.raises(TransientSendError) as flood:
        await channel.send(_msg("6123"))
    assert flood.value.retry_after == 1.0
    await channel.send(_msg("6123"))

"""Twilio SMS and voice, SMS.ru, and SMS segment counting, against HTTP doubles."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from cascade.infra.settings import SmsRuSettings, TwilioSettings
from channels.base import ConfigurationError, OutboundMessage, PermanentSendError, TransientSendError
from channels.sms_ru import SmsRuChannel
from channels.sms_segments import sms_info
from channels.sms_twilio import TwilioSmsChannel
from channels.voice import TwilioVoiceChannel
from models.tables import ContactStatus
from tests.doubles.smsru import SmsRuDouble
from tests.doubles.twilio import TwilioDouble


def _msg(to: str, body: str = "Ann, WELCOME10 gives 10% off. shop.example", key: str = "j/c/r/2") -> OutboundMessage:
    return OutboundMessage(channel="sms", to=to, body=body, idempotency_key=key)


@pytest.mark.parametrize(
    ("text", "encoding", "length", "segments"),
    [
        ("", "GSM-7", 0, 0),
        ("a" * 160, "GSM-7", 160, 1),
        ("a" * 161, "GSM-7", 161, 2),
        ("a" * 306, "GSM-7", 306, 2),
        ("a" * 307, "GSM-7", 307, 3),
        ("€" * 80, "GSM-7", 160, 1),  # extension table: two septets each
        ("{" * 81, "GSM-7", 162, 2),
        ("Привет" * 11 + "abcd", "UCS-2", 70, 1),
        ("Привет" * 12, "UCS-2", 72, 2),
        ("ok 👍", "UCS-2", 5, 1),  # an emoji outside the BMP is two UTF-16 units
    ],
)
def test_sms_segments(text, encoding, length, segments):
    info = sms_info(text)
    assert (info.encoding, info.length, info.segments) == (encoding, length, segments)


@pytest.fixture
async def twilio():
    double = TwilioDouble()
    async with double.serve() as url:
        settings = TwilioSettings(
            base_url=url,
            account_sid=double.account_sid,
            auth_token=SecretStr(double.auth_token),
            from_number="+15005550006",
            status_callback_url="https://hooks.shop.example/twilio",
        )
        yield double, settings


async def test_twilio_sms_form_auth_and_cost_per_segment(twilio):
    double, settings = twilio
    channel = TwilioSmsChannel(settings, cost_per_segment=0.05)
    try:
        short = await channel.send(_msg("+14155552671"))
        long = await channel.send(_msg("+14155552671", body="x" * 200, key="j/c/r/3"))
    finally:
        await channel.aclose()
    first = double.messages[0]
    assert first == {
        "To": "+14155552671",
        "From": "+15005550006",
        "Body": "Ann, WELCOME10 gives 10% off. shop.example",
        "StatusCallback": "https://hooks.shop.example/twilio",
    }
    assert short.provider_message_id.startswith("SM") and short.cost == 0.05 and short.segments == 1
    assert long.segments == 2 and long.cost == pytest.approx(0.10)


async def test_twilio_error_codes_are_classified(twilio):
    double, settings = twilio
    channel = TwilioSmsChannel(settings)
    try:
        cases = {
            "+15005550001": ContactStatus.INVALID,
            "+15005550009": ContactStatus.INVALID,
            "+15005550004": ContactStatus.UNSUBSCRIBED,
        }
        for number, status in cases.items():
            with pytest.raises(PermanentSendError) as err:
                await channel.send(_msg(number))
            assert err.value.contact_status == status
        with pytest.raises(TransientSendError) as limited:
            await channel.send(_msg("+15005550429"))
        assert limited.value.retry_after == 2.0 and "20429" in limited.value.reason
        await channel.send(_msg("+15005550429"))
        with pytest.raises(PermanentSendError) as empty:
            await channel.send(_msg("+14155552671", body=""))
        assert empty.value.contact_status is None and "21602" in empty.value.reason
    finally:
        await channel.aclose()
    wrong = TwilioSmsChannel(settings.model_copy(update={"auth_token": SecretStr("wrong")}))
    with pytest.raises(ConfigurationError) as config:
        await wrong.send(_msg("+14155552671"))
    await wrong.aclose()
    assert "configuration" in config.value.reason and "20003" in config.value.reason
    assert len(double.messages) == 1


async def test_voice_places_a_call_that_says_the_message(twilio):
    double, settings = twilio
    channel = TwilioVoiceChannel(settings, cost=0.12)
    try:
        receipt = await channel.send(
            OutboundMessage(channel="voice", to="+14155552671", body="Ann, your order <12> & more", idempotency_key="k")
        )
        with pytest.raises(PermanentSendError):
            await channel.send(OutboundMessage(channel="voice", to="+15005550001", body="x", idempotency_key="k2"))
    finally:
        await channel.aclose()
    [call] = double.calls
    assert receipt.provider_message_id.startswith("CA") and receipt.cost == 0.12
    assert call["To"] == "+14155552671" and call["From"] == "+15005550006"
    assert '<Say voice="alice" language="en-US">Ann, your order &lt;12&gt; &amp; more</Say>' in call["Twiml"]
    assert call["Twiml"].count("<Say") == 2 and call["Twiml"].endswith("<Hangup/></Response>")


@pytest.fixture
async def smsru():
    double = SmsRuDouble()
    async with double.serve() as url:
        channel = SmsRuChannel(SmsRuSettings(base_url=url, api_id=SecretStr(double.api_id), sender="Shop"), 0.03)
        yield double, channel
        await channel.aclose()


async def test_smsru_sends_and_reads_the_per_number_status(smsru):
    double, channel = smsru
    receipt = await channel.send(_msg("+79991234567", body="Анна, скидка 10% по коду WELCOME10"))
    [sent] = double.messages
    assert sent["to"] == "79991234567" and sent["json"] == "1" and sent["from"] == "Shop"
    assert sent["msg"] == "Анна, скидка 10% по коду WELCOME10"
    assert receipt.provider_message_id.endswith("-1") and receipt.cost == 0.03


async def test_smsru_codes_are_classified(smsru):
    double, channel = smsru
    for number, status in {
        "+79990000202": ContactStatus.INVALID,
        "+79990000207": ContactStatus.INVALID,
        "+79990000209": ContactStatus.UNSUBSCRIBED,
    }.items():
        with pytest.raises(PermanentSendError) as err:
            await channel.send(_msg(number))
        assert err.value.contact_status == status and err.value.reason.startswith(number[-3:])
    with pytest.raises(TransientSendError) as limit:
        await channel.send(_msg("+79990000230"))
    assert limit.value.retry_after == 3600.0
    wrong = SmsRuChannel(SmsRuSettings(base_url=double.url, api_id=SecretStr("bad")))
    with pytest.raises(ConfigurationError) as config:
        await wrong.send(_msg("+79991234567"))
    await wrong.aclose()
    assert "configuration" in config.value.reason and "200" in config.value.reason
    assert double.messages == []

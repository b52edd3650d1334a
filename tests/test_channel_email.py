"""The SMTP adapter against a real SMTP server (aiosmtpd): STARTTLS, AUTH, MIME, bounces."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from cascade.infra.settings import SmtpSettings
from channels.base import ConfigurationError, OutboundMessage, PermanentSendError, TransientSendError
from channels.email import SmtpChannel
from models.tables import ContactStatus
from tests.doubles.smtp import SmtpDouble, smtp_server


def _msg(to: str, key: str = "journey/w/c-1/run/0", **kw) -> OutboundMessage:
    return OutboundMessage(
        channel="email",
        to=to,
        subject="Welcome, Ann!",
        body="Hello, Ann! Your code: WELCOME10",
        html="<p>Hello, <b>Ann</b>!</p>",
        idempotency_key=key,
        **kw,
    )


@pytest.fixture
def smtp(tmp_path):
    double = SmtpDouble()
    with smtp_server(double, tmp_path) as (port, ca):
        settings = SmtpSettings(
            host="127.0.0.1",
            port=port,
            security="starttls",
            username=double.username,
            password=SecretStr(double.password),
            ca_file=str(ca),
            from_address="Shop <news@shop.example>",
            message_id_domain="shop.example",
            unsubscribe_mailto="unsub@shop.example",
            pool_size=2,
        )
        yield double, settings


async def test_sends_multipart_with_one_click_unsubscribe_over_starttls(smtp):
    double, settings = smtp
    channel = SmtpChannel(settings, cost=0.001)
    try:
        receipt = await channel.send(_msg("ann@example.com", unsubscribe_url="https://shop.example/u/TOKEN"))
    finally:
        await channel.aclose()
    [mail] = double.messages
    assert double.envelopes == [("news@shop.example", ["ann@example.com"])]
    assert mail["Subject"] == "Welcome, Ann!" and mail["To"] == "ann@example.com"
    assert mail.get_content_type() == "multipart/alternative"
    plain, html = (part.get_content_type() for part in mail.iter_parts())
    assert (plain, html) == ("text/plain", "text/html")
    assert "WELCOME10" in mail.get_body(("plain",)).get_content()
    assert "<b>Ann</b>" in mail.get_body(("html",)).get_content()
    assert mail["List-Unsubscribe"] == "<https://shop.example/u/TOKEN>, <mailto:unsub@shop.example?subject=unsubscribe>"
    assert mail["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    # The Message-ID is the provider id, and the same for every attempt at this key.
    assert mail["Message-ID"] == f"<{receipt.provider_message_id}>"
    assert receipt.provider_message_id.endswith("@shop.example") and receipt.cost == 0.001
    assert _msg("x@y.z").key_digest() in receipt.provider_message_id


async def test_no_unsubscribe_headers_without_a_link_and_connections_are_reused(smtp):
    double, settings = smtp
    channel = SmtpChannel(settings.model_copy(update={"pool_size": 1}))
    try:
        for i in range(5):
            await channel.send(_msg(f"c{i}@example.com", key=f"k/{i}"))
    finally:
        await channel.aclose()
    assert len(double.messages) == 5
    assert "List-Unsubscribe" not in double.messages[0]
    # One EHLO before STARTTLS and one after, on one connection for all five messages.
    assert double.sessions == 2


async def test_550_recipient_is_a_bounce_and_451_is_retried(smtp):
    double, settings = smtp
    channel = SmtpChannel(settings)
    try:
        with pytest.raises(PermanentSendError) as bounced:
            await channel.send(_msg("bounce@example.com"))
        with pytest.raises(TransientSendError) as grey:
            await channel.send(_msg("grey@example.com"))
        # The pool recovers after errors: the next message goes through.
        await channel.send(_msg("ann@example.com"))
    finally:
        await channel.aclose()
    assert bounced.value.contact_status == ContactStatus.BOUNCED and "550" in bounced.value.reason
    assert "451" in grey.value.reason and grey.value.retry_after
    assert [to for _, [to] in double.envelopes] == ["ann@example.com"]


async def test_wrong_password_is_a_configuration_problem_not_a_bounce(smtp):
    _, settings = smtp
    channel = SmtpChannel(settings.model_copy(update={"password": SecretStr("wrong")}))
    try:
        with pytest.raises(ConfigurationError) as err:
            await channel.send(_msg("ann@example.com"))
    finally:
        await channel.aclose()
    assert "configuration" in err.value.reason and "wrong" not in err.value.reason


async def test_unreachable_server_is_transient(tmp_path):
    from tests.doubles.smtp import free_port

    channel = SmtpChannel(SmtpSettings(host="127.0.0.1", port=free_port(), security="none", timeout_seconds=2))
    with pytest.raises(TransientSendError):
        await channel.send(_msg("ann@example.com"))
    await channel.aclose()

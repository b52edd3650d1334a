"""List-Unsubscribe goes out raw, on one line, as the SMTP server receives it (RFC 2369 / RFC 8058).

The parsed header would hide the problem (the parser decodes encoded-words again), so
these tests read the bytes aiosmtpd got in DATA.
"""

from __future__ import annotations

import re

import pytest
from pydantic import SecretStr

from cascade.infra.settings import SmtpSettings
from channels.base import OutboundMessage
from channels.email import SmtpChannel
from tests.doubles.smtp import SmtpDouble, smtp_server

# What a real tracking link looks like: public URL + /u/ + a 52-character token, so the
# header is far longer than the 78 characters the default email policy folds at.
UNSUBSCRIBE = "https://track.shop-with-a-long-name.example/u/" + "Ab3_-" * 10 + "Zz"


@pytest.fixture
def smtp(tmp_path):
    double = SmtpDouble()
    with smtp_server(double, tmp_path) as (port, ca):
        yield (
            double,
            SmtpSettings(
                host="127.0.0.1",
                port=port,
                security="starttls",
                username=double.username,
                password=SecretStr(double.password),
                ca_file=str(ca),
                from_address="Shop <news@shop.example>",
                message_id_domain="shop.example",
                unsubscribe_mailto="unsubscribe-requests@news.shop-with-a-long-name.example",
            ),
        )


def _headers(raw: bytes) -> bytes:
    return raw.split(b"\r\n\r\n", 1)[0]


async def test_list_unsubscribe_is_sent_raw_on_one_line(smtp):
    double, settings = smtp
    channel = SmtpChannel(settings)
    try:
        await channel.send(
            OutboundMessage(
                channel="email",
                to="ann@example.com",
                subject="Привет, Ann: a long subject that is folded and encoded as usual " * 2,
                body="Hi",
                html="<p>Hi</p>",
                idempotency_key="journey/w/c-1/run/0",
                unsubscribe_url=UNSUBSCRIBE,
            )
        )
    finally:
        await channel.aclose()
    [raw] = double.raw
    headers = _headers(raw)
    expected = (
        f"List-Unsubscribe: <{UNSUBSCRIBE}>, "
        "<mailto:unsubscribe-requests@news.shop-with-a-long-name.example?subject=unsubscribe>\r\n"
    ).encode()
    assert len(expected) > 78
    assert b"\r\n" + expected in headers, headers.decode()
    assert b"\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n" in headers + b"\r\n"
    # Exactly one of each, no encoded-word anywhere in them, and no continuation line after.
    lines = headers.split(b"\r\n")
    index = next(i for i, line in enumerate(lines) if line.startswith(b"List-Unsubscribe:"))
    assert not lines[index + 1].startswith((b" ", b"\t"))
    assert sum(line.lower().startswith(b"list-unsubscribe:") for line in lines) == 1
    assert not re.search(rb"List-Unsubscribe[^\r\n]*=\?", headers)
    # Other headers still follow the usual rules: the non-ASCII subject is encoded.
    assert b"Subject: =?utf-8?" in headers
    # And the parsed message sees the same one-click link.
    assert double.messages[0]["List-Unsubscribe"].startswith(f"<{UNSUBSCRIBE}>")


def test_a_header_value_that_would_break_the_line_is_refused():
    from channels.email import build_mime

    settings = SmtpSettings(from_address="news@shop.example", message_id_domain="shop.example")
    for bad in ("https://x/u/1\r\nBcc: a@b", "https://x/u/é"):
        message = OutboundMessage(
            channel="email", to="a@example.com", body="x", idempotency_key="k", unsubscribe_url=bad
        )
        with pytest.raises(ValueError, match=r"one line|linefeed"):
            build_mime(message, settings)

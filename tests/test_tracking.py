"""Tracking tokens and link rewriting (pure functions, no I/O)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import pytest

from cascade.content.templates import RenderedContent, render_content
from cascade.infra.settings import Settings
from cascade.tracking.tokens import (
    TOKEN_LENGTH,
    ExpiredToken,
    InvalidToken,
    Purpose,
    add_tracking,
    add_utm,
    sign_token,
    tracking_id,
    unsubscribe_link,
    verify_token,
)
from models.activities import SendMessageInput
from models.journey import ChannelName, MessageContent
from models.tables import Topic

SECRET = "s3cret"
NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def _token(purpose: Purpose = Purpose.CLICK, index: int = 3, expires: datetime = NOW + timedelta(days=1)) -> str:
    return sign_token(SECRET, purpose, tracking_id("journey/x/c-1/run/0"), expires, index)


def test_a_token_round_trips_and_names_the_message_and_link():
    data = verify_token(SECRET, _token(), Purpose.CLICK, now=NOW)
    assert data.tracking_id == tracking_id("journey/x/c-1/run/0") and data.link_index == 3
    assert len(_token()) == TOKEN_LENGTH < 60  # short enough for an SMS


def test_every_altered_character_is_refused():
    token = _token()
    for i in range(len(token)):
        swapped = "A" if token[i] != "A" else "B"
        with pytest.raises(InvalidToken):
            verify_token(SECRET, token[:i] + swapped + token[i + 1 :], Purpose.CLICK, now=NOW)


def test_wrong_secret_purpose_expiry_and_garbage_are_refused():
    with pytest.raises(InvalidToken):
        verify_token("other", _token(), Purpose.CLICK, now=NOW)
    with pytest.raises(InvalidToken):
        verify_token(SECRET, _token(Purpose.PIXEL), Purpose.UNSUBSCRIBE, now=NOW)
    with pytest.raises(ExpiredToken):
        verify_token(SECRET, _token(expires=NOW - timedelta(seconds=1)), Purpose.CLICK, now=NOW)
    for junk in ("", "x" * TOKEN_LENGTH, "../../etc/passwd", _token() + "A", "é" * TOKEN_LENGTH):
        with pytest.raises(InvalidToken):
            verify_token(SECRET, junk, Purpose.CLICK, now=NOW)


def test_utm_tags_are_added_but_never_override_the_marketers_own():
    url = add_utm("https://shop.example/p?id=1&utm_campaign=spring", channel="telegram", campaign="x", content="step1")
    query = parse_qs(urlsplit(url).query)
    assert query["id"] == ["1"] and query["utm_campaign"] == ["spring"]
    assert query["utm_source"] == ["telegram"] and query["utm_medium"] == ["messenger"]
    assert query["utm_content"] == ["step1"]


def _input(channel: str = "email", topic: Topic = Topic.MARKETING) -> SendMessageInput:
    return SendMessageInput(
        idempotency_key="journey/welcome/c-1/run-1/0",
        workflow_id="journey/welcome/c-1",
        run_id="run-1",
        journey="welcome",
        step=0,
        customer_id="c-1",
        channel=ChannelName(channel),
        topic=topic,
        content=MessageContent(body="x"),
    )


def test_email_links_are_rewritten_tagged_and_get_a_pixel_and_unsubscribe():
    settings = Settings(public_url="https://t.shop.example", tracking_secret=SECRET)
    content = MessageContent(
        subject="Hi",
        body="See https://shop.example/sale. Or mailto:help@shop.example",
        html='<html><body><a href="https://shop.example/sale">Sale</a> <a href="https://shop.example/a?b=1&amp;c=2">'
        'A</a> <a href="mailto:x@y">mail</a></body></html>',
    )
    rendered = render_content(content, {}, "email")
    out, tracking = add_tracking(rendered, _input(), settings, now=NOW)
    assert tracking.links == [
        add_utm("https://shop.example/sale", channel="email", campaign="welcome", content="step0"),
        add_utm("https://shop.example/a?b=1&c=2", channel="email", campaign="welcome", content="step0"),
    ]
    assert "https://shop.example/sale" not in out.body
    assert out.body.count("https://t.shop.example/t/c/") == 1 and out.body.rstrip().endswith(
        str(tracking.unsubscribe_url)
    )
    assert out.html is not None
    hrefs = re.findall(r'href="([^"]+)"', out.html)
    assert hrefs[0].startswith("https://t.shop.example/t/c/") and hrefs[2] == "mailto:x@y"
    assert hrefs[-1] == tracking.unsubscribe_url
    assert re.search(r'<img src="https://t\.shop\.example/t/o/[A-Za-z0-9_-]+\.gif" width="1"', out.html)
    assert out.html.endswith("</body></html>")
    token = hrefs[1].rsplit("/", 1)[1]
    assert verify_token(SECRET, token, Purpose.CLICK).link_index == 1


def test_transactional_messages_get_no_unsubscribe_and_push_no_footer():
    settings = Settings(tracking_secret=SECRET)
    plain = render_content(
        MessageContent(body="Order shipped: https://shop.example/o/{{ order }}"), {"order": 1}, "sms"
    )
    out, tracking = add_tracking(plain, _input("sms", Topic.TRANSACTIONAL), settings)
    assert tracking.unsubscribe_url is None and "Unsubscribe" not in out.body and len(tracking.links) == 1
    pushed = render_content(MessageContent(body="Hi", url="https://shop.example"), {}, "fcm")
    push, push_tracking = add_tracking(pushed, _input("fcm"), settings)
    assert push_tracking.unsubscribe_url is None and push.url and "/t/c/" in push.url


def test_a_template_can_place_the_unsubscribe_link_itself():
    settings = Settings(tracking_secret="s" * 32, public_url="https://t.shop.example")
    message = _input("sms")
    link = unsubscribe_link(message, settings, NOW)
    assert link is not None and link.startswith("https://t.shop.example/u/")
    rendered = RenderedContent(body=f"-20% today. Stop: {link}")
    out, tracking = add_tracking(rendered, message, settings, now=NOW)
    # Same link, once: no footer added, and it is not turned into a click redirect.
    assert out.body.count(link) == 1 and "Unsubscribe:" not in out.body
    assert tracking.unsubscribe_url == link
    assert unsubscribe_link(_input("sms", Topic.TRANSACTIONAL), settings, NOW) is None

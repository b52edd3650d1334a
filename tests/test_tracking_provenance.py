"""Only links written in the template are tracked; URLs that arrive with profile or event data never are.

A customer named `Eve https://evil.example/phish` must not get a signed redirect on the
shop's tracking domain to her phishing page, in any channel (issue 11, item 12).
"""

from __future__ import annotations

import re

import pytest
from temporalio.testing import ActivityEnvironment

from activities.journey import JourneyActivities
from cascade.content.templates import render_content
from cascade.infra.settings import Settings
from cascade.tracking.tokens import add_tracking
from channels.registry import build_channels
from models.activities import SendMessageInput
from models.journey import Button, ChannelName, MessageContent, PushContent
from tests.conftest import seed
from tests.helpers import original_links, outbox

EVE = "Eve https://evil.example/phish"
EVIL = "https://evil.example/phish"
SETTINGS = Settings(public_url="https://t.shop.example", tracking_secret="s" * 32)
REDIRECT = re.compile(r"https://t\.shop\.example/t/c/[A-Za-z0-9_-]+")


def _input(channel: str, content: MessageContent) -> SendMessageInput:
    return SendMessageInput(
        idempotency_key=f"journey/welcome/c-1/run-1/{channel}",
        workflow_id="journey/welcome/c-1",
        run_id="run-1",
        journey="welcome",
        step=0,
        customer_id="c-1",
        channel=ChannelName(channel),
        content=content,
    )


CONTENT = MessageContent(
    subject="Hi {{ name }}",
    body="Hi {{ name }}, see https://shop.example/sale or {{ homepage }}",
    html=(
        "<html><body><p>Hi {{ name }}</p><a href='https://shop.example/sale'>Sale</a>"
        "<a href='{{ homepage }}'>Yours</a> <a href='https://shop.example{{ suffix }}'>x</a></body></html>"
    ),
    url="{{ homepage }}",
    sms="{{ name }}: your cart https://shop.example/cart/{{ cart_id }}",
    messenger="{{ name }}, look: https://shop.example/new",
    push=PushContent(title="Hi", body="{{ name }}"),
    buttons=[
        Button(text="Cart", url="https://shop.example/cart/{{ cart_id }}"),
        Button(text="You", url="{{ homepage }}"),
    ],
)
FIELDS = {
    "name": EVE,
    "homepage": "https://evil.example/home",
    # Appended to a host the template wrote: would make it user@evil.example.
    "suffix": "@evil.example/x",
    "cart_id": "c9",
}


@pytest.mark.parametrize("channel", ["email", "sms", "telegram", "whatsapp", "webpush"])
def test_urls_from_profile_data_are_left_alone_in_every_channel(channel):
    rendered = render_content(CONTENT, FIELDS, channel)
    out, tracking = add_tracking(rendered, _input(channel, CONTENT), SETTINGS)
    # No tracked link leads anywhere but the shop's own host.
    assert tracking.links and all(link.startswith("https://shop.example/") for link in tracking.links)
    assert not any("evil" in link for link in tracking.links)
    texts = [out.body, out.html or "", out.url or "", *(url for _, url in out.buttons)]
    if channel == "email":
        # The customer's name is still printed as she typed it, only not signed by us.
        assert EVIL in out.body and EVIL in (out.html or "")
        assert "href='https://evil.example/home'" in (out.html or "")
        assert "href='https://shop.example@evil.example/x'" in (out.html or "")
    if channel == "sms":
        assert out.body.startswith(f"{EVE}: your cart https://t.shop.example/t/c/")
    if channel in ("telegram", "whatsapp", "webpush"):
        assert out.buttons[0][1].startswith("https://t.shop.example/t/c/")
        assert out.buttons[1][1] == "https://evil.example/home"
    if channel == "webpush":
        assert out.url == "https://evil.example/home"
    # Every redirect we signed stands for one of the shop's links.
    redirects = {m for text in texts for m in REDIRECT.findall(text)}
    assert len(redirects) >= 1 and len(tracking.links) >= 1


def test_template_links_with_data_in_the_path_are_still_tracked():
    content = MessageContent(body="x", url="https://shop.example/p/{{ id }}?ref={{ ref }}")
    rendered = render_content(content, {"id": "42", "ref": "https://evil.example"}, "webpush")
    out, tracking = add_tracking(rendered, _input("webpush", content), SETTINGS)
    assert out.url and out.url.startswith("https://t.shop.example/t/c/")
    assert tracking.links[0].startswith("https://shop.example/p/42?ref=https")


def test_a_host_or_scheme_from_data_is_never_tracked():
    for url in ("{{ x }}://shop.example/a", "https://{{ x }}/a", "https://shop.{{ x }}/a", "http{{ x }}://a.b/"):
        content = MessageContent(body="x", url=url)
        rendered = render_content(content, {"x": "evil.example"}, "webpush")
        out, tracking = add_tracking(rendered, _input("webpush", content), SETTINGS)
        assert tracking.links == [] and out.url == rendered.url, url


def test_markers_never_reach_the_customer():
    # Values carrying the private-use markers themselves cannot fake a template link either.
    fields = {**FIELDS, "name": "\ue001https://evil.example/x\ue000"}
    for channel in ("email", "sms", "telegram"):
        rendered = render_content(CONTENT, fields, channel)
        out, tracking = add_tracking(rendered, _input(channel, CONTENT), SETTINGS)
        for text in (out.body, out.html or "", *(url for _, url in out.buttons)):
            assert "\ue000" not in text and "\ue001" not in text
        assert not any("evil" in link for link in tracking.links)


async def test_the_send_activity_does_not_sign_a_link_from_the_customer_name(any_db, unique_id):
    await seed(any_db, unique_id, name=EVE, email="eve@example.com", sms="+14155552671")
    settings = Settings(public_url="https://t.shop.example")
    acts = JourneyActivities(any_db, build_channels(settings, any_db), settings)
    content = MessageContent(
        subject="Hi", body="Hello {{ name }}: https://shop.example/sale", sms="{{ name }} https://shop.example/s"
    )
    for channel in ("email", "sms"):
        key = f"journey/t/{unique_id}/run-1/{channel}"
        message = SendMessageInput(
            idempotency_key=key,
            workflow_id=f"journey/t/{unique_id}",
            run_id="run-1",
            journey="t",
            step=0,
            customer_id=unique_id,
            channel=ChannelName(channel),
            content=content,
        )
        result = await ActivityEnvironment().run(acts.send_message, message)
        assert result.status == "sent"
        links = await original_links(any_db, key)
        assert len(links) == 1 and links[0].startswith("https://shop.example/")
    sent = await outbox(any_db)
    assert len(sent) == 2 and all(EVIL in m.body for m in sent)

"""Web push (VAPID, aes128gcm) and FCM HTTP v1 (service-account OAuth) against doubles."""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import SecretStr

from cascade.infra.settings import FcmSettings, WebPushSettings
from channels.base import Button, ConfigurationError, OutboundMessage, PermanentSendError, TransientSendError
from channels.fcm import FcmChannel
from channels.webpush import WebPushChannel
from models.tables import ContactStatus
from tests.doubles.fcm import FcmDouble
from tests.doubles.webpush import PushServiceDouble, new_vapid_key


def _msg(to: str, key: str = "journey/w/c-1/run/3", **kw) -> OutboundMessage:
    base = {"title": "Ann, 10% off", "body": "Your code WELCOME10", "url": "https://shop.example/w"}
    return OutboundMessage(channel="push", to=to, idempotency_key=key, **(base | kw))


@pytest.fixture
async def push():
    double = PushServiceDouble()
    async with double.serve():
        channel = WebPushChannel(WebPushSettings(vapid_private_key=SecretStr(new_vapid_key())), cost=0.0001)
        yield double, channel
        await channel.aclose()


async def test_webpush_payload_is_encrypted_for_the_subscriber_and_signed(push):
    double, channel = push
    subscription = double.subscribe()
    receipt = await channel.send(_msg(subscription, image="https://cdn/x.png", buttons=(Button("Shop", "https://s"),)))
    [(_, notification, headers)] = double.delivered
    assert notification["title"] == "Ann, 10% off" and notification["body"] == "Your code WELCOME10"
    assert notification["url"] == "https://shop.example/w" and notification["image"] == "https://cdn/x.png"
    assert notification["actions"] == [{"action": "b0", "title": "Shop", "url": "https://s"}]
    # On the wire it is ciphertext, not the JSON.
    assert b"WELCOME10" not in double.received[0].body
    assert headers["ttl"] == "86400" and len(headers["topic"]) == 32
    assert receipt.provider_message_id.startswith(f"{double.url}/message/")


async def test_webpush_gone_subscription_and_retry_after(push):
    double, channel = push
    with pytest.raises(PermanentSendError) as gone:
        await channel.send(_msg(double.subscribe(state="gone")))
    assert gone.value.contact_status == ContactStatus.INVALID and "410" in gone.value.reason
    throttled = double.subscribe(state="throttled")
    with pytest.raises(TransientSendError) as later:
        await channel.send(_msg(throttled))
    assert later.value.retry_after == 7.0
    await channel.send(_msg(throttled))
    with pytest.raises(PermanentSendError) as broken:
        await channel.send(_msg("not a subscription"))
    assert broken.value.contact_status == ContactStatus.INVALID
    assert len(double.delivered) == 1


async def test_webpush_signed_with_another_key_is_refused_as_configuration(push):
    double, channel = push
    # The browser subscribed with our key; a worker configured with another key is refused.
    subscription = double.subscribe(app_key=channel.application_server_key)
    await channel.send(_msg(subscription))
    der = base64.urlsafe_b64encode(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    ).decode()
    other = WebPushChannel(WebPushSettings(vapid_private_key=SecretStr(der)))
    try:
        with pytest.raises(ConfigurationError) as err:
            await other.send(_msg(subscription))
    finally:
        await other.aclose()
    assert "configuration" in err.value.reason and "403" in err.value.reason
    assert len(double.delivered) == 1


@pytest.fixture
async def fcm():
    double = FcmDouble()
    async with double.serve() as url:
        settings = FcmSettings(
            base_url=url, project_id=double.project_id, service_account_json=SecretStr(double.service_account_json())
        )
        channel = FcmChannel(settings, cost=0.0)
        yield double, channel
        await channel.aclose()


async def test_fcm_oauth_token_is_fetched_once_and_the_message_is_v1(fcm):
    double, channel = fcm
    receipt = await channel.send(_msg("tok-1", image="https://cdn/x.png"))
    await channel.send(_msg("tok-2"))
    assert len(double.tokens_issued) == 1  # cached for the hour
    first = double.messages[0]
    assert first["token"] == "tok-1"
    assert first["notification"] == {
        "title": "Ann, 10% off",
        "body": "Your code WELCOME10",
        "image": "https://cdn/x.png",
    }
    assert (
        first["data"]["url"] == "https://shop.example/w" and first["data"]["idempotency_key"] == "journey/w/c-1/run/3"
    )
    assert first["android"]["collapse_key"] == first["apns"]["headers"]["apns-collapse-id"]
    assert receipt.provider_message_id.startswith("projects/shop-app/messages/")


async def test_fcm_errors_are_classified(fcm):
    _, channel = fcm
    with pytest.raises(PermanentSendError) as dead:
        await channel.send(_msg("dead-token"))
    assert dead.value.contact_status == ContactStatus.INVALID and "UNREGISTERED" in dead.value.reason
    with pytest.raises(PermanentSendError) as bad:
        await channel.send(_msg("bad-token"))
    assert bad.value.contact_status == ContactStatus.INVALID
    with pytest.raises(TransientSendError) as quota:
        await channel.send(_msg("quota-1"))
    assert quota.value.retry_after == 11.0 and "QUOTA_EXCEEDED" in quota.value.reason
    await channel.send(_msg("quota-1"))


async def test_fcm_refused_assertion_is_configuration(fcm):
    double, _ = fcm
    other = FcmDouble()  # another key pair: the token endpoint rejects the signature
    account = other.service_account_json().replace(
        f'"token_uri": "{other.url}/token"', f'"token_uri": "{double.url}/token"'
    )
    channel = FcmChannel(
        FcmSettings(base_url=double.url, project_id="shop-app", service_account_json=SecretStr(account))
    )
    try:
        with pytest.raises(ConfigurationError) as err:
            await channel.send(_msg("tok-1"))
    finally:
        await channel.aclose()
    assert "configuration" in err.value.reason and double.messages == []

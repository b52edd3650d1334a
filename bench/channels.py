"""Messages per second of each channel adapter against its local provider double.

`python bench/channels.py [-n 300] [-c 20]`: for each adapter, starts its double on
127.0.0.1 (a real HTTP server, or aiosmtpd with STARTTLS + AUTH for SMTP), sends n
messages with c in flight through one adapter instance (its pooled connections),
and prints the rate. This measures our side (payload building, encryption, signing,
HTTP/SMTP round trips on loopback), not a provider's real latency; the double runs in
the same process, so the figures are a floor.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import SecretStr

from cascade.infra.settings import (
    FcmSettings,
    SmsRuSettings,
    SmtpSettings,
    TelegramSettings,
    TwilioSettings,
    ViberSettings,
    VkSettings,
    WebPushSettings,
    WhatsAppSettings,
)
from channels.base import Button, Channel, OutboundMessage
from channels.email import SmtpChannel
from channels.fcm import FcmChannel
from channels.sms_ru import SmsRuChannel
from channels.sms_twilio import TwilioSmsChannel
from channels.telegram import TelegramChannel
from channels.viber import ViberChannel
from channels.vk import VkChannel
from channels.voice import TwilioVoiceChannel
from channels.webpush import WebPushChannel
from channels.whatsapp import WhatsAppChannel
from tests.doubles.fcm import FcmDouble
from tests.doubles.smsru import SmsRuDouble
from tests.doubles.smtp import SmtpDouble, smtp_server
from tests.doubles.telegram import TelegramDouble
from tests.doubles.twilio import TwilioDouble
from tests.doubles.viber import ViberDouble
from tests.doubles.vk import VkDouble
from tests.doubles.webpush import PushServiceDouble
from tests.doubles.whatsapp import WhatsAppDouble


async def measure(channel: Channel, to: Callable[[int], str], n: int, concurrency: int, **kw: Any) -> float:
    """Send n messages with `concurrency` in flight; messages per second."""
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with gate:
            await channel.send(
                OutboundMessage(
                    channel=channel.name,
                    to=to(i),
                    body="Hello, Ann! WELCOME10 gives 10% off.",
                    subject="Welcome",
                    html="<p>Hello, <b>Ann</b>!</p>",
                    title="10% off",
                    url="https://shop.example/w",
                    buttons=(Button("Shop", "https://shop.example"),),
                    idempotency_key=f"bench/{i}",
                    **kw,
                )
            )

    await one(-1)  # warm up: connection, TLS, OAuth token
    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    return n / (time.perf_counter() - started)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=300)
    parser.add_argument("-c", "--concurrency", type=int, default=20)
    args = parser.parse_args()
    results: dict[str, float] = {}

    async def run(name: str, make: Callable[[], Awaitable[float]]) -> None:
        results[name] = await make()
        print(f"{name:18s} {results[name]:8.0f} messages/s", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        smtp = SmtpDouble()
        with smtp_server(smtp, Path(tmp)) as (port, ca):
            settings = SmtpSettings(
                port=port, username=smtp.username, password=SecretStr(smtp.password), ca_file=str(ca), pool_size=4
            )
            smtp_channel = SmtpChannel(settings)
            await run(
                "email (SMTP)", lambda: measure(smtp_channel, lambda i: f"c{i}@example.com", args.n, args.concurrency)
            )
            await smtp_channel.aclose()

    async def http(
        name: str, double: Any, build: Callable[[str], Channel], to: Callable[[int], str], **kw: Any
    ) -> None:
        async with double.serve() as url:
            channel = build(url)
            await run(name, lambda: measure(channel, to, args.n, args.concurrency, **kw))
            await channel.aclose()  # type: ignore[attr-defined]

    tw = TwilioDouble()

    def twilio(url: str) -> TwilioSettings:
        return TwilioSettings(
            base_url=url, account_sid=tw.account_sid, auth_token=SecretStr(tw.auth_token), from_number="+15005550006"
        )

    await http("sms (Twilio)", tw, lambda url: TwilioSmsChannel(twilio(url)), lambda i: "+14155552671")
    await http("voice (Twilio)", tw, lambda url: TwilioVoiceChannel(twilio(url)), lambda i: "+14155552671")
    ru = SmsRuDouble()
    await http(
        "sms (SMS.ru)",
        ru,
        lambda url: SmsRuChannel(SmsRuSettings(base_url=url, api_id=SecretStr(ru.api_id))),
        lambda i: "+79991234567",
    )
    tg = TelegramDouble()
    await http(
        "telegram",
        tg,
        lambda url: TelegramChannel(TelegramSettings(base_url=url, bot_token=SecretStr(tg.token))),
        lambda i: str(1000 + i),
    )
    wa = WhatsAppDouble()
    await http(
        "whatsapp",
        wa,
        lambda url: WhatsAppChannel(
            WhatsAppSettings(
                base_url=f"{url}/v21.0", phone_number_id=wa.phone_number_id, access_token=SecretStr(wa.access_token)
            )
        ),
        lambda i: "+4915112345678",
        template_name="welcome_offer",
        template_params=("Ann",),
    )
    vb = ViberDouble()
    await http(
        "viber",
        vb,
        lambda url: ViberChannel(ViberSettings(base_url=url, auth_token=SecretStr(vb.auth_token))),
        lambda i: f"user{i}=",
    )
    vk = VkDouble()
    await http(
        "vk",
        vk,
        lambda url: VkChannel(VkSettings(base_url=url, access_token=SecretStr(vk.access_token))),
        lambda i: str(100000 + i),
    )
    push = PushServiceDouble()
    raw = ec.generate_private_key(ec.SECP256R1()).private_numbers().private_value.to_bytes(32, "big")
    vapid = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    async with push.serve():
        subscriptions = [push.subscribe() for _ in range(20)]
        channel = WebPushChannel(WebPushSettings(vapid_private_key=SecretStr(vapid)))
        await run(
            "webpush (VAPID)", lambda: measure(channel, lambda i: subscriptions[i % 20], args.n, args.concurrency)
        )
        await channel.aclose()
    fcm = FcmDouble()
    async with fcm.serve() as url:
        fcm_channel = FcmChannel(
            FcmSettings(
                base_url=url, project_id=fcm.project_id, service_account_json=SecretStr(fcm.service_account_json())
            )
        )
        await run("fcm (HTTP v1)", lambda: measure(fcm_channel, lambda i: f"tok-{i}", args.n, args.concurrency))
        await fcm_channel.aclose()

    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "channels.json").write_text(json.dumps({"n": args.n, "concurrency": args.concurrency, **results}, indent=1))


if __name__ == "__main__":
    asyncio.run(main())

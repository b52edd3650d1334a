"""Email over SMTP (aiosmtplib): multipart/alternative MIME, one-click unsubscribe.

Connections are pooled and reused (STARTTLS or implicit TLS, SMTP AUTH once per
connection). The Message-ID is derived from the idempotency key, so it is the
provider message id. A relay does not drop a second copy with the same Message-ID,
so SMTP is not an idempotent channel: a session lost after the message data went
out (before the relay's reply) is an unknown outcome, recorded and never repeated;
a failure before that point (connect, AUTH, MAIL, RCPT) sent nothing and is retried.
"""

from __future__ import annotations

import asyncio
import email.policy
import ssl
import time
from email.headerregistry import BaseHeader, HeaderRegistry, UnstructuredHeader
from email.message import EmailMessage
from email.policy import Policy
from email.utils import formatdate
from typing import Any
from urllib.parse import quote

import aiosmtplib

from cascade.infra.settings import SmtpSettings
from channels.base import OutboundMessage, PermanentSendError, SendReceipt, TransientSendError, UnknownOutcomeError
from channels.http import configuration_error
from models.tables import ContactStatus


class _OneLineHeader(UnstructuredHeader, BaseHeader):
    """A header written exactly as given, on one line: never RFC 2047-encoded, never folded.

    RFC 2369 forbids encoded-words in List-Unsubscribe, and mailbox providers look for
    the `<https://...>` literally; the default policy encodes a value longer than 78
    characters (`=?utf-8?q?=3Chttps...`), which hides the one-click link. Our values are
    ASCII URLs well under the 998-character line limit.
    """

    max_count = 1

    @classmethod
    def parse(cls, value: str, kwds: dict[str, Any]) -> None:
        if not value.isascii() or "\r" in value or "\n" in value:
            raise ValueError(f"{kwds.get('name', 'header')}: must be ASCII on one line")
        super().parse(value, kwds)
        kwds["decoded"] = value

    def fold(self, *, policy: Policy) -> str:
        return f"{self.name}: {self}{policy.linesep}"


_HEADERS = HeaderRegistry()
_HEADERS.map_to_type("list-unsubscribe", _OneLineHeader)
_HEADERS.map_to_type("list-unsubscribe-post", _OneLineHeader)
# The default policy with the one-click unsubscribe headers kept raw (see above).
MIME_POLICY = email.policy.default.clone(header_factory=_HEADERS)

# A pooled connection idle longer than this is checked with NOOP before use: servers
# drop idle sessions (often after 60-300 s).
_IDLE_CHECK_SECONDS = 30.0


def build_mime(message: OutboundMessage, settings: SmtpSettings) -> EmailMessage:
    """The MIME message: plain text, HTML alternative, List-Unsubscribe when we have a link."""
    mime = EmailMessage(policy=MIME_POLICY)
    mime["From"] = settings.from_address
    mime["To"] = message.to
    mime["Subject"] = message.subject or ""
    mime["Date"] = formatdate(localtime=False)
    mime["Message-ID"] = message_id(message, settings)
    if settings.reply_to:
        mime["Reply-To"] = settings.reply_to
    if message.unsubscribe_url:
        targets = [f"<{message.unsubscribe_url}>"]
        if settings.unsubscribe_mailto:
            targets.append(f"<mailto:{settings.unsubscribe_mailto}?subject={quote('unsubscribe')}>")
        mime["List-Unsubscribe"] = ", ".join(targets)
        # RFC 8058: mailbox providers POST "List-Unsubscribe=One-Click" to the https URL.
        mime["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    for name, value in message.headers:
        mime[name] = value
    mime.set_content(message.body)
    if message.html:
        mime.add_alternative(message.html, subtype="html")
    return mime


class _TrackedSmtp(aiosmtplib.SMTP):
    """An SMTP client that knows whether the message data has started going out."""

    in_data = False

    async def data(self, message: str | bytes, /, **kwargs: Any) -> aiosmtplib.SMTPResponse:
        self.in_data = True
        return await super().data(message, **kwargs)


def message_id(message: OutboundMessage, settings: SmtpSettings) -> str:
    """`<digest-of-key@domain>`: the same for every attempt at one message."""
    return f"<{message.key_digest()}@{settings.message_id_domain}>"


class SmtpChannel:
    """Sends through one SMTP relay with a small pool of authenticated connections."""

    name = "email"
    idempotent = False

    def __init__(self, settings: SmtpSettings, cost: float = 0.0) -> None:
        self._settings = settings
        self._cost = cost
        self._pool: asyncio.Queue[_TrackedSmtp] = asyncio.Queue()
        self._last_used: dict[int, float] = {}
        for _ in range(max(settings.pool_size, 1)):
            self._pool.put_nowait(self._new_client())

    def _new_client(self) -> _TrackedSmtp:
        s = self._settings
        context = ssl.create_default_context(cafile=s.ca_file) if s.security != "none" else None
        return _TrackedSmtp(
            hostname=s.host,
            port=s.port,
            use_tls=s.security == "tls",
            start_tls=s.security == "starttls",
            tls_context=context,
            timeout=s.timeout_seconds,
        )

    async def _ready(self, client: _TrackedSmtp) -> None:
        """Connect and log in if needed; NOOP-check a connection that sat idle."""
        if client.is_connected and time.monotonic() - self._last_used.get(id(client), 0.0) > _IDLE_CHECK_SECONDS:
            try:
                await client.noop()
            except aiosmtplib.SMTPException:
                client.close()
        if not client.is_connected:
            await client.connect()
            if self._settings.username and self._settings.password is not None:
                await client.login(self._settings.username, self._settings.password.get_secret_value())

    async def aclose(self) -> None:
        """QUIT every open connection."""
        while not self._pool.empty():
            client = self._pool.get_nowait()
            if client.is_connected:
                try:
                    await client.quit()
                except aiosmtplib.SMTPException:
                    client.close()

    async def send(self, message: OutboundMessage) -> SendReceipt:
        """Hand the message to the relay; its Message-ID is the message id."""
        mime = build_mime(message, self._settings)
        client = await self._pool.get()
        client.in_data = False
        try:
            await self._ready(client)
            await client.send_message(mime)
            self._last_used[id(client)] = time.monotonic()
        except aiosmtplib.SMTPResponseException as exc:
            # The relay answered with a code: it did not take the message.
            client.close()
            raise classify(exc) from None
        except (aiosmtplib.SMTPException, OSError) as exc:
            # The session state is unknown after an error: start the next send afresh.
            client.close()
            if client.in_data:
                raise UnknownOutcomeError(f"smtp: session lost after the message data ({type(exc).__name__})") from None
            if isinstance(exc, aiosmtplib.SMTPException):
                raise classify(exc) from None
            raise TransientSendError(f"smtp: connection failed ({type(exc).__name__})") from None
        finally:
            self._pool.put_nowait(client)
        return SendReceipt(provider_message_id=str(mime["Message-ID"]).strip("<>"), cost=self._cost)


def classify(exc: aiosmtplib.SMTPException) -> Exception:
    """SMTP reply codes: 5xx for the recipient is a bounce, 4xx and lost connections retry."""
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused) and exc.recipients:
        first = exc.recipients[0]
        return _by_code(first.code, first.message, recipient=True)
    if isinstance(exc, aiosmtplib.SMTPAuthenticationError):
        return configuration_error("smtp", f"{exc.code} authentication failed")
    if isinstance(exc, aiosmtplib.SMTPSenderRefused):
        return configuration_error("smtp", f"{exc.code} sender refused: {exc.message}")
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return _by_code(exc.code, exc.message, recipient=False)
    # Disconnected, timeout, connect error, TLS failure: nothing was accepted.
    return TransientSendError(f"smtp: {type(exc).__name__}: {exc}")


def _by_code(code: int, text: str, recipient: bool) -> Exception:
    reason = f"{code} {text}".strip()
    if 400 <= code < 500 or code == 552:
        # 4xx: greylisting, mailbox busy, rate limits. 552 (mailbox full) is soft in practice.
        return TransientSendError(f"smtp: {reason}", retry_after=60.0)
    if code >= 500:
        # A refused recipient is a hard bounce; a refused message (5.7.1 policy/spam) is
        # about the content, not the address.
        return PermanentSendError(reason, ContactStatus.BOUNCED if recipient else None)
    return TransientSendError(f"smtp: unexpected reply {reason}")

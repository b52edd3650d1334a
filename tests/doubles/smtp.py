"""A real SMTP server (aiosmtpd) with STARTTLS and AUTH, as an ESP's submission port.

RCPT to `bounce@…` is refused 550 5.1.1, `grey@…` 451 4.7.1 (greylisting); both
replies quote the address, as real MTAs do. `answer_delay` holds the reply to the
message data back after the message was accepted (a lost "250 queued").
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import socket
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@dataclass
class SmtpDouble:
    username: str = "cascade"
    password: str = "smtp-secret"
    messages: list[EmailMessage] = field(default_factory=list)
    # The DATA exactly as it came over the wire (headers as written, before any parsing).
    raw: list[bytes] = field(default_factory=list)
    envelopes: list[tuple[str, list[str]]] = field(default_factory=list)
    sessions: int = 0
    answer_delay: float = 0.0

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        self.sessions += 1
        session.host_name = hostname
        return responses

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]) -> str:
        local = address.split("@")[0].lower()
        if local == "bounce":
            return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown"
        if local == "grey":
            return f"451 4.7.1 <{address}>: Recipient address rejected: Greylisted, please try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
        self.raw.append(bytes(envelope.original_content))
        parsed = message_from_bytes(envelope.original_content, policy=policy.default)
        assert isinstance(parsed, EmailMessage)
        self.messages.append(parsed)
        if self.answer_delay:
            await asyncio.sleep(self.answer_delay)
        return "250 2.0.0 Ok: queued"

    def authenticate(self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
        ok = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login.decode() == self.username
            and auth_data.password.decode() == self.password
        )
        return AuthResult(success=ok, handled=False)


def self_signed(tmp: Path) -> tuple[ssl.SSLContext, Path]:
    """A certificate for 127.0.0.1 and the server context using it; the PEM is the CA to trust."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "smtp-cert.pem", tmp / "smtp-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_path, key_path)
    return context, cert_path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def smtp_server(double: SmtpDouble, tmp: Path) -> Iterator[tuple[int, Path]]:
    """Run the double on 127.0.0.1 with STARTTLS required before AUTH; yields (port, CA file)."""
    context, ca = self_signed(tmp)
    port = free_port()
    controller = Controller(
        double,
        hostname="127.0.0.1",
        port=port,
        tls_context=context,
        require_starttls=True,
        authenticator=double.authenticate,
        auth_required=True,
    )
    controller.start()
    try:
        yield port, ca
    finally:
        controller.stop()

"""Encrypting every Temporal payload with AES-256-GCM, so histories hold no personal data.

Workflow inputs and results, signals, queries, activity inputs and results, memos,
heartbeat details and failure messages pass through `EncryptionCodec` on their way to
the server. Each encrypted payload names the key that encrypted it (metadata
`encryption-key-id`): new payloads use the active key, older ones decode with whichever
key they name, so keys rotate without touching stored histories. Search attributes are
not payloads of the codec: they stay readable (they are indexes) and hold no contact data.

A payload without the codec's encoding (histories from before encryption) passes
through unchanged, so journeys started then keep running and replaying.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import ClassVar

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from temporalio.api.common.v1 import Payload
from temporalio.contrib.pydantic import PydanticPayloadConverter, pydantic_data_converter
from temporalio.converter import DataConverter, DefaultFailureConverterWithEncodedAttributes, PayloadCodec

from cascade.infra.settings import DEV_CODEC_KEY, Settings

ENCODING = b"binary/encrypted"
KEY_ID = "encryption-key-id"
_NONCE_BYTES = 12
KEY_BYTES = 32


class CodecError(ValueError):
    """The keys are misconfigured, or a payload cannot be decrypted with them."""


class MissingKeyError(CodecError):
    """A payload names a key id the keyring does not hold."""


class WrongKeyError(CodecError):
    """A payload names a key id the keyring holds, but that key does not decrypt it."""


class Keyring:
    """AES-256 keys by id, and the id new payloads are encrypted with."""

    def __init__(self, keys: Mapping[str, bytes], active: str) -> None:
        if not keys:
            raise CodecError("CASCADE_CODEC_KEYS is empty: give at least one key (base64 of 32 bytes)")
        for key_id, key in keys.items():
            if not key_id or len(key_id) > 64 or not key_id.isprintable():
                raise CodecError(f"CASCADE_CODEC_KEYS: key id {key_id!r} must be 1-64 printable characters")
            if len(key) != KEY_BYTES:
                raise CodecError(
                    f"CASCADE_CODEC_KEYS[{key_id!r}]: an AES-256 key is {KEY_BYTES} bytes, this one is {len(key)}"
                )
        if active not in keys:
            raise CodecError(
                f"CASCADE_CODEC_KEY_ID={active!r} is not a key id of CASCADE_CODEC_KEYS (ids: {', '.join(keys)})"
            )
        self.active = active
        self._ciphers = {key_id: AESGCM(key) for key_id, key in keys.items()}

    @classmethod
    def from_settings(cls, settings: Settings) -> Keyring:
        """The keyring the settings describe; a CodecError naming the setting when they are wrong."""
        keys: dict[str, bytes] = {}
        for key_id, secret in settings.codec_keys.items():
            try:
                keys[key_id] = base64.b64decode(secret.get_secret_value(), validate=True)
            except (binascii.Error, ValueError):
                raise CodecError(f"CASCADE_CODEC_KEYS[{key_id!r}] is not base64 of {KEY_BYTES} random bytes") from None
        active = settings.codec_key_id or (list(keys)[-1] if keys else "")
        return cls(keys, active)

    @property
    def ids(self) -> list[str]:
        """Every key id this keyring decrypts."""
        return list(self._ciphers)

    def cipher(self, key_id: str) -> AESGCM:
        """The cipher of `key_id`, or MissingKeyError naming it."""
        try:
            return self._ciphers[key_id]
        except KeyError:
            raise MissingKeyError(
                f"a payload was encrypted with key id {key_id!r}, which CASCADE_CODEC_KEYS does not hold "
                f"(ids: {', '.join(self._ciphers)}): add that key back to decrypt it"
            ) from None


def uses_dev_key(settings: Settings) -> bool:
    """True when a configured key is the public dev-only default."""
    return any(secret.get_secret_value() == DEV_CODEC_KEY for secret in settings.codec_keys.values())


def is_encrypted(payload: Payload) -> bool:
    """True when `payload` carries this codec's encoding."""
    return payload.metadata.get("encoding") == ENCODING


class EncryptionCodec(PayloadCodec):
    """AES-256-GCM over each whole serialized payload (data and metadata), keyed by id."""

    def __init__(self, keyring: Keyring) -> None:
        self.keyring = keyring

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        """Encrypt each payload with the active key; the key id travels in clear metadata."""
        key_id = self.keyring.active
        cipher = self.keyring.cipher(key_id)
        out = []
        for payload in payloads:
            nonce = os.urandom(_NONCE_BYTES)
            # The key id is authenticated data: a payload relabelled to another key fails.
            sealed = cipher.encrypt(nonce, payload.SerializeToString(), key_id.encode())
            out.append(Payload(metadata={"encoding": ENCODING, KEY_ID: key_id.encode()}, data=nonce + sealed))
        return out

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        """Decrypt payloads this codec encrypted; pass every other payload through unchanged."""
        return [self.decrypt(payload) if is_encrypted(payload) else payload for payload in payloads]

    def decrypt(self, payload: Payload) -> Payload:
        """One encrypted payload in clear, or MissingKeyError / WrongKeyError naming the key id."""
        key_id = payload.metadata.get(KEY_ID, b"").decode(errors="replace")
        cipher = self.keyring.cipher(key_id)
        try:
            clear = cipher.decrypt(payload.data[:_NONCE_BYTES], payload.data[_NONCE_BYTES:], key_id.encode())
        except InvalidTag:
            raise WrongKeyError(
                f"the key configured as {key_id!r} in CASCADE_CODEC_KEYS does not decrypt payloads encrypted "
                f"with key id {key_id!r}: it is a different key under the same id"
            ) from None
        return Payload.FromString(clear)


class SharedPydanticPayloadConverter(PydanticPayloadConverter):
    """The pydantic payload converter, built once per process and shared.

    The SDK builds a payload converter from the class for every workflow run and twice
    for every workflow activation (its per-command data converters): 16 us each, and
    each one starts with an empty cache of pydantic type adapters. The converter keeps
    no state but that cache, so one instance serves them all (and keeps its adapters).
    """

    _shared: ClassVar[SharedPydanticPayloadConverter | None] = None

    def __new__(cls) -> SharedPydanticPayloadConverter:
        """The one instance, built on first use."""
        if cls._shared is None:
            shared = super().__new__(cls)
            PydanticPayloadConverter.__init__(shared)
            cls._shared = shared
        return cls._shared

    def __init__(self) -> None:
        """Nothing: the instance was built once, in __new__."""


def data_converter(settings: Settings) -> DataConverter:
    """pydantic payloads, encrypted with the settings' keys, failure messages included."""
    return dataclasses.replace(
        pydantic_data_converter,
        payload_converter_class=SharedPydanticPayloadConverter,
        payload_codec=EncryptionCodec(Keyring.from_settings(settings)),
        # Failure messages and stack traces quote addresses and provider texts: encrypt them too.
        failure_converter_class=DefaultFailureConverterWithEncodedAttributes,
    )

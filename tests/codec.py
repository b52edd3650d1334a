"""The data converter every test client and worker uses: the production one, encrypting.

Built from default settings (the dev key), so clients a test builds from its own
Settings through `connect()` read what the shared test servers' clients wrote.
"""

from __future__ import annotations

from collections.abc import Iterator

from google.protobuf.message import Message
from temporalio.api.common.v1 import Payload
from temporalio.client import WorkflowHistory

from cascade.infra.codec import EncryptionCodec, data_converter
from cascade.infra.settings import Settings

CODEC_CONVERTER = data_converter(Settings())


def payloads_in(message: Message) -> Iterator[Payload]:
    """Every Payload anywhere inside a protobuf message (events, failures, markers)."""
    if isinstance(message, Payload):
        yield message
        return
    for field, value in message.ListFields():
        if field.message_type is None:
            continue
        if isinstance(value, Message):
            items = [value]
        elif field.message_type.GetOptions().map_entry:
            items = [v for v in value.values() if isinstance(v, Message)]
        else:
            items = list(value)
        for item in items:
            yield from payloads_in(item)


async def decrypt_history(history: WorkflowHistory) -> WorkflowHistory:
    """`history` with every payload decrypted in place, as an operator's UI shows it."""
    codec = CODEC_CONVERTER.payload_codec
    assert isinstance(codec, EncryptionCodec)
    for event in history.events:
        for payload in payloads_in(event):
            (clear,) = await codec.decode([payload])
            payload.CopyFrom(clear)
    return history

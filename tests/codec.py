"""The data converter every test client and worker uses: the production one, encrypting.

Built from default settings (the dev key), so clients a test builds from its own
Settings through `connect()` read what the shared test servers' clients wrote.
"""

from __future__ import annotations

from cascade.infra.codec import data_converter
from cascade.infra.settings import Settings

CODEC_CONVERTER = data_converter(Settings())

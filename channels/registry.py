"""Which adapter serves each channel name, chosen by configuration."""

from __future__ import annotations

from channels.base import Channel
from channels.sandbox import SandboxChannel
from core.db import Database
from core.settings import Settings
from models.journey import ChannelName


def build_channels(settings: Settings, db: Database) -> dict[str, Channel]:
    """One adapter per channel name; the sandbox until real providers are configured."""
    return {
        name.value: SandboxChannel(name.value, db, cost=settings.channel_costs.get(name.value, 0.0))
        for name in ChannelName
    }

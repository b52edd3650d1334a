"""Task queue names: each channel's sends have a queue of their own, rate-limited per channel."""

from __future__ import annotations


def channel_task_queue(task_queue: str, channel: str) -> str:
    """`cascade` + `sms` -> `cascade-sms`: the queue the channel's send activities run on."""
    return f"{task_queue}-{channel}"

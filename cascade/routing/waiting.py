"""How long to wait for a reaction before escalating to the next channel.

For a marketer: *"A customer who always opens within ten minutes should not wait a day for
the next channel, and a slow reader should not be chased too early. Wait as long as it takes
this customer (or, without enough of their history, customers in general on this channel)
to react nine times out of ten, within the bounds you set."*

Method (:func:`adaptive_wait`):

1. The inputs are reaction delays (send to awaited reaction) of messages that got a reaction:
   the customer's own on this channel and the channel's across customers. Messages without
   a reaction are left out on purpose: the wait answers "of those who will react, by when
   have most of them reacted", not "will they react".
2. ``q_own`` = the customer's ``percentile`` (90th) delay when they have at least
   ``min_own`` (5) delays, else nothing; ``q_channel`` likewise with ``min_channel`` (20).
3. Both known: the customer's figure shrunk toward the channel's on a log scale,
   ``wait = exp(w * ln q_own + (1 - w) * ln q_channel)`` with ``w = n_own / (n_own + k)``,
   ``k = shrinkage`` (5): with 5 own delays the two weigh the same, with 45 the customer's
   weighs 90 %. Log scale because delays spread over orders of magnitude (minutes to days).
   Only one known: that one. Neither: the step's configured `default`.
4. The result is clamped to ``[minimum, maximum]``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import timedelta
from typing import Literal

import numpy as np
from pydantic import BaseModel, Field

# Delays are floored at one second before taking logs (an instant reaction is not "0 s").
_FLOOR_SECONDS = 1.0


class WaitDecision(BaseModel):
    """The wait chosen before escalating, and where it came from."""

    wait: timedelta
    source: Literal["customer", "customer+channel", "channel", "default"]
    percentile: float
    own_samples: int
    channel_samples: int
    own_quantile: timedelta | None
    channel_quantile: timedelta | None
    own_weight: float = Field(description="w in the log-scale blend; 1 = own only, 0 = channel only")
    unclamped: timedelta
    clamped: bool
    reason: str


def _seconds(delays: Sequence[timedelta | float], name: str) -> np.ndarray[tuple[int], np.dtype[np.float64]]:
    values = np.array([d.total_seconds() if isinstance(d, timedelta) else float(d) for d in delays], dtype=np.float64)
    if (values < 0).any() or not np.isfinite(values).all():
        raise ValueError(f"{name}: reaction delays must be finite and not negative")
    return values


def _fmt(d: timedelta) -> str:
    s = d.total_seconds()
    if s < 3600:
        return f"{s / 60:.0f} min"
    if s < 2 * 86400:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} d"


def adaptive_wait(
    own_delays: Sequence[timedelta | float],
    channel_delays: Sequence[timedelta | float],
    *,
    default: timedelta,
    minimum: timedelta,
    maximum: timedelta,
    percentile: float = 90.0,
    min_own: int = 5,
    min_channel: int = 20,
    shrinkage: float = 5.0,
) -> WaitDecision:
    """The wait before escalating (module docstring); delays as timedelta or seconds."""
    if minimum < timedelta(0) or minimum > maximum:
        raise ValueError(f"bounds: need 0 <= minimum <= maximum, got [{minimum}, {maximum}]")
    if not 0 < percentile <= 100:
        raise ValueError(f"percentile must be in (0, 100], got {percentile}")
    if shrinkage < 0 or min_own < 1 or min_channel < 1:
        raise ValueError("shrinkage must be >= 0 and min_own, min_channel >= 1")
    own = _seconds(own_delays, "own_delays")
    channel = _seconds(channel_delays, "channel_delays")
    q_own = float(np.percentile(own, percentile)) if own.size >= min_own else None
    q_ch = float(np.percentile(channel, percentile)) if channel.size >= min_channel else None

    source: Literal["customer", "customer+channel", "channel", "default"]
    weight = 0.0
    if q_own is not None and q_ch is not None:
        weight = own.size / (own.size + shrinkage)
        raw = math.exp(
            weight * math.log(max(q_own, _FLOOR_SECONDS)) + (1 - weight) * math.log(max(q_ch, _FLOOR_SECONDS))
        )
        source = "customer+channel"
    elif q_own is not None:
        raw, weight, source = q_own, 1.0, "customer"
    elif q_ch is not None:
        raw, source = q_ch, "channel"
    else:
        raw, source = default.total_seconds(), "default"

    unclamped = timedelta(seconds=raw)
    wait = min(max(unclamped, minimum), maximum)
    p = f"{percentile:g}th percentile"
    if source == "customer+channel":
        why = f"{p}: own {_fmt(timedelta(seconds=q_own or 0))} ({own.size} reactions, weight {weight:.2f})"
        why += f", channel {_fmt(timedelta(seconds=q_ch or 0))}"
    elif source == "customer":
        why = f"{p} of {own.size} own reactions: {_fmt(unclamped)}"
    elif source == "channel":
        why = f"{p} of the channel's {channel.size} reactions (own history {own.size} < {min_own}): {_fmt(unclamped)}"
    else:
        why = f"too little history (own {own.size}, channel {channel.size}): the step's wait {_fmt(unclamped)}"
    if wait != unclamped:
        why += f", clamped to {_fmt(wait)}"
    return WaitDecision(
        wait=wait,
        source=source,
        percentile=percentile,
        own_samples=int(own.size),
        channel_samples=int(channel.size),
        own_quantile=timedelta(seconds=q_own) if q_own is not None else None,
        channel_quantile=timedelta(seconds=q_ch) if q_ch is not None else None,
        own_weight=weight,
        unclamped=unclamped,
        clamped=wait != unclamped,
        reason=why,
    )

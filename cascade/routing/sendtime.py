"""When to send: the hour of the week this customer reacts, and the next such moment outside quiet hours.

For a marketer: *"Send when this customer usually opens. If they have reacted only a few
times, lean on when customers of their segment react; if we know nothing, send at a sensible
default hour. Never inside quiet hours in the customer's own time zone."*

Method:

1. **Hour of week** = ``weekday * 24 + hour`` of the reaction in the customer's time zone
   (Monday 00:00-00:59 is 0, Sunday 23:00-23:59 is 167).
2. **Own histogram** of the customer's reaction hours, smoothed over neighbouring hours
   with a Gaussian kernel of ``smooth_hours`` (1 h) standard deviation, cut at 4 h, wrapping
   around the week: a reaction at 19:00 also says something about 18:00 and 20:00, and a
   night owl's nearest evening hour outranks an arbitrary morning when quiet hours forbid
   the night. Smoothing keeps the total, ``n`` reactions.
   **Pooled across the days**: a share ``day_pooling`` (0.5) of each own reaction is
   credited to the same hour on every day of the week, ``c_h = (1 - l) * w_h + l * D_{h mod 24} / 7``
   with ``w`` the smoothed weekly counts and ``D`` their sums per hour of the day. Someone
   seen reading at 20:00 on Mondays most likely reads at 20:00 on Tuesdays too; without the
   pooling, a Tuesday step of a customer known only from Mondays had a flat profile and went
   out at whatever hour the previous step's wait ended (bench/routing_fast.py). A weekday
   habit of its own still wins once it is seen: its own hour keeps ``1 - l + l / 7`` of it.
3. **Shrinkage toward the segment** (a Dirichlet prior): with own smoothed counts ``c_h``
   and the segment's hour-of-week distribution ``q_h`` (its reaction counts, normalised),
   the customer's distribution is ``pi_h = (c_h + a * q_h) / (n + a)`` with
   ``a = strength`` pseudo-reactions (24): two own reactions barely move the segment's
   pattern, fifty outweigh it. Without a segment, ``q`` is uniform when the customer has
   reactions of their own.
4. **Fallback** without own history and without segment: a profile peaked at
   ``fallback_hour`` (10:00 local) on every day, ``q_h`` proportional to
   ``1 / (1 + distance in hours to it)``.
5. **Next send time** (:func:`next_send_time`): the candidates are `now`, every full local
   hour in ``(now, now + window]`` and every end of a quiet period in that window; those
   inside quiet hours are dropped; the candidate whose hour of week has the highest
   ``pi_h`` wins, the earliest on a tie. If the whole window is quiet, the first moment
   after it when quiet hours end is chosen (outside the window, flagged), so the chosen
   time is never inside quiet hours.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from typing import Literal, Protocol
from zoneinfo import ZoneInfo

import numpy as np
from numpy.typing import NDArray
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

HOURS_PER_WEEK = 168
DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


class QuietWindow(Protocol):
    """Anything with a local `start` and `end` time (the journey's QuietHours fits)."""

    @property
    def start(self) -> time: ...

    @property
    def end(self) -> time: ...


@dataclass(frozen=True)
class QuietPeriod:
    """No sends from `start` to `end`, local time; start > end runs over midnight (21:00-09:00)."""

    start: time
    end: time

    def __post_init__(self) -> None:
        if self.start == self.end:
            raise ValueError("quiet period: start and end must differ")


def hour_of_week(at: datetime, zone: ZoneInfo) -> int:
    """0..167: Monday 00:00 local is 0."""
    if at.tzinfo is None:
        raise ValueError(f"{at.isoformat()}: a naive time cannot be placed in a time zone")
    local = at.astimezone(zone)
    return local.weekday() * 24 + local.hour


def label(hour: int) -> str:
    """'Tue 19:00' for hour of week 43."""
    return f"{DAYS[hour // 24]} {hour % 24:02d}:00"


def hour_histogram(times: Iterable[datetime], zone: ZoneInfo) -> NDArray[np.float64]:
    """Reaction counts per hour of week in `zone` (to build a segment's distribution, sum these)."""
    counts = np.zeros(HOURS_PER_WEEK, dtype=np.float64)
    for t in times:
        counts[hour_of_week(t, zone)] += 1
    return counts


class HourProfile(BaseModel):
    """A customer's reaction probability per hour of week (168 values summing to 1)."""

    model_config = ConfigDict(frozen=True)

    probabilities: list[float] = Field(min_length=HOURS_PER_WEEK, max_length=HOURS_PER_WEEK)
    own_reactions: int
    source: Literal["customer", "segment", "fallback"]

    def best_hour(self) -> int:
        """The hour of week with the highest probability (the earliest in the week on a tie)."""
        return int(np.argmax(self.probabilities))


def _fallback(fallback_hour: int) -> NDArray[np.float64]:
    hours = np.arange(HOURS_PER_WEEK) % 24
    distance = np.minimum(np.abs(hours - fallback_hour), 24 - np.abs(hours - fallback_hour))
    weights = 1.0 / (1.0 + distance)
    return np.asarray(weights / weights.sum(), dtype=np.float64)


def hour_profile(
    own_reactions: Sequence[datetime],
    zone: ZoneInfo,
    segment_counts: Sequence[float] | NDArray[np.float64] | None = None,
    *,
    strength: float = 24.0,
    smooth_hours: float = 1.0,
    fallback_hour: int = 10,
    day_pooling: float = 0.5,
) -> HourProfile:
    """The customer's hour-of-week distribution, shrunk toward the segment's (module docstring)."""
    if not 0 <= smooth_hours <= 24:
        raise ValueError(f"smooth_hours must be in [0, 24], got {smooth_hours}")
    if strength <= 0:
        raise ValueError(f"strength must be > 0, got {strength}")
    if not 0 <= fallback_hour < 24:
        raise ValueError(f"fallback_hour must be 0..23, got {fallback_hour}")
    if not 0 <= day_pooling <= 1:
        raise ValueError(f"day_pooling must be in [0, 1], got {day_pooling}")
    own = hour_histogram(own_reactions, zone)
    n = float(own.sum())
    if smooth_hours > 0:
        # Imported here, as in cascade/routing/scoring.py: send-time optimisation only.
        from scipy import ndimage

        own = ndimage.gaussian_filter1d(own, sigma=smooth_hours, mode="wrap", truncate=4.0)
    if day_pooling > 0 and n > 0:
        by_hour_of_day = own.reshape(7, 24).sum(axis=0)
        own = (1 - day_pooling) * own + day_pooling * np.tile(by_hour_of_day / 7, 7)

    segment: NDArray[np.float64] | None = None
    if segment_counts is not None:
        seg = np.asarray(segment_counts, dtype=np.float64)
        if seg.shape != (HOURS_PER_WEEK,) or (seg < 0).any():
            raise ValueError(f"segment_counts must be {HOURS_PER_WEEK} non-negative numbers")
        if seg.sum() > 0:
            segment = seg / seg.sum()
    source: Literal["customer", "segment", "fallback"]
    if segment is not None:
        prior, source = segment, "segment"
    elif n > 0:
        prior, source = np.full(HOURS_PER_WEEK, 1 / HOURS_PER_WEEK), "customer"
    else:
        prior, source = _fallback(fallback_hour), "fallback"
    if n > 0:
        source = "customer"
    pi = (own + strength * prior) / (n + strength)
    return HourProfile(probabilities=[float(x) for x in pi], own_reactions=int(n), source=source)


def _inside(quiet: QuietWindow, local: datetime) -> bool:
    t = local.time().replace(tzinfo=None)
    if quiet.start < quiet.end:
        return quiet.start <= t < quiet.end
    return t >= quiet.start or t < quiet.end


def _quiet_ends(quiet: Sequence[QuietWindow], zone: ZoneInfo, start: datetime, stop: datetime) -> list[datetime]:
    """Every end of a quiet period between start and stop (UTC)."""
    ends: list[datetime] = []
    day = start.astimezone(zone).date() - timedelta(days=1)
    last = stop.astimezone(zone).date() + timedelta(days=1)
    while day <= last:
        for q in quiet:
            end = datetime.combine(day, q.end, tzinfo=zone).astimezone(UTC)
            if start < end <= stop:
                ends.append(end)
        day += timedelta(days=1)
    return ends


def _leave_quiet(at: datetime, quiet: Sequence[QuietWindow], zone: ZoneInfo) -> datetime:
    """`at`, or the first moment after it outside every quiet period."""
    for _ in range(len(quiet) * 3 + 1):
        local = at.astimezone(zone)
        inside = [q for q in quiet if _inside(q, local)]
        if not inside:
            return at
        ends = _quiet_ends(inside, zone, at, at + timedelta(days=2))
        at = min(ends)
    raise ValueError("quiet hours cover the whole day; there is no time to send")


class SendTimeDecision(BaseModel):
    """When to send, and why."""

    send_at: AwareDatetime = Field(description="UTC")
    local_time: str = Field(description="the same moment in the customer's zone, ISO 8601")
    hour_of_week: int
    score: float = Field(description="the profile's probability of that hour of week")
    source: Literal["customer", "segment", "fallback"]
    in_window: bool
    reason: str


def next_send_time(
    now: datetime,
    profile: HourProfile,
    zone: ZoneInfo,
    window: timedelta,
    quiet: Sequence[QuietWindow] = (),
) -> SendTimeDecision:
    """The best moment in ``[now, now + window]`` by the profile, never inside quiet hours."""
    if now.tzinfo is None:
        raise ValueError("now must carry a time zone")
    if window < timedelta(0):
        raise ValueError(f"window must not be negative, got {window}")
    now = now.astimezone(UTC)
    stop = now + window
    # Full local hours: floor `now` to the local hour, then step in UTC so DST changes and
    # half-hour zones still land on the local hour.
    local_floor = now.astimezone(zone).replace(minute=0, second=0, microsecond=0).astimezone(UTC)
    candidates = [now]
    t = local_floor + timedelta(hours=1)
    while t <= stop:
        candidates.append(t)
        t += timedelta(hours=1)
    candidates += _quiet_ends(quiet, zone, now, stop)
    candidates = sorted(set(candidates))
    allowed = [c for c in candidates if not any(_inside(q, c.astimezone(zone)) for q in quiet)]

    in_window = bool(allowed)
    if allowed:
        scores = [profile.probabilities[hour_of_week(c, zone)] for c in allowed]
        chosen = allowed[int(np.argmax(scores))]
    else:
        chosen = _leave_quiet(stop, quiet, zone)
    how = hour_of_week(chosen, zone)
    score = profile.probabilities[how]
    if not in_window:
        why = f"the whole window is in quiet hours; first moment after: {label(how)} local"
    elif profile.source == "customer":
        why = f"{label(how)} local: best hour in the window from {profile.own_reactions} own reactions"
    elif profile.source == "segment":
        why = f"{label(how)} local: no own reactions, best hour of the segment in the window"
    else:
        why = f"{label(how)} local: no history, closest to the default hour in the window"
    return SendTimeDecision(
        send_at=chosen,
        local_time=chosen.astimezone(zone).isoformat(),
        hour_of_week=how,
        score=score,
        source=profile.source,
        in_window=in_window,
        reason=why,
    )


def preview(decisions: Iterable[SendTimeDecision]) -> dict[str, int]:
    """How many customers of a segment get each local send hour ('Tue 19:00': 42), busiest first."""
    counts = Counter(label(d.hour_of_week) for d in decisions)
    return dict(counts.most_common())

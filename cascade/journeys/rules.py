"""The rules every journey step obeys, as pure functions over data read beforehand.

Entry and step conditions, quiet hours in the customer's time zone, frequency caps
across all journeys, and "stay where active". The check_contact activity reads the
data in a few queries and asks these functions; the workflow only sees the verdict
(usable, skip, or wake up at a given time), so it stays deterministic.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from models.journey import Condition, FrequencyCap, QuietHours

_MISSING = object()


def field_value(name: str, profile: Mapping[str, Any], event: Mapping[str, Any]) -> Any:
    """The value `name` points at: `event.x` in the event, `attributes.x` or a profile field.

    A bare name not on the profile falls back to the event, so `cart_value` works too.
    """
    if name.startswith("event."):
        return _dig(event, name.removeprefix("event."))
    value = _dig(profile, name)
    if value is _MISSING:
        value = _dig(event, name)
    return value


def _dig(data: Mapping[str, Any], dotted: str) -> Any:
    current: Any = data
    for part in dotted.split("."):
        if not isinstance(current, Mapping) or part not in current:
            return _MISSING
        current = current[part]
    return current


def _as_datetime(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    if isinstance(value, str):
        try:
            return _as_datetime(datetime.fromisoformat(value))
        except ValueError:
            return None
    return None


def condition_holds(cond: Condition, profile: Mapping[str, Any], event: Mapping[str, Any], now: datetime) -> bool:
    """Whether one condition holds; a missing field fails every test but `missing`."""
    value = field_value(cond.field, profile, event)
    if cond.op == "missing":
        return value is _MISSING or value is None
    if cond.op == "exists":
        return value is not _MISSING and value is not None
    if value is _MISSING or value is None:
        # "Never bought" counts as long ago: a win-back or "not loyal" test passes.
        return cond.op in ("older_than", "ne", "not_in")
    try:
        match cond.op:
            case "eq":
                return bool(value == cond.value)
            case "ne":
                return bool(value != cond.value)
            case "gt":
                return bool(value > cond.value)
            case "gte":
                return bool(value >= cond.value)
            case "lt":
                return bool(value < cond.value)
            case "lte":
                return bool(value <= cond.value)
            case "in":
                return value in cond.value
            case "not_in":
                return value not in cond.value
            case "contains":
                return cond.value in value
            case "older_than" | "within":
                at = _as_datetime(value)
                if at is None:
                    return False
                age = now - at
                limit = timedelta(seconds=float(cond.value))
                return age > limit if cond.op == "older_than" else age <= limit
    except TypeError:
        # Comparing a number with a string (a typo in the data): the test fails, no crash.
        return False
    return False


def failed_condition(
    conditions: Iterable[Condition], profile: Mapping[str, Any], event: Mapping[str, Any], now: datetime
) -> Condition | None:
    """The first condition that does not hold, or None when all do."""
    for cond in conditions:
        if not condition_holds(cond, profile, event, now):
            return cond
    return None


def describe(cond: Condition) -> str:
    """`purchase_count lt 3` for logs and skip reasons."""
    return f"{cond.field} {cond.op} {cond.value}" if cond.value is not None else f"{cond.field} {cond.op}"


def customer_zone(name: str | None) -> ZoneInfo:
    """The customer's time zone; an unknown name falls back to UTC instead of failing a send."""
    try:
        return ZoneInfo(name or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def quiet_hours_end(quiet: QuietHours, channel: str, zone: ZoneInfo, now: datetime) -> datetime | None:
    """When the quiet window that `now` falls in ends (UTC), or None if sending is fine now."""
    if quiet.channels is not None and channel not in quiet.channels:
        return None
    local = now.astimezone(zone)
    t = local.time().replace(tzinfo=None)
    # A window with start > end runs over midnight, e.g. 21:00-09:00.
    inside = quiet.start <= t < quiet.end if quiet.start < quiet.end else t >= quiet.start or t < quiet.end
    if not inside:
        return None
    end = datetime.combine(local.date(), quiet.end, tzinfo=zone)
    if end <= local:
        end = datetime.combine(local.date() + timedelta(days=1), quiet.end, tzinfo=zone)
    return end.astimezone(UTC)


def cap_frees_at(cap: FrequencyCap, sent_times: Sequence[datetime], now: datetime) -> datetime | None:
    """When the next marketing message may go out under `cap`, or None if it may go now.

    `sent_times` are the customer's marketing sends (any journey); once `max` of them
    lie inside the window, the next slot opens when the oldest of those leaves it.
    """
    window = [t for t in (_as_datetime(s) for s in sent_times) if t is not None and now - cap.per < t <= now]
    if len(window) < cap.max:
        return None
    window.sort()
    return window[len(window) - cap.max] + cap.per


def active_channels(reactions: Iterable[tuple[str, datetime]], now: datetime, days: int) -> tuple[set[str], set[str]]:
    """Channels the customer reacted in within `days`, and channels they ever reacted in."""
    recent: set[str] = set()
    ever: set[str] = set()
    for channel, at in reactions:
        ever.add(channel)
        when = _as_datetime(at)
        if when is not None and now - when <= timedelta(days=days):
            recent.add(channel)
    return recent, ever


def stay_channels(
    reactions: Iterable[tuple[str, datetime]], now: datetime, days: int, journey_channels: Iterable[str]
) -> set[str] | None:
    """The channels this customer should be kept on, or None to run the cascade as written.

    Recently active channels win; a customer who only ever reacted in one channel
    stays in it. Applies only when the journey can reach them there at all, so a
    journey without that channel still reaches them elsewhere.
    """
    recent, ever = active_channels(reactions, now, days)
    chosen = recent or (ever if len(ever) == 1 else set())
    usable = chosen & set(journey_channels)
    return usable or None

"""Identifiers and numbers the outside world hands us: one rule each, used everywhere.

A customer id names a profile, appears in every workflow id
(`journey/<journey>/<customer>[/<key>]`), in search attributes, log lines and the CLI.
So it is short printable ASCII: letters, digits and `_ . : @ + -`, starting with a
letter or digit, at most 128 characters. No `/` (workflow ids are split on it), no
spaces, no control or bidi characters (a U+202E in an id makes a log line lie).

A run key (the `key` of `start_journey`, e.g. a cart id) may be any text of 1-128
characters except `/` and control/format characters, so that the parts of a workflow
id can always be told apart.

Other ids we are handed (event ids, provider message ids, tokens) may be any text
without spaces and without control or format characters: PostgreSQL refuses a NUL in
a text column, and an invisible character makes two ids look the same.

Numbers: whatever the API stores must fit the column it goes to (INTEGER for a
profile's totals) and a JSON number every reader keeps exactly, so free-form numbers
are limited to +/-(2**53 - 1) and must be finite; the typed ones have tighter bounds
of their own below.
"""

from __future__ import annotations

import math
import re
import unicodedata
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from pydantic import AfterValidator, Field

CUSTOMER_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:@+-]{0,127}$"
_CUSTOMER_ID = re.compile(CUSTOMER_ID_PATTERN)


# The largest integer every JSON reader (JavaScript included) keeps exactly.
MAX_JSON_INT = 2**53 - 1
# Typed bounds: far above any real shop, and below the INTEGER (int32) columns they are
# stored in, so a saturating total can always be written.
MAX_LOYALTY_POINTS = 10**9
MAX_POINTS_PER_EVENT = 10**7
MAX_PURCHASE_COUNT = 10**9
MAX_AMOUNT = 10**12
# Keys of a loyalty loop's rounds are `<loop workflow id>/round-<n>`: a run key of that
# shape would name a round of another loop of the same journey.
_ROUND = re.compile(r"round-[0-9]+")


def is_customer_id(value: object) -> bool:
    """Whether `value` is a customer id by the rule above."""
    return isinstance(value, str) and _CUSTOMER_ID.fullmatch(value) is not None


def check_customer_id(value: str) -> str:
    """`value` if it is a valid customer id, else ValueError saying what is wrong."""
    if not is_customer_id(value):
        raise ValueError(
            f"customer id {_shown(value)}: use 1-128 letters, digits and _ . : @ + - "
            "(starting with a letter or digit; no '/', spaces or control characters)"
        )
    return value


def _shown(value: str) -> str:
    # repr() escapes control and bidi characters; a long value is cut so the message stays short.
    return repr(value) if len(value) <= 40 else repr(value[:40]) + "..."


def _is_hidden(char: str) -> bool:
    # Cc control (NUL, newline), Cf format (bidi overrides, zero-width), Zl/Zp line and
    # paragraph separators, Cs/Co/Cn surrogates, private-use and unassigned code points.
    return unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn")


def is_visible_id(value: object) -> bool:
    """Whether `value` is non-empty text with no whitespace, control or format characters."""
    return isinstance(value, str) and bool(value) and not any(c.isspace() or _is_hidden(c) for c in value)


def _visible_id(value: str) -> str:
    if not is_visible_id(value):
        raise ValueError(f"{_shown(value)}: must not contain spaces, control or invisible characters")
    return value


# An id another system hands us (event id, provider message id, webhook token).
VisibleId = Annotated[str, AfterValidator(_visible_id)]


def check_run_key(value: str, *, loop: bool = False) -> str:
    """`value` if it can be a run key (1-128 characters, no '/', nothing invisible), else ValueError."""
    if not 1 <= len(value) <= 128 or "/" in value or any(_is_hidden(c) for c in value):
        raise ValueError(f"key {_shown(value)}: must be 1-128 characters without '/' or control characters")
    if loop and _ROUND.fullmatch(value):
        raise ValueError(f"key {value!r}: keys of the form round-<n> are reserved for the rounds of a loop")
    return value


class NestedValueError(ValueError):
    """A ValueError about a part of a field (`properties.amount`): `path` names the part.

    pydantic keeps the exception in the error's context, so an API can report the
    full path as the field; everyone else reads `path: message` in its text.
    """

    def __init__(self, path: tuple[str | int, ...], message: str) -> None:
        self.path = path
        self.message = message
        super().__init__(f"{'.'.join(map(str, path))}: {message}" if path else message)


def _check_json_numbers(value: Any, path: tuple[str | int, ...]) -> None:
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return
    if isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            raise NestedValueError(path, "must be a finite number")
        if abs(value) > MAX_JSON_INT:
            raise NestedValueError(path, f"{value!r} is out of range (at most {MAX_JSON_INT} in magnitude)")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            _check_json_numbers(item, (*path, str(key)))
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _check_json_numbers(item, (*path, index))


def _bounded_json_object(value: dict[str, Any]) -> dict[str, Any]:
    _check_json_numbers(value, ())
    return value


# A free-form object (event properties, custom attributes) with every number bounded.
BoundedJson = Annotated[dict[str, Any], AfterValidator(_bounded_json_object)]

# When an event may have happened: not before 1970 and not more than a day ahead (clock
# skew). Year 1 or 9999 with a UTC offset cannot even be stored, and a purchase dated
# 9999 would pin `last_purchase_at` there for good.
EARLIEST_EVENT = datetime(1970, 1, 1, tzinfo=UTC)
FUTURE_SKEW = timedelta(days=1)


def check_event_time(value: datetime | None) -> datetime | None:
    """`value` if it lies between 1970 and a day from now (a naive time is read as UTC)."""
    if value is None:
        return None
    aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    if not EARLIEST_EVENT <= aware <= datetime.now(UTC) + FUTURE_SKEW:
        raise ValueError("must be between 1970-01-01 and one day from now")
    return value


# The one customer id type: profiles, events, imports. The message names the rule, and
# the schema carries the pattern so API clients (and schemathesis) know it.
CustomerId = Annotated[
    str,
    AfterValidator(check_customer_id),
    Field(
        description="Letters, digits and _ . : @ + - (starting with a letter or digit), at most 128 characters",
        examples=["c-42"],
        json_schema_extra={"pattern": CUSTOMER_ID_PATTERN, "minLength": 1, "maxLength": 128},
    ),
]

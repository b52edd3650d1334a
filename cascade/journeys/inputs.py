"""What a journey's workflow carries: its id, and the slice of context it may read.

Shared by the start API (cascade/journeys/service.py) and the event triggers
(cascade/journeys/triggers.py), so neither has to import the other for them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cascade.content.templates import template_fields as template_names
from models.journey import JourneySpec


class UnknownCustomerError(LookupError):
    """The customer id is not in the profile database; nothing was started."""


def journey_workflow_id(journey: str, customer_id: str, key: str | None = None) -> str:
    """`journey/<journey>/<customer>[/<key>]`: one running journey per customer and key.

    Journey names, customer ids and keys never contain '/' (models/ids.py), so the parts
    can always be read back: two different (journey, customer, key) never share an id.
    """
    base = f"journey/{journey}/{customer_id}"
    return f"{base}/{key}" if key else base


def context_fields(spec: JourneySpec) -> set[str]:
    """The names a journey reads from its context: template fields and step conditions.

    Top-level names only (`cart` for `{{ cart.total }}` or `event.cart.total`): the
    value under such a name is passed whole.
    """
    names: set[str] = set()
    for step in spec.steps:
        for _, source in step.content.template_sources():
            names |= template_names(source)
        for cond in step.when:
            names.add(cond.field.removeprefix("event.").split(".", 1)[0])
    return names


def journey_context(spec: JourneySpec, data: Mapping[str, Any]) -> dict[str, Any]:
    """Only the entries of `data` the journey uses: nothing else enters its (readable)
    workflow input, so an event's email, phone or street address stays out of Temporal."""
    used = context_fields(spec)
    return {k: v for k, v in data.items() if k in used}

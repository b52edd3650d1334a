"""Typed search attributes an operator filters journeys by in the Temporal UI and CLI.

Names must not shadow Temporal's own list-query fields (`ExecutionStatus`, `StartTime`,
`WorkflowType`, ...): the visibility query parser reads `Status` as a system field and
rejects `Status="waiting"` ("invalid search attribute: status"), so the journey's status
is `JourneyStatus`.
"""

from __future__ import annotations

from typing import Any

from temporalio.common import SearchAttributeKey

CUSTOMER_ID = SearchAttributeKey.for_keyword("CustomerId")
JOURNEY = SearchAttributeKey.for_keyword("Journey")
CAMPAIGN = SearchAttributeKey.for_keyword("Campaign")
CHANNEL = SearchAttributeKey.for_keyword("Channel")
STEP = SearchAttributeKey.for_int("Step")
JOURNEY_STATUS = SearchAttributeKey.for_keyword("JourneyStatus")
VARIANT = SearchAttributeKey.for_keyword("Variant")

# Every attribute the code writes (workflow upserts, the starter's initial values).
ALL: tuple[SearchAttributeKey[Any], ...] = (CUSTOMER_ID, JOURNEY, CAMPAIGN, CHANNEL, STEP, JOURNEY_STATUS, VARIANT)

# Written by the release before the rename; nothing here writes it now. Journeys started
# then carry it from their start, and during a rolling upgrade a worker of the old release
# may still upsert it: an upsert of an unregistered attribute fails the workflow task, so
# the dev server and the compose stack keep registering it for now.
RETIRED: tuple[SearchAttributeKey[Any], ...] = (SearchAttributeKey.for_keyword("Status"),)

# What a server must have registered for this release and the one before it.
REGISTERED: tuple[SearchAttributeKey[Any], ...] = ALL + RETIRED


def type_name(key: SearchAttributeKey[Any]) -> str:
    """The attribute's type as the Temporal CLI spells it (`Keyword`, `Int`, ...)."""
    return key.indexed_value_type.name.title()


def dev_server_flags() -> list[str]:
    """`--search-attribute Name=Type` flags that register REGISTERED on `temporal server start-dev`."""
    flags: list[str] = []
    for key in REGISTERED:
        flags += ["--search-attribute", f"{key.name}={type_name(key)}"]
    return flags

"""Typed search attributes an operator filters journeys by in the Temporal UI and CLI."""

from __future__ import annotations

from typing import Any

from temporalio.common import SearchAttributeKey

CUSTOMER_ID = SearchAttributeKey.for_keyword("CustomerId")
JOURNEY = SearchAttributeKey.for_keyword("Journey")
CAMPAIGN = SearchAttributeKey.for_keyword("Campaign")
CHANNEL = SearchAttributeKey.for_keyword("Channel")
STEP = SearchAttributeKey.for_int("Step")
STATUS = SearchAttributeKey.for_keyword("Status")
VARIANT = SearchAttributeKey.for_keyword("Variant")

ALL: tuple[SearchAttributeKey[Any], ...] = (CUSTOMER_ID, JOURNEY, CAMPAIGN, CHANNEL, STEP, STATUS, VARIANT)


def dev_server_flags() -> list[str]:
    """`--search-attribute Name=Type` flags that register ALL on `temporal server start-dev`."""
    flags: list[str] = []
    for key in ALL:
        flags += ["--search-attribute", f"{key.name}={key.indexed_value_type.name.title()}"]
    return flags

"""The demo's six sample customers (c-1001..c-1006) and how some of them react."""

from __future__ import annotations

from cascade.simulator import Reaction
from models.profiles import ContactIn, CustomerProfile
from models.tables import ContactStatus


def _c(channel: str, address: str, status: ContactStatus = ContactStatus.VALID) -> ContactIn:
    # An explicit status on every contact: each `make run` resets what an earlier run
    # learnt (a bounce, a block), so the demo shows the same story every time.
    return ContactIn.model_validate({"channel": channel, "address": address, "status": status})


CUSTOMERS = [
    CustomerProfile(
        id="c-1001",
        name="Anna",
        contacts=[_c("email", "anna@example.com"), _c("telegram", "1001"), _c("sms", "+14155550101")],
    ),
    CustomerProfile(
        id="c-1002",
        name="Boris",
        contacts=[_c("email", "boris@example.com"), _c("telegram", "1002"), _c("sms", "+14155550102")],
    ),
    CustomerProfile(
        id="c-1003",
        name="Chen",
        contacts=[_c("email", "chen@example.com"), _c("telegram", "1003"), _c("sms", "+14155550103")],
    ),
    CustomerProfile(
        id="c-1004",
        name="Dana",
        contacts=[
            _c("email", "dana@example.com", status=ContactStatus.UNSUBSCRIBED),
            _c("telegram", "1004"),
            _c("sms", "+14155550104"),
        ],
    ),
    CustomerProfile(
        id="c-1005",
        name="Emil",
        # The demo's email double bounces addresses with "+bounce".
        contacts=[_c("email", "emil+bounce@example.com"), _c("sms", "+14155550105")],
    ),
    CustomerProfile(
        id="c-1006",
        name="Farida",
        # The demo's Telegram double refuses chats named "blocked-...".
        contacts=[_c("email", "farida@example.com"), _c("telegram", "blocked-1006"), _c("sms", "+14155550106")],
    ),
]

# Scripted rather than drawn from a Population: the demo tells the same story every run.
REACTIONS = [
    Reaction("c-1001", 0, "opened"),  # reads the email: cascade stops at once
    Reaction("c-1002", 1, "clicked"),  # ignores the email, clicks in Telegram
    Reaction("c-1004", 1, "converted", by_workflow_id=True),  # buys after the Telegram message
    Reaction("c-1006", 2, "converted", by_workflow_id=True),  # buys after the SMS
]

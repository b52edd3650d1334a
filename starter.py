"""`start_journey(...)` for application code, and the old `python starter.py <verb>` alias.

Application code: `from starter import start_journey` (the design card's API; it lives in
cascade/journeys/service.py). The command line is `cascade journeys ...` (cascade/cli/); this
script keeps the verbs it always had, flat, by delegating to the same commands:

python starter.py start c-1001 welcome           = cascade journeys start c-1001 welcome
python starter.py status journey/welcome/c-1001  = cascade journeys status ...
python starter.py list|cancel|validate|show      = cascade journeys list|cancel|validate|show
python starter.py event c-1001 registered        = cascade events send c-1001 registered
python starter.py schedules apply|list|delete    = cascade schedules apply|list|delete
python starter.py channels                       = cascade channels status
"""

from __future__ import annotations

from typing import Annotated

import typer

from cascade.cli import channels, events, journeys, schedules
from cascade.cli.common import command, fail, group, run_and_exit
from cascade.journeys.service import (
    TemplateFieldError,
    UnknownCustomerError,
    journey_state,
    journey_workflow_id,
    start_journey,
)

__all__ = ["TemplateFieldError", "UnknownCustomerError", "journey_state", "journey_workflow_id", "start_journey"]

cli = group("Start, inspect and cancel Cascade journeys (an alias of `cascade journeys`; see `cascade --help`).")
for verb in (journeys.start, journeys.status, journeys.cancel, journeys.validate, journeys.show):
    command(cli)(verb)
command(cli, "list")(journeys.list_journeys)
command(cli, "event")(events.send)
command(cli, "channels")(channels.status)

_SCHEDULE_ACTIONS = {"apply": schedules.apply, "list": schedules.list_, "delete": schedules.delete}


@command(cli, "schedules")
def schedules_alias(action: Annotated[str, typer.Argument(help="apply, list or delete")]) -> None:
    """Manage the Temporal Schedules of the time-based journeys (= cascade schedules ACTION)."""
    if action not in _SCHEDULE_ACTIONS:
        fail(f"unknown action {action!r}: apply, list or delete")
    _SCHEDULE_ACTIONS[action]()


if __name__ == "__main__":
    run_and_exit(cli)

"""What every command group shares: the group factory, output, errors and name=value parsing."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import typer
from rich.console import Console
from typer.core import TyperCommand, TyperGroup, TyperOption

F = TypeVar("F", bound=Callable[..., Any])

console = Console()
errors = Console(stderr=True)


def _hide_flag_types(params: list[Any]) -> list[Any]:
    # Typer's rich help prints a type such as `<bool>` next to every flag, --help included,
    # as if the flag took a value. An empty metavar leaves that column blank for flags only.
    for param in params:
        if isinstance(param, TyperOption) and param.is_flag and param.metavar is None:
            param.metavar = ""
    return params


class Command(TyperCommand):
    """A typer command whose help shows no value placeholder after a flag."""

    def get_params(self, ctx: Any) -> list[Any]:
        """The command's parameters, flags without a type placeholder."""
        return _hide_flag_types(super().get_params(ctx))


class Group(TyperGroup):
    """A typer group whose help shows no value placeholder after a flag."""

    def get_params(self, ctx: Any) -> list[Any]:
        """The group's parameters, flags without a type placeholder."""
        return _hide_flag_types(super().get_params(ctx))


def group(help: str) -> typer.Typer:
    """A command group with the tool's conventions: help on no arguments, -h/--help, clean flags."""
    return typer.Typer(
        help=help,
        cls=Group,
        no_args_is_help=True,
        add_completion=False,
        context_settings={"help_option_names": ["-h", "--help"]},
    )


def command(app: typer.Typer, name: str | None = None) -> Callable[[F], F]:
    """`@command(app)`: register a function as a command of `app` with the tool's help style."""
    register: Callable[[F], F] = app.command(name, cls=Command)
    return register


def run_and_exit(app: typer.Typer | Callable[[], Any], prog_name: str | None = None) -> NoReturn:
    """Run a command-line app, then end the process without the interpreter's teardown.

    Temporal's client keeps threads of its native runtime alive until the process ends. A
    short-lived command that lets Python finalise with them running is aborted now and then
    ("Fatal Python error: PyGILState_Release ... finalizing", SIGABRT; temporalio/sdk-python
    issue 300) after its work is done, so a script would see exit status -6 for a command
    that succeeded. Output is flushed, then the process exits with the command's status.
    """
    code: int = 0
    try:
        if isinstance(app, typer.Typer):
            app(prog_name=prog_name)
        else:
            app()
    except SystemExit as stop:
        if isinstance(stop.code, int):
            code = stop.code
        elif stop.code is not None:
            print(stop.code, file=sys.stderr)
            code = 1
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def fail(message: str, status: int = 2, out: Console = console) -> NoReturn:
    """Print an error (no stack trace) on `out` and exit with `status`."""
    out.print(f"[red]error:[/red] {escape(message)}", highlight=False)
    raise typer.Exit(status)


def escape(text: str) -> str:
    """Text shown as is, not read as rich markup (journey errors quote `[fields]`)."""
    return text.replace("[", "\\[")


def parse_pairs(items: list[str], option: str) -> dict[str, Any]:
    """`name=value` options as a dict; a value that parses as JSON keeps its type (120 -> int)."""
    values: dict[str, Any] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            fail(f"{option} {item!r}: expected name=value")
        try:
            values[name] = json.loads(value)
        except json.JSONDecodeError:
            values[name] = value
    return values

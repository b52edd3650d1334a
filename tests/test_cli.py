"""The `cascade` tool: every group and verb has readable help, the old scripts are aliases of
the same commands, `status` says why a journey ended, and an import that rejects rows
leaves the summary, not a frozen progress bar."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import typer
from rich.console import Console
from typer.testing import CliRunner

import starter
from cascade.cli import common, journeys
from cascade.cli.main import app
from cascade.infra.settings import PROJECT_ROOT
from models.journey import ChannelName, JourneyState, Outcome, StepRecord, StepStatus

runner = CliRunner()


def _verbs() -> list[list[str]]:
    group = typer.main.get_group(app)
    found: list[list[str]] = [[]]
    for name, sub in group.commands.items():
        found.append([name])
        found += [[name, verb] for verb in getattr(sub, "commands", {})]
    return found


def test_every_group_has_verbs_and_the_planned_groups_exist():
    verbs = _verbs()
    groups = {v[0] for v in verbs if len(v) == 1}
    assert {"journeys", "customers", "events", "schedules", "channels", "keys"} <= groups
    for name in groups:
        assert any(len(v) == 2 and v[0] == name for v in verbs), f"group {name} has no verb"
    assert {"start", "status", "list", "cancel", "validate", "show"} <= {
        v[1] for v in verbs if len(v) == 2 and v[0] == "journeys"
    }


@pytest.mark.parametrize("path", _verbs(), ids=lambda p: " ".join(p) or "cascade")
def test_help_reads_well_without_value_placeholders_on_flags(path):
    result = runner.invoke(app, [*path, "--help"], prog_name="cascade", env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    assert "Usage: cascade" in result.output
    # A flag takes no value; typer's rich help would print `--help <bool>`.
    assert "<bool>" not in result.output
    assert "Show this message and exit." in result.output


def test_the_old_starter_script_keeps_its_verbs_as_aliases_of_the_same_commands():
    group = typer.main.get_group(starter.cli)
    assert set(group.commands) == {
        "start", "status", "list", "cancel", "validate", "show", "event", "schedules", "channels",
    }  # fmt: skip
    # typer wraps the callback; the original function is what it wraps.
    assert getattr(group.commands["status"].callback, "__wrapped__", None) is journeys.status


def test_status_shows_why_a_journey_ended(monkeypatch):
    recorder = Console(record=True, width=200)
    monkeypatch.setattr(journeys, "console", recorder)
    state = JourneyState(
        journey="welcome",
        customer_id="c-1001",
        status="finished",
        steps=[StepRecord(index=0, channel=ChannelName.EMAIL, status=StepStatus.SENT)],
        outcome=Outcome.CANCELLED,
        outcome_reason="asked by [support]",
    )
    journeys._print_state("journey/welcome/c-1001", state)
    text = recorder.export_text()
    assert "cancelled" in text and "reason: asked by [support]" in text


def test_parse_pairs_keeps_json_types_and_names_a_bad_item():
    assert common.parse_pairs(["cart_id=A9", "cart_value=120"], "--context") == {"cart_id": "A9", "cart_value": 120}
    with pytest.raises(typer.Exit):
        common.parse_pairs(["novalue"], "--context")


def test_an_import_with_rejected_rows_ends_with_the_summary_not_a_frozen_bar(tmp_path: Path):
    bad = tmp_path / "bad.csv"
    bad.write_text("id,name,email\nc1,Ann,ann@example.com\nc2,Bob,not-an-email\n")
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}", "COLUMNS": "200"}
    result = subprocess.run(
        [sys.executable, "-m", "cascade.cli", "customers", "import", str(bad)],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1, result.stderr
    assert "0/2" not in result.stderr and "importing" not in result.stderr, result.stderr
    assert "line 3" in result.stderr or " 3 " in result.stderr, result.stderr
    assert result.stderr.rstrip().endswith("--skip-invalid") and result.stderr.endswith("\n")


def test_the_console_script_is_the_tool():
    scripts = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, _, name = scripts["cascade"].partition(":")
    # `main` runs `app` and ends the process without interpreter teardown (run_and_exit).
    assert module == "cascade.cli.main" and name == "main"
    assert runner.invoke(app, ["journeys", "validate", "demo"]).exit_code == 0
    ran = subprocess.run(
        [sys.executable, "-c", "from cascade.cli.main import main; main()", "journeys", "validate", "nope.yaml"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ran.returncode == 1 and "nope.yaml" in ran.stdout + ran.stderr, ran.stdout + ran.stderr

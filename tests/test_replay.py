"""Stored histories must replay on the current workflow code.

A change that would break journeys already running (a new activity before an old
one, a removed timer) fails here; guard it with `workflow.patched` instead.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from temporalio import workflow
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer

from models.journey import JourneyInput, JourneyResult
from workflows.registry import WORKFLOWS  # every workflow the worker runs

# This module is loaded into the workflow sandbox (ReorderedCascade below): the codec's
# cryptography and settings are not workflow code, so they come from outside it.
with workflow.unsafe.imports_passed_through():
    from tests.codec import CODEC_CONVERTER

HISTORIES = sorted((Path(__file__).parent / "histories").glob("*.json"))


def _history(path: Path) -> WorkflowHistory:
    data = json.loads(path.read_text())
    return WorkflowHistory.from_json(data.pop("workflowId", f"replay-{path.stem}"), data)


def test_histories_are_stored():
    assert len(HISTORIES) >= 3


@pytest.mark.parametrize("path", HISTORIES, ids=lambda p: p.stem)
async def test_history_replays_on_current_code(path: Path):
    replayer = Replayer(workflows=WORKFLOWS, data_converter=CODEC_CONVERTER)
    result = await replayer.replay_workflow(_history(path), raise_on_replay_failure=False)
    assert result.replay_failure is None, f"{path.name}: {result.replay_failure}"


@workflow.defn(name="CascadeJourney")
class ReorderedCascade:
    """The cascade with its first activity removed: incompatible with running journeys."""

    @workflow.run
    async def run(self, input: JourneyInput) -> JourneyResult:
        await workflow.sleep(1)
        raise AssertionError("unreachable in replay")


async def test_an_incompatible_change_is_caught():
    replayer = Replayer(workflows=[ReorderedCascade], data_converter=CODEC_CONVERTER)
    cascade = next(p for p in HISTORIES if p.stem.startswith("cascade_"))
    result = await replayer.replay_workflow(_history(cascade), raise_on_replay_failure=False)
    assert result.replay_failure is not None
    assert "nondetermin" in str(result.replay_failure).lower()


def _patches(path: Path) -> set[str]:
    """The patch ids a stored history carries in its markers."""
    found = set()
    for event in json.loads(path.read_text())["events"]:
        marker = event.get("markerRecordedEventAttributes") or {}
        if marker.get("markerName") == "core_patch":
            for payload in marker["details"]["patch-data"]["payloads"]:
                found.add(json.loads(base64.b64decode(payload["data"]))["id"])
    return found


# Recorded before step rules existed (or before later patches): what old journeys look like.
_BEFORE_RULES = ("cascade_reacted", "cascade_skip_fail_exhausted", "cascade_per_channel_queue", "cascade_bounce_cancel")


def test_step_rules_are_behind_a_patch_marker():
    """Histories from before step rules have no step-rules marker; the rules history has one."""
    markers = {p.stem: _patches(p) for p in HISTORIES}
    assert "step-rules" in markers["cascade_rules_exhausted"]
    assert not any("step-rules" in markers[name] for name in _BEFORE_RULES)
    assert markers["cascade_per_channel_queue"] == {"per-channel-task-queue"}


def test_each_send_change_of_issue_11_has_a_history_with_its_marker():
    """The new send path, the stop before a send, the dropped early events, the cap postponement.

    The histories recorded before them carry none of these markers, and still replay
    (above): journeys running when the change is deployed keep the old behaviour.
    """
    markers = {p.stem: _patches(p) for p in HISTORIES}
    assert markers["cascade_send_outcomes"] == {"send-outcome-from-log"}
    assert markers["cascade_stop_before_send"] == {"stop-before-send"}
    assert markers["cascade_skipped_step_event"] == {"early-events-per-step", "send-outcome-from-log"}
    assert markers["cascade_cap_postponed"] == {"step-rules", "send-outcome-from-log"}
    new = {"send-outcome-from-log", "stop-before-send", "early-events-per-step"}
    assert not any(new & markers[name] for name in (*_BEFORE_RULES, "cascade_rules_exhausted"))


def test_every_workflow_of_the_worker_is_replayed():
    from worker import WORKFLOWS as registered

    assert {w.__name__ for w in registered} == {w.__name__ for w in WORKFLOWS}
    recorded = {
        json.loads(p.read_text())["events"][0]["workflowExecutionStartedEventAttributes"]["workflowType"]["name"]
        for p in HISTORIES
    }
    assert recorded == {w.__name__ for w in WORKFLOWS}


def test_lifecycle_changes_are_behind_patch_markers():
    """Histories recorded before issue 11's workflow changes carry none of their markers;
    those recorded after carry each change's own."""
    markers = {p.stem: _patches(p) for p in HISTORIES}
    ours = {"record-run", "signal-dedup", "loyalty-round-v2", "paged-scans"}
    old = [name for name in markers if name.endswith("_v1") or name.rsplit("_", 1)[0].endswith("_v1")]
    old += ["cascade_reacted", "cascade_skip_fail_exhausted", "cascade_bounce_cancel", "cascade_per_channel_queue"]
    assert len(old) == 8 and not any(markers[name] & ours for name in old)
    assert markers["loyalty_v2_purchase"] == {"loyalty-round-v2", "record-run", "signal-dedup"}
    assert markers["loyalty_v2_left"] == {"loyalty-round-v2", "record-run"}
    assert markers["scan_v2_birthday"] == markers["scan_v2_winback"] == {"paged-scans"}
    assert markers["cascade_run_recorded_dedup"] >= {"record-run", "signal-dedup"}


def test_lean_steps_2_is_one_marker_for_every_earlier_patch():
    """Journeys started on lean-steps-2 carry its marker alone; those on lean steps carry each patch's own."""
    markers = {p.stem: _patches(p) for p in HISTORIES}
    assert markers["cascade_lean2_opened_twice"] == markers["cascade_lean2_bounce_cancel"] == {"lean-steps-2"}
    assert markers["cascade_lean_opened_twice"] == {
        "lean-steps",
        "send-outcome-from-log",
        "record-skips",
        "signal-dedup",
    }
    assert markers["cascade_lean_bounce_cancel"] == {"lean-steps", "send-outcome-from-log", "record-skips"}
    # Recorded on "local-run-records" (issue 17 B7), a patch after lean-steps-2: a marker of its own.
    assert markers["cascade_local_opened_twice"] == markers["cascade_local_rules_exhausted"]
    assert markers["cascade_local_opened_twice"] == {"lean-steps-2", "local-run-records"}
    later = ("cascade_lean2_", "cascade_local_")
    assert not any("lean-steps-2" in m for name, m in markers.items() if not name.startswith(later))


def test_lean_steps_3_is_one_marker_where_lean_steps_2_journeys_had_two():
    """Journeys started on lean-steps-3 carry its marker alone (lean-steps-2 and local-run-records
    are in it); every earlier history lacks it and replays on the patches it carries."""
    markers = {p.stem: _patches(p) for p in HISTORIES}
    lean3 = [name for name in markers if name.startswith("cascade_lean3_")]
    assert len(lean3) == 4
    assert all(markers[name] == {"lean-steps-3"} for name in lean3)
    assert not any("lean-steps-3" in m for name, m in markers.items() if name not in lean3)


def test_lean_steps_3_journeys_still_write_their_run_rows_locally():
    """lean-steps-3 stands for local-run-records: the run rows by local activities, one patch marker."""
    for name in ("cascade_lean3_opened_twice", "cascade_lean3_delayed"):
        events = json.loads((Path(__file__).parent / "histories" / f"{name}.json").read_text())["events"]
        kinds = [e.get("eventType") for e in events]
        # The run's rows by local activities (one marker each), no record_run_* activity task.
        local = [
            e
            for e in events
            if (e.get("markerRecordedEventAttributes") or {}).get("markerName") == "core_local_activity"
        ]
        assert local, name
        scheduled = [
            e["activityTaskScheduledEventAttributes"]["activityType"]["name"]
            for e in events
            if "activityTaskScheduledEventAttributes" in e
        ]
        assert not any(n.startswith("record_run") for n in scheduled), (name, scheduled)
        # One patch marker, so one TemporalChangeVersion upsert: two fewer events than lean-steps-2 + local-run-records.
        patch_markers = [
            e for e in events if (e.get("markerRecordedEventAttributes") or {}).get("markerName") == "core_patch"
        ]
        assert len(patch_markers) == 1, (name, kinds)

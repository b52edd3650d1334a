"""CascadeJourney: reach one customer through a chain of channels, cheapest first.

Per step: check the contact point (unusable -> next step at once), send with an
idempotency key, then sleep until the awaited reaction arrives by signal or the
step's wait runs out. A reaction, the deadline, a cancel or an unsubscribe ends it.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.experiments import ExperimentActivities
    from activities.journey import JourneyActivities
    from activities.routing import RoutingActivities
    from activities.runs import RunActivities
    from channels.queues import channel_task_queue
    from models import search_attributes as sa
    from models.activities import (
        CheckContactInput,
        CheckContactResult,
        FailureCode,
        SendMessageInput,
        SendMessageResult,
        SettleDeliveryInput,
        StepRules,
    )
    from models.events import CancelInput, EngagementInput, EngagementType
    from models.experiments import AssignVariantInput
    from models.journey import (
        CONTROL_ARM,
        REACTION_RANK,
        JourneyInput,
        JourneyResult,
        JourneySpec,
        JourneyState,
        JourneyStep,
        Outcome,
        Reaction,
        StepRecord,
        StepStatus,
    )
    from models.routing import ChooseChannelInput, ChooseSendTimeInput, ChooseWaitInput
    from models.runs import RecordRunFinishedInput, RecordRunStartedInput, SkippedStep

CHECK_TIMEOUT = timedelta(seconds=30)
RECORD_TIMEOUT = timedelta(seconds=30)
SEND_ATTEMPT_TIMEOUT = timedelta(seconds=60)
# The send's claim on the delivery log is a lease of this long, renewed by heartbeats
# while the provider call runs: a worker killed mid-send is noticed (and its send
# retried, or settled `unknown`) after this, not after the whole attempt timeout.
SEND_HEARTBEAT_TIMEOUT = timedelta(seconds=10)
# A provider that stays down this long loses its turn: the cascade falls over to the
# next channel instead of holding the customer on a dead one. Never the step's wait:
# a short wait must not turn a worker restart into a failed (or double) send.
SEND_GIVE_UP_AFTER = timedelta(hours=6)
SEND_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=2),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=10),
    non_retryable_error_types=["TemplateError"],
)
SETTLE_TIMEOUT = timedelta(seconds=30)
SETTLE_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=30))
# Steps whose message may be with the customer: waited on, reactions to them count.
_OUT = frozenset({StepStatus.SENT, StepStatus.UNKNOWN})
# Quiet hours and caps postpone a step; after this many wake-ups it is skipped, so a
# customer who is always capped never holds a journey forever.
MAX_POSTPONES = 10
# One patch standing for every patch before it (CascadeJourney._patched), and those patches.
ALL_PATCHES = "lean-steps-2"
_COVERED = frozenset(
    {
        "lean-steps",
        "record-run",
        "experiments",
        "optichannel",
        "step-rules",
        "early-events-per-step",
        "stop-before-send",
        "send-outcome-from-log",
        "record-skips",
        "delay-from-trigger",
        "trigger-time-as-given",
        "per-channel-task-queue",
        "signal-dedup",
    }
)
# Patch "local-run-records": the run's journey_runs rows (its start, when no send writes
# it, and its finish) are written by local activities. A regular activity is a task on
# the server's queue, three history events and a workflow task of its own after it; a
# local one runs in the worker that holds the journey, inside the workflow task that
# asks for it (one marker event). Both writes are idempotent, so a local activity run
# again after a worker crash (its workflow task retried) changes nothing.
LOCAL_RUN_RECORDS = "local-run-records"
# Patch "lean-steps-3" stands, like lean-steps-2, for every patch before it, now
# local-run-records too: a new journey asks for one patch instead of two. Each patch asked
# for is a marker event and an upsert of TemporalChangeVersion (a visibility write) in the
# journey's first task, and two more events every evicted journey replays when it wakes.
LEAN_STEPS_3 = "lean-steps-3"
_COVERED_3 = _COVERED | {ALL_PATCHES, LOCAL_RUN_RECORDS}
# Events that end the journey whichever step they concern.
_STOPPING = MappingProxyType({EngagementType.UNSUBSCRIBED: "unsubscribed", EngagementType.COMPLAINED: "complained"})
# Events that make waiting on the current step pointless.
_STEP_LOST = frozenset({EngagementType.BOUNCED, EngagementType.FAILED})


def _has_rules(spec: JourneySpec, step: JourneyStep) -> bool:
    """True when the step's contact check judges more than the send does (conditions, caps, hours, stay)."""
    return bool(spec.frequency_cap or spec.quiet_hours or spec.stay_active_days or step.when)


def _plain(spec: JourneySpec) -> bool:
    """True when the journey's first activity is its first step's send, at once (no delay, rules, arms, routing).

    Events find a run by its journey_runs row: a journey that sleeps first records it at once.
    """
    return not (
        spec.steps[0].delay
        or _has_rules(spec, spec.steps[0])
        or spec.experiment is not None
        or spec.route == "optichannel"
        or any(s.adaptive_wait or s.send_at == "best" for s in spec.steps)
    )


@workflow.defn
class CascadeJourney:
    """One customer, one journey: a durable cascade over the journey's steps."""

    @workflow.init
    def __init__(self, input: JourneyInput) -> None:
        self._input = input
        self._state = JourneyState(
            journey=input.spec.name,
            customer_id=input.customer_id,
            status="running",
            steps=[StepRecord(index=i, channel=s.channel) for i, s in enumerate(input.spec.steps)],
        )
        self._stop: tuple[Outcome, str] | None = None
        self._step_lost = False
        # Events about the message being sent that overtook the send activity's result
        # (a fast receipt): applied once the step is recorded as sent.
        self._early: list[EngagementInput] = []
        # Event ids taken already: signals are sent at least once (cascade/events/outbox.py).
        self._seen_events: set[str] = set()
        self._record_run = False
        # Lean steps (patch "lean-steps"): no separate contact check before a plain send
        # (the send re-checks consent anyway), the run's start recorded by that send, and
        # search attributes upserted only when a value changes.
        self._lean = False
        # The run's start, still to be recorded by the first plain send (lean steps).
        self._run_to_record: RecordRunStartedInput | None = None
        # The current step's send checks the contact itself (no check activity ran).
        self._unchecked = False
        # Search attribute values the server holds now (lean steps: skip no-op upserts).
        self._attributes: dict[str, object] = {}
        # Patch "lean-steps-2": every patch below counts as applied without a marker of its
        # own (see _patched).
        self._all_patched = False
        # The patches that hold without a marker: _COVERED (lean-steps-2) or _COVERED_3.
        self._covered: frozenset[str] = frozenset()
        # In an experiment's control group: sent nothing, ends `held_out`.
        self._held_out = False

    @workflow.run
    async def run(self, input: JourneyInput) -> JourneyResult:
        """Walk the cascade until a reaction, the deadline, a cancel, or the last step."""
        self._state.started_at = workflow.now()
        # lean-steps-3 is asked first: a history recorded on lean-steps-2 has no marker for
        # it, so on replay it is False and emits nothing, and lean-steps-2 is asked as then.
        if workflow.patched(LEAN_STEPS_3):
            self._all_patched, self._covered = True, _COVERED_3
        elif workflow.patched(ALL_PATCHES):
            self._all_patched, self._covered = True, _COVERED
        # Journeys started before lean steps never ask for the patch and replay as they ran.
        self._lean = self._patched("lean-steps")
        if self._lean:
            self._record_run = workflow.info().parent is None
            known = workflow.info().typed_search_attributes
            for key in (sa.STEP, sa.CHANNEL, sa.JOURNEY_STATUS):
                if (value := known.get(key)) is not None:
                    self._attributes[key.name] = value
            if self._record_run:
                if _plain(input.spec):
                    # The first activity is the first step's send: it writes the row
                    # in its own transaction (one activity and one write fewer).
                    self._run_to_record = self._run_started()
                else:
                    await self._record_started()
        else:
            # The run records itself in journey_runs (a starter that died after starting it
            # left no row); a loop's round is recorded by the loop. Journeys started before
            # this replay without the activities.
            self._record_run = workflow.info().parent is None and self._patched("record-run")
            if self._record_run:
                await self._record_started()
        # Experiments (issue 14): the arm decides the chain. Journeys without an
        # experiment never ask for the patch, so every earlier history replays as it ran.
        if input.spec.experiment is not None and self._patched("experiments"):
            input = await self._enter_experiment(input)
        deadline = input.deadline
        if deadline is None and input.spec.valid_for is not None:
            deadline = workflow.now() + input.spec.valid_for

        for index, step in enumerate(input.spec.steps):
            if self._stop is not None:
                break
            if deadline is not None and workflow.now() >= deadline:
                self._stop = (Outcome.DEADLINE, "deadline passed before the next step")
                break
            # Optichannel routing and adaptive waits (issue 16): the step's channel and wait
            # come from an activity; specs without them never ask for the patch.
            if (input.spec.route == "optichannel" or step.adaptive_wait or step.send_at == "best") and self._patched(
                "optichannel"
            ):
                routed = await self._route(index, deadline)
                if routed is None:
                    break
                step = routed
            record = self._state.steps[index]
            self._enter_step(index)
            self._unchecked = False

            # Journeys started before step rules existed never call patched() with rules,
            # so their histories replay on the old path unchanged.
            if input.spec.uses_rules and self._patched("step-rules"):
                ruled = await self._check_with_rules(index, deadline)
                if ruled is None:
                    break
                check = ruled
            elif self._lean:
                check = self._checked_by_send()
            else:
                check = await workflow.execute_activity_method(
                    JourneyActivities.check_contact,
                    CheckContactInput(customer_id=input.customer_id, channel=step.channel, topic=input.spec.topic),
                    start_to_close_timeout=CHECK_TIMEOUT,
                )
            if not check.usable:
                record.status, record.reason = StepStatus.SKIPPED, check.reason
                if self._early and self._patched("early-events-per-step"):
                    # Events held for this step's message: there is none now, and they
                    # must not be taken for the next step's.
                    self._early = []
                continue
            if self._stop is not None and self._patched("stop-before-send"):
                # A cancel, an exit event or a purchase arrived during the check.
                break

            if self._patched("send-outcome-from-log"):
                sent = await self._send_settled(index, record, deadline)
            else:
                sent = await self._send(index, record)
            early, self._early = self._early, []
            if not sent:
                continue
            for event in early:
                self.engagement(event)

            if not (self._all_patched and (self._stop is not None or self._step_lost)):
                # (lean-steps-2) Not when the wait is over before it begins (a fast reaction,
                # a bounce or a stop during the send): an upsert is a command, a history
                # event and a visibility write, and the status would change again at once.
                self._set_status("waiting")
            wait = step.wait
            if deadline is not None:
                wait = min(wait, max(deadline - workflow.now(), timedelta(0)))
            try:
                await workflow.wait_condition(lambda: self._stop is not None or self._step_lost, timeout=wait)
            except TimeoutError:
                if deadline is not None and workflow.now() >= deadline:
                    self._stop = (Outcome.DEADLINE, "deadline passed while waiting")

        result = self._finish()
        if self._run_to_record is not None:
            # Lean steps: the journey ended before any send recorded its start.
            await self._record(RunActivities.record_run_started, self._run_to_record)
        if self._record_run:
            await self._record_finished(result)
        return result

    async def _route(self, index: int, deadline: datetime | None) -> JourneyStep | None:
        """Put the customer's best remaining pool step at `index`, set its wait and send time; None: stop here.

        The ranking and the wait are activity results, so replay repeats them. The chosen
        step swaps places with the one at `index` (spec and state alike): the step number
        stays the position, so idempotency keys and events keep meaning one message.
        """
        spec = self._input.spec
        records = self._state.steps
        info = workflow.info()
        key = self._key(index)
        if spec.route == "optichannel":
            if spec.max_steps is not None and sum(r.status in _OUT for r in records[:index]) >= spec.max_steps:
                for rest in records[index:]:
                    rest.status, rest.reason = StepStatus.SKIPPED, f"max_steps {spec.max_steps} reached"
                return None
            pool = spec.steps[index:]
            choice = await workflow.execute_activity_method(
                RoutingActivities.choose_channel,
                ChooseChannelInput(
                    customer_id=self._input.customer_id,
                    journey=spec.name,
                    workflow_id=info.workflow_id,
                    run_id=info.first_execution_run_id,
                    step=index,
                    idempotency_key=key,
                    topic=spec.topic,
                    channels=[s.channel for s in pool],
                    await_reaction={s.channel.value: s.await_reaction for s in pool},
                    at=workflow.now(),
                    max_cost_per_reaction=spec.max_cost_per_reaction,
                ),
                start_to_close_timeout=CHECK_TIMEOUT,
            )
            if choice.chosen is None:
                for rest in records[index:]:
                    rest.status = StepStatus.SKIPPED
                    # Unusable, or too dear for the journey's max_cost_per_reaction: the
                    # reasons are state only, so no command changes.
                    ch = rest.channel.value
                    rest.reason = choice.unusable.get(ch) or choice.over_ceiling.get(ch) or choice.summary
                return None
            other = index + [s.channel for s in pool].index(choice.chosen)
            spec.steps[index], spec.steps[other] = spec.steps[other], spec.steps[index]
            records[index].channel, records[other].channel = records[other].channel, records[index].channel
            records[index].routing = choice.summary
        step = spec.steps[index]
        if step.adaptive_wait is not None:
            waited = await workflow.execute_activity_method(
                RoutingActivities.choose_wait,
                ChooseWaitInput(
                    customer_id=self._input.customer_id,
                    channel=step.channel,
                    reaction=Reaction.CLICKED if step.await_reaction == Reaction.CONVERTED else step.await_reaction,
                    bounds=step.adaptive_wait,
                    at=workflow.now(),
                ),
                start_to_close_timeout=CHECK_TIMEOUT,
            )
            step = spec.steps[index] = step.model_copy(update={"wait": waited.wait})
            records[index].wait_reason = waited.reason
        if step.send_at == "best":
            timing = await workflow.execute_activity_method(
                RoutingActivities.choose_send_time,
                ChooseSendTimeInput(
                    customer_id=self._input.customer_id,
                    channel=step.channel,
                    window=step.send_within,
                    quiet_hours=spec.quiet_hours,
                    at=workflow.now(),
                ),
                start_to_close_timeout=CHECK_TIMEOUT,
            )
            records[index].send_reason = timing.reason
            if timing.send_at > workflow.now():
                self._set_status("scheduled")
                if await self._sleep(timing.send_at - workflow.now(), deadline):
                    return None
        return step

    async def _enter_experiment(self, input: JourneyInput) -> JourneyInput:
        """Put the customer in an arm (decided and recorded by an activity) and walk its chain.

        The control group is sent nothing: it waits out the conversion window (a
        conversion, cancel or unsubscribe ends the wait) and the journey ends `held_out`.
        """
        spec = input.spec
        experiment = spec.experiment
        assert experiment is not None
        info = workflow.info()
        assigned = await workflow.execute_activity_method(
            ExperimentActivities.assign_variant,
            AssignVariantInput(
                experiment=experiment,
                journey=spec.name,
                journey_version=spec.version,
                convert_on=spec.convert_on,
                customer_id=input.customer_id,
                workflow_id=info.workflow_id,
                run_id=info.first_execution_run_id,
            ),
            start_to_close_timeout=RECORD_TIMEOUT,
        )
        self._state.variant = assigned.variant
        workflow.upsert_search_attributes([sa.VARIANT.value_set(assigned.variant)])
        steps = experiment.steps_for(assigned.variant, spec.steps)
        self._input = input.model_copy(update={"spec": spec.model_copy(update={"steps": steps})})
        self._state.steps = [StepRecord(index=i, channel=s.channel) for i, s in enumerate(steps)]
        if assigned.variant == CONTROL_ARM:
            self._held_out = True
            self._set_status("held_out")
            await self._sleep(experiment.window, None)
        return self._input

    def _run_started(self) -> RecordRunStartedInput:
        info = workflow.info()
        spec = self._input.spec
        return RecordRunStartedInput(
            workflow_id=info.workflow_id,
            run_id=info.run_id,
            journey=spec.name,
            customer_id=self._input.customer_id,
            campaign=spec.campaign,
            workflow_type=info.workflow_type,
            convert_on=spec.convert_on,
            exit_on=spec.exit_on,
            started_at=workflow.now(),
        )

    async def _record_started(self) -> None:
        await self._record(RunActivities.record_run_started, self._run_started())

    async def _record(self, activity: Any, input: RecordRunStartedInput | RecordRunFinishedInput) -> None:
        """Write the run's journey_runs row: a local activity (patch "local-run-records"), else a regular one."""
        if self._patched(LOCAL_RUN_RECORDS):
            await workflow.execute_local_activity_method(activity, input, start_to_close_timeout=RECORD_TIMEOUT)
        else:
            await workflow.execute_activity_method(activity, input, start_to_close_timeout=RECORD_TIMEOUT)

    async def _record_finished(self, result: JourneyResult) -> None:
        info = workflow.info()
        finished = RecordRunFinishedInput(
            workflow_id=info.workflow_id,
            run_id=info.run_id,
            outcome=result.outcome.value if result.outcome else "finished",
            finished_at=workflow.now(),
        )
        # Skipped steps leave no delivery row: the run hands them to the funnel when it
        # ends. Only the activity's input grows (same command), but the patch keeps old
        # histories' inputs exactly as they were recorded.
        if self._patched("record-skips"):
            spec = self._input.spec
            finished.journey, finished.customer_id = spec.name, self._input.customer_id
            finished.campaign, finished.variant = spec.campaign, self._state.variant
            finished.skipped = [
                SkippedStep(step=r.index, channel=r.channel.value, reason=r.reason or "skipped")
                for r in result.steps
                if r.status == StepStatus.SKIPPED
            ]
        await self._record(RunActivities.record_run_finished, finished)

    async def _check_with_rules(
        self, index: int, deadline: datetime | None, delay: bool = True
    ) -> CheckContactResult | None:
        """The step's plain delay (unless `delay` is False), then the contact check with the step rules.

        Quiet hours and a full frequency cap are not failures: the workflow sleeps on a
        durable timer until `wake_at` and asks again. None: the journey stopped (a
        signal, or the deadline came first).
        """
        step = self._input.spec.steps[index]
        record = self._state.steps[index]
        if delay and step.delay is not None:
            wait = step.delay
            # The first delay counts from the trigger's own time (the start request as the
            # server took it, or an earlier trigger time the starter passed), not from
            # this task: a start that waited in a backlog of workflow tasks must not send
            # later. Server time, from the history: deterministic, and no client clock.
            if index == 0 and self._patched("delay-from-trigger"):
                origin = workflow.info().workflow_start_time
                if self._input.triggered_at is not None:
                    if self._patched("trigger-time-as-given"):
                        # The trigger's own time, also when it lies after the start request:
                        # a broadcast's recipient started with a start delay (their local
                        # hour) counts from that hour, not from the page that started them.
                        # Starters bound it (cascade/journeys/triggers.py: never in the future).
                        origin = self._input.triggered_at
                    else:
                        origin = min(origin, self._input.triggered_at)
                wait = min(step.delay, origin + step.delay - workflow.now())
            if wait > timedelta(0):
                self._set_status("delayed")
                if await self._sleep(wait, deadline):
                    return None
        if self._lean and not _has_rules(self._input.spec, step):
            # Only a delay: the check would judge nothing the send does not judge itself.
            return self._checked_by_send()
        check = CheckContactResult(usable=False, reason="not checked")
        for _ in range(MAX_POSTPONES):
            check = await workflow.execute_activity_method(
                JourneyActivities.check_contact, self._rules_check(index), start_to_close_timeout=CHECK_TIMEOUT
            )
            if check.wake_at is None:
                return check
            record.reason = f"{check.reason} until {check.wake_at.isoformat(timespec='minutes')}"
            self._set_status("postponed")
            if await self._sleep(check.wake_at - workflow.now(), deadline):
                return None
        return CheckContactResult(usable=False, reason=f"still {check.reason} after {MAX_POSTPONES} tries")

    def _checked_by_send(self) -> CheckContactResult:
        """Lean steps: no check activity; the send checks the contact point and consent itself.

        An unusable contact comes back from the send as `skipped`, with the check's reason.
        """
        self._unchecked = True
        return CheckContactResult(usable=True)

    def _patched(self, patch_id: str) -> bool:
        """`workflow.patched(patch_id)`, True without a marker for journeys started on lean-steps-2 or -3.

        Each patch a new journey asks for records a marker and (SDK core) an upsert of the
        TemporalChangeVersion search attribute: three of each per plain journey, a
        visibility write apiece. Journeys started since lean-steps-2 ask once, at the
        start, and every patch before it holds for them (since lean-steps-3 also
        local-run-records); older histories have no such marker and ask for each patch as
        they did when they ran. A patch added after lean-steps-3 is not in _COVERED_3: it
        is asked for with a marker like any patch (a journey started before it must not
        take its path on replay).
        """
        return patch_id in self._covered or workflow.patched(patch_id)

    def _key(self, index: int) -> str:
        """Step `index`'s idempotency key: the run id keeps keys unique when a finished journey id starts again."""
        info = workflow.info()
        return f"{info.workflow_id}/{info.first_execution_run_id}/{index}"

    def _rules_check(self, index: int) -> CheckContactInput:
        """The contact check of step `index` with every rule of the journey, at the journey's time."""
        spec = self._input.spec
        step = spec.steps[index]
        return CheckContactInput(
            customer_id=self._input.customer_id,
            channel=step.channel,
            topic=spec.topic,
            rules=StepRules(
                at=workflow.now(),
                conditions=step.when,
                context=self._input.context,
                frequency_cap=spec.frequency_cap,
                quiet_hours=spec.quiet_hours,
                stay_active_days=spec.stay_active_days,
                journey_channels=[s.channel for s in spec.steps],
            ),
        )

    async def _sleep(self, duration: timedelta, deadline: datetime | None) -> bool:
        """Sleep (durably) for `duration`; True when the journey must stop instead."""
        if deadline is not None and workflow.now() + duration >= deadline:
            duration = deadline - workflow.now()
        try:
            await workflow.wait_condition(lambda: self._stop is not None, timeout=max(duration, timedelta(seconds=1)))
        except TimeoutError:
            if deadline is not None and workflow.now() >= deadline:
                self._stop = (Outcome.DEADLINE, "deadline passed while the step was held back")
        return self._stop is not None

    async def _send(self, index: int, record: StepRecord) -> bool:
        step = self._input.spec.steps[index]
        info = workflow.info()
        run_id = info.first_execution_run_id
        key = self._key(index)
        # Sends run on the channel's own rate-limited queue; journeys started before
        # that change keep sending on the main queue, as their history says.
        task_queue = None
        if self._patched("per-channel-task-queue"):
            task_queue = channel_task_queue(info.task_queue, step.channel.value)
        try:
            result = await workflow.execute_activity_method(
                JourneyActivities.send_message,
                SendMessageInput(
                    idempotency_key=key,
                    workflow_id=info.workflow_id,
                    run_id=run_id,
                    journey=self._input.spec.name,
                    step=index,
                    customer_id=self._input.customer_id,
                    channel=step.channel,
                    topic=self._input.spec.topic,
                    content=step.content,
                    context=self._input.context,
                ),
                start_to_close_timeout=SEND_ATTEMPT_TIMEOUT,
                schedule_to_close_timeout=min(SEND_GIVE_UP_AFTER, step.wait),
                retry_policy=SEND_RETRY,
                task_queue=task_queue,
            )
        except ActivityError as err:
            record.status = StepStatus.FAILED
            record.reason = str(err.cause or err)
            workflow.logger.warning("step %s failed for good: %s", index, record.reason)
            return False
        if result.status == "sent":
            record.status, record.message_id = StepStatus.SENT, result.message_id
            record.sent_at = workflow.now()
            return True
        record.status = StepStatus.SKIPPED if result.status == "skipped" else StepStatus.FAILED
        record.reason = result.reason
        return False

    async def _send_settled(self, index: int, record: StepRecord, deadline: datetime | None) -> bool:
        """Send step `index`; True when its message is (or may be) with the customer.

        The send may take up to SEND_GIVE_UP_AFTER whatever the step's wait. If it gives
        up, the delivery log says what happened before the step is called failed: an
        attempt whose result was lost may have sent it. `unknown` (the provider may
        have it, and asking again could send twice) counts like a send without a
        receipt: the step's wait runs and reactions to it count. A frequency cap that
        another journey of the customer filled first postpones the send; the rules are
        checked again when it frees.
        """
        step = self._input.spec.steps[index]
        info = workflow.info()
        run_id = info.first_execution_run_id
        key = self._key(index)
        task_queue = channel_task_queue(info.task_queue, step.channel.value)
        for _ in range(MAX_POSTPONES):
            try:
                result = await workflow.execute_activity_method(
                    JourneyActivities.send_message,
                    SendMessageInput(
                        idempotency_key=key,
                        workflow_id=info.workflow_id,
                        run_id=run_id,
                        journey=self._input.spec.name,
                        step=index,
                        customer_id=self._input.customer_id,
                        channel=step.channel,
                        topic=self._input.spec.topic,
                        content=step.content,
                        context=self._input.context,
                        frequency_cap=self._input.spec.frequency_cap,
                        at=workflow.now(),
                        variant=self._state.variant,
                        record_run=self._run_to_record,
                        unchecked=self._unchecked,
                    ),
                    start_to_close_timeout=SEND_ATTEMPT_TIMEOUT,
                    heartbeat_timeout=SEND_HEARTBEAT_TIMEOUT,
                    schedule_to_close_timeout=SEND_GIVE_UP_AFTER,
                    retry_policy=SEND_RETRY,
                    task_queue=task_queue,
                )
            except ActivityError as err:
                result = await self._settle(key, err)
            # Recorded (the send's first attempt writes the row before anything else).
            self._run_to_record = None
            if result.status != "postponed" or result.wake_at is None:
                break
            record.reason = f"{result.reason} until {result.wake_at.isoformat(timespec='minutes')}"
            self._set_status("postponed")
            if await self._sleep(result.wake_at - workflow.now(), deadline):
                return False
            # Everything is judged again at the new time (quiet hours may have begun).
            check = await self._check_with_rules(index, deadline, delay=False)
            if check is None or self._stop is not None:
                return False
            if not check.usable:
                record.status, record.reason = StepStatus.SKIPPED, check.reason
                return False
            self._set_status("running")
        else:
            record.status, record.reason = StepStatus.SKIPPED, f"still capped after {MAX_POSTPONES} tries"
            return False
        record.reason = None
        if result.status in ("sent", "unknown"):
            record.status = StepStatus.SENT if result.status == "sent" else StepStatus.UNKNOWN
            record.message_id, record.reason = result.message_id, result.reason
            record.sent_at = workflow.now()
            return True
        record.status = StepStatus.SKIPPED if result.status == "skipped" else StepStatus.FAILED
        record.reason = result.reason
        return False

    async def _settle(self, key: str, err: ActivityError) -> SendMessageResult:
        """The send gave up: learn from the delivery log whether its message went out."""
        settled = await workflow.execute_activity_method(
            JourneyActivities.settle_delivery,
            SettleDeliveryInput(idempotency_key=key),
            start_to_close_timeout=SETTLE_TIMEOUT,
            retry_policy=SETTLE_RETRY,
        )
        if settled.status in ("sent", "unknown", "failed"):
            return SendMessageResult(status=settled.status, message_id=settled.message_id, reason=settled.reason)
        cause = err.cause
        reason: str = settled.reason or FailureCode.PROVIDER_UNAVAILABLE
        if isinstance(cause, ApplicationError) and cause.type == "TemplateError":
            # Our own template (a field missing at send time), not a provider text.
            reason = cause.message
        elif isinstance(cause, ApplicationError) and cause.type == "ChannelConfigurationError":
            reason = FailureCode.CONFIGURATION_ERROR
        workflow.logger.warning("step send gave up: %s", reason)
        return SendMessageResult(status="failed", reason=reason)

    def _enter_step(self, index: int) -> None:
        step = self._input.spec.steps[index]
        self._state.current_step = index
        self._state.current_channel = step.channel
        self._step_lost = False
        self._upsert({sa.STEP: index, sa.CHANNEL: step.channel.value, sa.JOURNEY_STATUS: "running"})
        self._state.status = "running"

    def _set_status(self, status: str) -> None:
        self._state.status = status
        self._upsert({sa.JOURNEY_STATUS: status})

    def _upsert(self, values: dict[Any, Any]) -> None:
        """Upsert search attributes; with lean steps only those whose value changes.

        Each upsert is a command, a history event and a visibility write: the start's own
        values (step 0, its channel, `running`) need none.
        """
        if self._lean:
            values = {k: v for k, v in values.items() if self._attributes.get(k.name) != v}
            if not values:
                return
            self._attributes.update({k.name: v for k, v in values.items()})
        workflow.upsert_search_attributes([k.value_set(v) for k, v in values.items()])

    def _finish(self) -> JourneyResult:
        if self._held_out:
            outcome = Outcome.HELD_OUT
            reason = "control group, sent nothing: " + (self._stop[1] if self._stop else "conversion window observed")
        elif self._stop is not None:
            outcome, reason = self._stop
        elif any(s.status in _OUT for s in self._state.steps):
            outcome, reason = Outcome.EXHAUSTED, "no reaction on any step"
        else:
            outcome, reason = Outcome.UNREACHABLE, "no step could be sent"
        self._state.outcome, self._state.outcome_reason = outcome, reason
        self._state.finished_at = workflow.now()
        self._set_status(outcome.value)
        return JourneyResult.model_validate(self._state.model_dump())

    @workflow.signal
    def engagement(self, event: EngagementInput) -> None:
        """An event about one of this journey's messages (or the journey as a whole)."""
        # A repeat of an event already taken (the outbox sends at least once) is dropped.
        # Only signals that carry an id ask for the patch, so older histories replay as they ran.
        if event.event_id is not None and self._patched("signal-dedup"):
            if event.event_id in self._seen_events:
                return
            self._seen_events.add(event.event_id)
        if self._stop is not None or self._state.outcome is not None:
            return
        current = self._state.current_step
        step_index = event.step if event.step is not None else current
        if step_index is not None and not 0 <= step_index < len(self._state.steps):
            return
        if event.type in _STOPPING:
            self._stop = (Outcome.UNSUBSCRIBED, _STOPPING[event.type])
            return
        if (
            event.type != EngagementType.CONVERTED
            and step_index is not None
            and step_index == current
            and self._state.steps[step_index].status == StepStatus.PENDING
        ):
            self._early.append(event)
            return
        if event.type in _STEP_LOST:
            if step_index is not None and step_index == current:
                self._step_lost = True
            return
        reaction = Reaction(event.type.value)
        if reaction == Reaction.CONVERTED:
            # The goal itself (an order): it ends the journey whenever it comes, even
            # before the first message went out.
            if step_index is not None:
                self._note_reaction(step_index, reaction)
            self._state.reaction, self._state.reacted_step = reaction, step_index
            where = f"after step {step_index}" if step_index is not None else "before the first message"
            self._stop = (Outcome.REACTED, f"converted {where}")
            return
        if step_index is None or self._state.steps[step_index].status not in _OUT:
            # Nothing was sent at that step in this run: the event is about something else.
            return
        self._note_reaction(step_index, reaction)
        # A reaction at least as strong as the one its step waits for ends the cascade,
        # even when it comes from an earlier step than the current one.
        if REACTION_RANK[reaction] >= REACTION_RANK[self._input.spec.steps[step_index].await_reaction]:
            self._state.reaction, self._state.reacted_step = reaction, step_index
            self._stop = (Outcome.REACTED, f"{reaction.value} on step {step_index}")

    def _note_reaction(self, step_index: int, reaction: Reaction) -> None:
        record = self._state.steps[step_index]
        if record.reaction is None or REACTION_RANK[reaction] > REACTION_RANK[record.reaction]:
            record.reaction = reaction

    @workflow.signal
    def cancel(self, input: CancelInput) -> None:
        """Stop the journey before its next send; it ends as `cancelled`."""
        if self._stop is None:
            self._stop = (Outcome.CANCELLED, input.reason)

    @workflow.query
    def state(self) -> JourneyState:
        """Where the journey stands now."""
        return self._state

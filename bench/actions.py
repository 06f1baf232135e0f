"""Temporal Cloud Actions per ticket path, counted from workflow history.

    python -m bench.actions [--json PATH]    # Markdown table on stdout, JSON to PATH

Each path of a ticket runs on the time-skipping test server under the default policy; its
histories (the ticket's runs and any ``StatementOfWork`` child) are counted by Temporal
Cloud's documented billing rules (docs.temporal.io/cloud/actions, source
``temporalio/documentation: docs/evaluate/temporal-cloud/actions.mdx``), quoted here:

- *workflow started*: "Occurs via client start, Continue-As-New, Child Workflow start":
  each run's ``WorkflowExecutionStarted``, except a child's, which its parent pays for;
- *child workflow*: "When the parent Workflow durably records the intent to start a Child
  Workflow, it results in two Actions, one for starting the Workflow, and another for the
  attempted Execution": 2 per ``StartChildWorkflowExecutionInitiated``;
- *signal*: "An Action occurs for every Signal, whether sent from a Client or from a
  Workflow": each ``WorkflowExecutionSignaled`` sent by a client, and each
  ``SignalExternalWorkflowExecutionInitiated`` (a signal between workflows is counted once,
  at its sender);
- *timer*: "Timer started. Includes implicit Timers that are started by a Temporal SDK when
  timeouts are set": each ``TimerStarted`` (``workflow.wait_condition(timeout=...)``
  starts one);
- *activity*: "Occurs each time an Activity is started or retried": the ``attempt`` of each
  ``ActivityTaskStarted``; history keeps only the last attempt's started event, numbered;
- *local activities*: "All Local Activities associated with one Workflow Task count as a
  single Action": local-activity markers, one per workflow task that recorded any;
- *search-attribute upsert*: "Occurs for each invocation of UpsertSearchAttributes command.
  Multiple Search Attributes updated in a single UpsertSearchAttributes command count as one
  Action. Search Attributes specified during Workflow start are excluded from Action counts.
  The TemporalChangeVersion Search Attribute, used for Workflow versioning, is also exempt
  from Action counting." So the upsert the SDK adds for ``workflow.patched`` (it carries
  only ``TemporalChangeVersion``) is not counted. The patch's marker is not counted either:
  the documented list bills markers only as local activities and side effects;
- *update*: "An Action occurs for every successful Update and every rejected Update": each
  ``WorkflowExecutionUpdateAccepted`` (a rejected update leaves no event).

Two billed kinds leave nothing in history (the docs' own history-based estimate leaves out
"Query, Activity Heartbeats, ..."), so the scenario measures them itself:

- *query*: "An Action occurs for every Query": counted by a client interceptor. The
  scenarios query ``status`` once before each agent action, as the agent board's ticket
  view does; listing tickets reads visibility, which is not billed;
- *heartbeat*: "A Heartbeat call from Activity code counts as an Action only if it reaches
  the Temporal Server. Temporal SDKs throttle Activity Heartbeats." The SDK core sends an
  attempt's first heartbeat at once, holds later ones for the throttle interval (30 s with
  no heartbeat timeout) and drops a held one when the attempt succeeds. Every attempt here
  succeeds within milliseconds, so the heartbeats that reach the server are the attempts
  that heartbeat at all, counted by a worker interceptor.

Beside each path stands the *obvious design* for the same run (``obvious_design``): an
activity per ledger event and per notification recipient, a timer per escalation step
started up front, an upsert per search-attribute field change.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, astuple, dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import httpx
from temporalio import client as temporal_client
from temporalio import worker as temporal_worker
from temporalio.api.common.v1 import Payloads
from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import Client, WorkflowHandle, WorkflowHistory
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import ActivityInboundInterceptor, ActivityOutboundInterceptor

from contract.models import (
    Acknowledge,
    MarkOutOfScope,
    PageUpdate,
    PlanRequest,
    Resolve,
    SlaEvents,
    SowDecision,
    StepDelivery,
    StepKind,
    TicketInput,
    TicketPlan,
    TicketStatus,
    sow_workflow_id,
)
from intake.core import open_ticket
from policy.schema import POLICY_FILE_ENV
from runtime.converter import support_data_converter
from runtime.logs import configure_logging, core_runtime
from tests.conftest import (
    Stack,
    advance_to,
    binary,
    now_second,
    register_search_attributes,
    result_of,
    sqlite_ledger,
    terminate_open,
    ticket,
)
from tests.record_histories import runs_of
from worker import build_worker

T = TypeVar("T")
M = timedelta(minutes=1)

# The targets, and the paths they apply to.
ACK_PATH = "premium_ack_before_breach"
ESCALATED_PATH = "premium_breach_then_ack"
REPEATED_PATH = "premium_repeats_then_ack"
ACK_PATH_TARGET = 10
PER_STEP_TARGET = 2.0

CHANGE_VERSION = "TemporalChangeVersion"  # the SDK's versioning attribute: not billed
LOCAL_ACTIVITY_MARKER = "core_local_activity"
E = EventType
SIMPLE_KINDS: dict[E.ValueType, str] = {
    E.EVENT_TYPE_TIMER_STARTED: "timers",
    E.EVENT_TYPE_SIGNAL_EXTERNAL_WORKFLOW_EXECUTION_INITIATED: "signals",
    E.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED: "updates",
}


# --- counting Actions in history ---------------------------------------------------------


@dataclass(frozen=True)
class ActionCount:
    """Billable Actions found in workflow history, per kind."""

    workflow_started: int = 0
    child_workflows: int = 0
    signals: int = 0
    timers: int = 0
    activity_attempts: int = 0
    local_activity_tasks: int = 0
    search_attribute_upserts: int = 0
    updates: int = 0

    @property
    def total(self) -> int:
        return sum(astuple(self))

    def __add__(self, other: ActionCount) -> ActionCount:
        return ActionCount(*(a + b for a, b in zip(astuple(self), astuple(other), strict=True)))


def count_actions(histories: WorkflowHistory | Iterable[WorkflowHistory]) -> ActionCount:
    """The billable Actions in ``histories``: one workflow's runs, and its children's.

    Pass a child's history with its parent's: the child's start is billed at the parent
    (two Actions), its own started event counts nothing. (Signal-With-Start, one Action for
    start and signal together, is not told apart: tickets start with a plain start.)"""
    runs = [histories] if isinstance(histories, WorkflowHistory) else histories
    return sum((_count_run(run.events) for run in runs), ActionCount())


def _count_run(events: Sequence[HistoryEvent]) -> ActionCount:
    counts: Counter[str] = Counter()
    for event in events:
        billed = _billed(event)
        if billed is not None:
            counts[billed[0]] += billed[1]
    local_activity_tasks = {
        e.marker_recorded_event_attributes.workflow_task_completed_event_id
        for e in events
        if e.event_type == E.EVENT_TYPE_MARKER_RECORDED
        and e.marker_recorded_event_attributes.marker_name == LOCAL_ACTIVITY_MARKER
    }
    return ActionCount(**counts, local_activity_tasks=len(local_activity_tasks))


def _billed(event: HistoryEvent) -> tuple[str, int] | None:
    """The kind and number of Actions one event bills on its own (local-activity markers
    are billed per workflow task, by ``_count_run``)."""
    kind = event.event_type
    if kind in SIMPLE_KINDS:
        return SIMPLE_KINDS[kind], 1
    if kind == E.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED:
        started = event.workflow_execution_started_event_attributes
        return None if started.HasField("parent_workflow_execution") else ("workflow_started", 1)
    if kind == E.EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_INITIATED:
        return "child_workflows", 2
    if kind == E.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED:
        signaled = event.workflow_execution_signaled_event_attributes
        return None if signaled.HasField("external_workflow_execution") else ("signals", 1)
    if kind == E.EVENT_TYPE_ACTIVITY_TASK_STARTED:
        return "activity_attempts", event.activity_task_started_event_attributes.attempt
    if kind == E.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES:
        return ("search_attribute_upserts", 1) if _upserted_fields(event) else None
    return None


def _upserted_fields(event: HistoryEvent) -> set[str]:
    """The billed search attributes an upsert event sets (all but TemporalChangeVersion)."""
    attributes = event.upsert_workflow_search_attributes_event_attributes.search_attributes
    return set(attributes.indexed_fields) - {CHANGE_VERSION}


def activity_attempts_by_type(histories: Iterable[WorkflowHistory]) -> dict[str, int]:
    """Activity attempts per activity type: where the activity Actions go."""
    attempts: Counter[str] = Counter()
    for run in histories:
        names = {
            e.event_id: e.activity_task_scheduled_event_attributes.activity_type.name
            for e in run.events
            if e.event_type == E.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
        }
        for e in run.events:
            if e.event_type == E.EVENT_TYPE_ACTIVITY_TASK_STARTED:
                started = e.activity_task_started_event_attributes
                attempts[names[started.scheduled_event_id]] += started.attempt
    return dict(sorted(attempts.items()))


# --- the obvious design --------------------------------------------------------------------


@dataclass(frozen=True)
class ObviousDesign:
    """The same run's Actions had the ticket been written the obvious way.

    - starts and signals: as measured (the same clients drive it; a child is still two);
    - activities: each policy resolution as measured, plus one activity per distinct SLA
      ledger event (keys from the ``record_sla_events`` batches and the events riding on
      ``deliver_step``) and one per notification recipient (``deliver_step`` and
      ``update_pages`` recipients), with no heartbeats;
    - timers: started up front from the ticket's first plan, one per step due after the
      open instant (intake is sent at once), one for the repeat cadence (each repeat fired
      after the first would re-arm it: none is fired on these paths), one for an idle
      close; a statement of work starts its reminder and expiry timers up front (two);
    - upserts: one per search-attribute field the measured upserts changed (the
      attributes set at start are free in both designs).
    """

    workflow_started: int
    child_workflows: int
    signals: int
    timers: int
    activities: int
    search_attribute_upserts: int

    @property
    def total(self) -> int:
        return sum(astuple(self))


@dataclass(frozen=True)
class _ActivityCall:
    name: str
    input: Payloads
    result: Payloads | None


def obvious_design(histories: Sequence[WorkflowHistory]) -> ObviousDesign:
    """The obvious design's Actions for the run these histories record (see the class)."""
    measured = count_actions(histories)
    calls = [call for run in histories for call in _activity_calls(run)]
    field_changes = sum(
        len(_upserted_fields(e))
        for run in histories
        for e in run.events
        if e.event_type == E.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES
    )
    return ObviousDesign(
        workflow_started=measured.workflow_started,
        child_workflows=measured.child_workflows,
        signals=measured.signals,
        timers=_timers_up_front(calls) + 2 * _statements_of_work(histories),
        activities=_activity_per_event_and_recipient(calls),
        search_attribute_upserts=field_changes,
    )


def _activity_calls(history: WorkflowHistory) -> Iterator[_ActivityCall]:
    """Every activity the run scheduled, with its input and (if it completed) result."""
    results = {
        e.activity_task_completed_event_attributes.scheduled_event_id: (
            e.activity_task_completed_event_attributes.result
        )
        for e in history.events
        if e.event_type == E.EVENT_TYPE_ACTIVITY_TASK_COMPLETED
    }
    for e in history.events:
        if e.event_type == E.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            scheduled = e.activity_task_scheduled_event_attributes
            yield _ActivityCall(
                scheduled.activity_type.name, scheduled.input, results.get(e.event_id)
            )


def _decode(payloads: Payloads, type_: type[T]) -> T:
    converter = support_data_converter.payload_converter
    decoded: T = converter.from_payloads(payloads.payloads, [type_])[0]
    return decoded


def _activity_per_event_and_recipient(calls: Sequence[_ActivityCall]) -> int:
    resolutions = sum(1 for c in calls if c.name == "resolve_ticket_plan")
    event_keys: set[str] = set()
    recipients = 0
    for call in calls:
        if call.name == "record_sla_events":
            event_keys.update(e.key for e in _decode(call.input, SlaEvents).events)
        elif call.name == "deliver_step":
            delivery = _decode(call.input, StepDelivery)
            recipients += len(delivery.recipients)
            if delivery.event is not None:
                event_keys.add(delivery.event.key)
        elif call.name == "update_pages":
            recipients += len(_decode(call.input, PageUpdate).recipients)
    return resolutions + len(event_keys) + recipients


def _timers_up_front(calls: Sequence[_ActivityCall]) -> int:
    """One timer per step of the ticket's first plan due after it opened, one for the
    repeat cadence, one for an idle close."""
    resolved = [
        (c.input, c.result)
        for c in calls
        if c.name == "resolve_ticket_plan" and c.result is not None
    ]
    if not resolved:
        return 0
    request, result = resolved[0]
    opened_at = _decode(request, PlanRequest).opened_at
    plan = _decode(result, TicketPlan)
    steps = [s for s in plan.steps if s.kind is not StepKind.REPEAT and s.due_at > opened_at]
    repeats = any(s.kind is StepKind.REPEAT for s in plan.steps)
    return len(steps) + int(repeats) + int(plan.idle_close_after is not None)


def _statements_of_work(histories: Sequence[WorkflowHistory]) -> int:
    return sum(
        1
        for run in histories
        if run.events[0].workflow_execution_started_event_attributes.workflow_type.name
        == "StatementOfWork"
    )


# --- what history does not show: queries and heartbeats ----------------------------------


class Meter(temporal_client.Interceptor, temporal_worker.Interceptor):
    """Counts the billed Actions that leave no event: the scenario's queries (client side)
    and the activity attempts that heartbeat (worker side, see the module docstring)."""

    def __init__(self) -> None:
        self.queries = 0
        self._heartbeating: set[tuple[str, str, int]] = set()

    @property
    def heartbeats(self) -> int:
        return len(self._heartbeating)

    def record_heartbeat(self, workflow_id: str, activity_id: str, attempt: int) -> None:
        self._heartbeating.add((workflow_id, activity_id, attempt))

    def intercept_client(
        self, next: temporal_client.OutboundInterceptor
    ) -> temporal_client.OutboundInterceptor:
        return _CountQueries(next, self)

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _CountHeartbeatsIn(next, self)


class _CountQueries(temporal_client.OutboundInterceptor):
    def __init__(self, next: temporal_client.OutboundInterceptor, meter: Meter) -> None:
        super().__init__(next)
        self._meter = meter

    async def query_workflow(self, input: temporal_client.QueryWorkflowInput) -> Any:
        self._meter.queries += 1
        return await super().query_workflow(input)


class _CountHeartbeatsIn(ActivityInboundInterceptor):
    def __init__(self, next: ActivityInboundInterceptor, meter: Meter) -> None:
        super().__init__(next)
        self._meter = meter

    def init(self, outbound: ActivityOutboundInterceptor) -> None:
        super().init(_CountHeartbeatsOut(outbound, self._meter))


class _CountHeartbeatsOut(ActivityOutboundInterceptor):
    def __init__(self, next: ActivityOutboundInterceptor, meter: Meter) -> None:
        super().__init__(next)
        self._meter = meter

    def heartbeat(self, *details: Any) -> None:
        info = self.info()
        self._meter.record_heartbeat(info.workflow_id or "", info.activity_id, info.attempt)
        super().heartbeat(*details)


@asynccontextmanager
async def metered_stack(
    env: WorkflowEnvironment, ledger_path: Path
) -> AsyncIterator[tuple[Stack, Meter]]:
    """``tests.conftest.running_stack`` on a client that carries a ``Meter``: the worker
    takes the client's interceptors, so the meter counts its heartbeats too."""
    meter = Meter()
    config = env.client.config()
    config["interceptors"] = [*config["interceptors"], meter]
    metered = Client(**config)
    ledger = await sqlite_ledger(ledger_path)
    async with httpx.AsyncClient(timeout=5.0) as http:
        worker = build_worker(metered, f"tq-{uuid.uuid4()}", ledger, http)
        async with worker:
            stack = Stack(env, metered, worker.task_queue, ledger, worker)
            try:
                yield stack, meter
            finally:
                await terminate_open(stack)
    await ledger.close()


# --- the paths -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Driven:
    """What a scenario ran: its workflows (ticket first) and the ticket's final status."""

    workflow_ids: list[str]
    ticket: TicketStatus


@dataclass(frozen=True)
class TicketPath:
    """A path through a ticket's life, and the scenario that drives a ticket along it."""

    name: str
    description: str
    drive: Callable[[Stack], Awaitable[Driven]]


async def open_now(stack: Stack, data: TicketInput, at: datetime) -> WorkflowHandle[Any, Any]:
    """Open ``data`` at ``at``, as intake does: ``open_ticket_at`` without its status polling
    (every query is an Action, and how often it polls varies from run to run)."""
    await advance_to(stack.env, at)
    data = data.model_copy(update={"opened_at": at})
    if not (await open_ticket(stack.client, data, stack.task_queue)).created:
        raise RuntimeError(f"ticket {data.ticket_id} already existed")
    stack.opened.append(data.workflow_id)
    return stack.client.get_workflow_handle(data.workflow_id, result_type=TicketStatus)


async def agent_acts(
    stack: Stack, handle: WorkflowHandle[Any, Any], at: datetime, signal: str, payload: Any
) -> None:
    """At ``at`` an agent opens the ticket (one ``status`` query, as the board's ticket view
    makes) and acts on it (one signal)."""
    await advance_to(stack.env, at)
    await handle.query("status", result_type=TicketStatus)
    await handle.signal(signal, payload)


async def premium_acknowledged(stack: Stack, agent: str, ack: int, resolve: int) -> Driven:
    """A Premium ticket that ``agent`` acknowledges ``ack`` minutes after it opened and
    resolves at ``resolve`` minutes."""
    t0 = await now_second(stack.env)
    handle = await open_now(stack, ticket(tier="premium"), t0)
    await agent_acts(stack, handle, t0 + ack * M, "acknowledge", Acknowledge(agent=agent))
    await agent_acts(stack, handle, t0 + resolve * M, "resolve", Resolve(by=agent))
    return Driven([handle.id], await result_of(stack.env, handle))


async def premium_ack_before_breach(stack: Stack) -> Driven:
    """Premium (1 h): intake, warning at 30 min, acknowledged at 35, resolved at 40."""
    return await premium_acknowledged(stack, "alice", ack=35, resolve=40)


async def premium_breach_then_ack(stack: Stack) -> Driven:
    """Premium: intake, warning (30 min), final warning (45), breach (60); acknowledged at
    65 (before the first repeat at 90), resolved at 70."""
    return await premium_acknowledged(stack, "bob", ack=65, resolve=70)


async def premium_repeats_then_ack(stack: Stack) -> Driven:
    """Premium: as (b), and two repeats after the breach (90 and 120 min); acknowledged
    at 125, resolved at 130. Over (b) it costs exactly what a step costs, with nothing
    that happens once per ticket (the breach's ``SlaBreached``) in between."""
    return await premium_acknowledged(stack, "dan", ack=125, resolve=130)


async def out_of_scope_sow_accepted(stack: Stack) -> Driven:
    """Premium: intake, marked out of scope at 5 min; the statement of work is accepted a
    day later (before its reminder at 2 days)."""
    t0 = await now_second(stack.env)
    data = ticket(tier="premium")
    handle = await open_now(stack, data, t0)
    reason = MarkOutOfScope(by="erin", reason="feature request")
    await agent_acts(stack, handle, t0 + 5 * M, "mark_out_of_scope", reason)
    await advance_to(stack.env, t0 + timedelta(days=1))
    sow = stack.client.get_workflow_handle(sow_workflow_id(data.ticket_id))
    decision = SowDecision(decision="accepted", by="advisor", reference="SOW-1")
    await sow.signal("sow_decision", decision)
    return Driven([handle.id, sow.id], await result_of(stack.env, handle))


async def community_idle_close(stack: Stack) -> Driven:
    """Community (no SLA): intake to the community queue, closed after 14 idle days."""
    handle = await open_now(stack, ticket(tier="community"), await now_second(stack.env))
    return Driven([handle.id], await result_of(stack.env, handle))


PATHS = (
    TicketPath(
        ACK_PATH, "(a) premium, acknowledged before breach, resolved", premium_ack_before_breach
    ),
    TicketPath(
        ESCALATED_PATH,
        "(b) premium, escalated to breach, acknowledged, resolved",
        premium_breach_then_ack,
    ),
    TicketPath(
        "out_of_scope_sow_accepted",
        "(c) premium, out of scope, SOW accepted",
        out_of_scope_sow_accepted,
    ),
    TicketPath("community_idle_close", "(d) community, closed when idle", community_idle_close),
    TicketPath(
        REPEATED_PATH,
        "(e) premium, as (b) with two repeats after the breach",
        premium_repeats_then_ack,
    ),
)


# --- measuring ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PathCost:
    """One path's Actions: from history per kind, plus the queries and heartbeats the run
    made (not in history), beside the obvious design's count for the same run."""

    path: str
    description: str
    actions: ActionCount
    heartbeats: int
    queries: int
    steps_fired: int
    activity_attempts_by_type: dict[str, int]
    obvious: ObviousDesign

    @property
    def total(self) -> int:
        """The Actions in history (queries and heartbeats apart)."""
        return self.actions.total

    @property
    def ratio(self) -> float:
        """This design's history Actions over the obvious design's."""
        return self.total / self.obvious.total

    def breakdown(self) -> dict[str, int]:
        """Every counted kind, the history total, heartbeats and queries, by name."""
        return {
            **asdict(self.actions),
            "total": self.total,
            "heartbeats": self.heartbeats,
            "queries": self.queries,
        }


async def measure_costs(env: WorkflowEnvironment) -> list[PathCost]:
    """Run every path on ``env`` (a time-skipping server with the search attributes
    registered) under the default policy, and count its Actions."""
    if os.environ.get(POLICY_FILE_ENV):
        raise RuntimeError(f"{POLICY_FILE_ENV} is set: the costs are for the default policy")
    with tempfile.TemporaryDirectory() as tmp:
        return [await measure_path(env, path, Path(tmp)) for path in PATHS]


async def measure_path(env: WorkflowEnvironment, path: TicketPath, workdir: Path) -> PathCost:
    """Run one path with its own worker and ledger, then count its histories."""
    async with metered_stack(env, workdir / f"{path.name}.sqlite3") as (stack, meter):
        driven = await path.drive(stack)
    histories = [run for wid in driven.workflow_ids for run in await runs_of(env, wid)]
    return PathCost(
        path=path.name,
        description=path.description,
        actions=count_actions(histories),
        heartbeats=meter.heartbeats,
        queries=meter.queries,
        steps_fired=len(driven.ticket.escalations),
        activity_attempts_by_type=activity_attempts_by_type(histories),
        obvious=obvious_design(histories),
    )


def per_escalation_step(costs: Sequence[PathCost]) -> float:
    """Actions each escalation step adds: path (e) over path (b), per extra step fired
    (both past the breach, so only steps differ)."""
    return _per_extra_step(costs, ESCALATED_PATH, REPEATED_PATH)


def per_step_to_breach(costs: Sequence[PathCost]) -> float:
    """Path (b) over path (a), per extra step: the two steps up to the breach and the
    breach's one ``SlaBreached`` upsert, which a ticket pays once, however long it
    escalates."""
    return _per_extra_step(costs, ACK_PATH, ESCALATED_PATH)


def _per_extra_step(costs: Sequence[PathCost], fewer: str, more: str) -> float:
    by_path = {c.path: c for c in costs}
    low, high = by_path[fewer], by_path[more]
    return (high.total - low.total) / (high.steps_fired - low.steps_fired)


# --- reporting ---------------------------------------------------------------------------

COLUMNS = {
    "workflow_started": "start",
    "child_workflows": "child",
    "signals": "signals",
    "timers": "timers",
    "activity_attempts": "activities",
    "local_activity_tasks": "local act.",
    "search_attribute_upserts": "upserts",
    "updates": "updates",
}


def markdown(costs: Sequence[PathCost]) -> str:
    """The costs as a Markdown table, the targets and where the activity Actions go."""
    header = [
        "path",
        "steps fired",
        "Actions",
        *COLUMNS.values(),
        "heartbeats*",
        "queries*",
        "obvious design",
        "ratio",
    ]
    lines = [_row(header), _row(["---"] * len(header))]
    lines += [_row(_cells(c)) for c in costs]
    by_path = {c.path: c for c in costs}
    acked, step = by_path[ACK_PATH], per_escalation_step(costs)
    to_breach = per_step_to_breach(costs)
    lines += [
        "",
        "\\* not in history, measured by the run: heartbeats that reach the server (one per"
        " activity attempt that heartbeats), queries the agent's ticket views make (one per"
        " agent action). Actions and ratio leave both out.",
        "",
        f"- Target (a) <= {ACK_PATH_TARGET} Actions: {acked.total}"
        f" ({_verdict(acked.total <= ACK_PATH_TARGET)}).",
        f"- Per escalation step, (e) over (b): {step:.2f} Actions"
        f" (target <= {PER_STEP_TARGET:g}: {_verdict(step <= PER_STEP_TARGET)}).",
        f"- (b) over (a), per extra step: {to_breach:.2f} Actions (the steps up to the"
        " breach, and the breach's one `SlaBreached` upsert).",
        "",
        "Activity attempts by type:",
        "",
    ]
    lines += [f"- {c.path}: {_named(c.activity_attempts_by_type)}" for c in costs]
    return "\n".join(lines) + "\n"


def _cells(cost: PathCost) -> list[str]:
    kinds = [str(v) for v in astuple(cost.actions)]
    obvious = {COLUMNS.get(k, k): v for k, v in asdict(cost.obvious).items() if v}
    return [
        cost.description,
        str(cost.steps_fired),
        str(cost.total),
        *kinds,
        str(cost.heartbeats),
        str(cost.queries),
        f"{cost.obvious.total} ({_named(obvious)})",
        f"{cost.ratio:.2f}",
    ]


def _named(counts: dict[str, int]) -> str:
    return ", ".join(f"{name} {n}" for name, n in counts.items())


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _verdict(met: bool) -> str:
    return "met" if met else "NOT met"


def to_json(costs: Sequence[PathCost]) -> str:
    """The costs, with every breakdown and the targets, as JSON."""
    step = per_escalation_step(costs)
    acked = next(c for c in costs if c.path == ACK_PATH)
    document = {
        "paths": [
            {
                "path": c.path,
                "description": c.description,
                "steps_fired": c.steps_fired,
                **c.breakdown(),
                "activity_attempts_by_type": c.activity_attempts_by_type,
                "obvious_design": {**asdict(c.obvious), "total": c.obvious.total},
                "ratio": round(c.ratio, 3),
            }
            for c in costs
        ],
        "targets": {
            "ack_path_total": {"target": ACK_PATH_TARGET, "measured": acked.total},
            "per_escalation_step": {"target": PER_STEP_TARGET, "measured": round(step, 3)},
            "per_step_to_breach": {"measured": round(per_step_to_breach(costs), 3)},
        },
    }
    return json.dumps(document, indent=2) + "\n"


async def measure_on_own_server() -> list[PathCost]:
    """The paths on a time-skipping server of their own."""
    env = await WorkflowEnvironment.start_time_skipping(
        data_converter=support_data_converter,
        test_server_existing_path=binary("temporal-test-server"),
        runtime=core_runtime(),  # the SDK core's warnings through logging, on stderr
    )
    try:
        await register_search_attributes(env)
        return await measure_costs(env)
    finally:
        await env.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", type=Path, help="also write the costs as JSON here")
    json_path: Path | None = parser.parse_args().json
    configure_logging("ERROR")  # on stderr: stdout is the report
    costs = asyncio.run(measure_on_own_server())
    print(markdown(costs), end="")
    if json_path is not None:
        json_path.write_text(to_json(costs))


if __name__ == "__main__":
    main()

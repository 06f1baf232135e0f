"""What a ticket costs on Temporal Cloud: billable Actions per path, held to a table.

The paths run on the time-skipping server (``bench.actions``: the same scenarios as
``python -m bench.actions``), and each one's Actions per kind must equal ``EXPECTED``:
a count that grows fails, naming the path and the kind; one that falls fails too, asking
for the table to be lowered, so the table always shows what a ticket costs now. The
counter itself is checked on small hand-built histories.
"""

from __future__ import annotations

import pytest
import pytest_asyncio
from temporalio.api.common.v1 import ActivityType, Payload, SearchAttributes, WorkflowExecution
from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import (
    ActivityTaskScheduledEventAttributes,
    ActivityTaskStartedEventAttributes,
    HistoryEvent,
    MarkerRecordedEventAttributes,
    UpsertWorkflowSearchAttributesEventAttributes,
    WorkflowExecutionSignaledEventAttributes,
    WorkflowExecutionStartedEventAttributes,
)
from temporalio.client import WorkflowHistory
from temporalio.testing import WorkflowEnvironment

from bench.actions import (
    CHANGE_VERSION,
    LOCAL_ACTIVITY_MARKER,
    ActionCount,
    PathCost,
    activity_attempts_by_type,
    count_actions,
    measure_costs,
)

# Per path: Actions in history per kind and in total, then heartbeats and queries (billed,
# not in history). Lower a number here when a change makes a path cheaper.
EXPECTED: dict[str, dict[str, int]] = {
    "premium_ack_before_breach": {
        "workflow_started": 1,
        "child_workflows": 0,
        "signals": 2,
        "timers": 2,
        "activity_attempts": 0,
        "local_activity_tasks": 4,
        "search_attribute_upserts": 2,
        "updates": 0,
        "total": 11,
        "heartbeats": 0,
        "queries": 2,
    },
    "premium_breach_then_ack": {
        "workflow_started": 1,
        "child_workflows": 0,
        "signals": 2,
        "timers": 4,
        "activity_attempts": 0,
        "local_activity_tasks": 6,
        "search_attribute_upserts": 3,
        "updates": 0,
        "total": 16,
        "heartbeats": 0,
        "queries": 2,
    },
    "out_of_scope_sow_accepted": {
        "workflow_started": 1,
        "child_workflows": 2,
        "signals": 2,
        "timers": 2,
        "activity_attempts": 2,
        "local_activity_tasks": 3,
        "search_attribute_upserts": 2,
        "updates": 0,
        "total": 14,
        "heartbeats": 0,
        "queries": 1,
    },
    "premium_repeats_then_ack": {
        "workflow_started": 1,
        "child_workflows": 0,
        "signals": 2,
        "timers": 6,
        "activity_attempts": 0,
        "local_activity_tasks": 8,
        "search_attribute_upserts": 3,
        "updates": 0,
        "total": 20,
        "heartbeats": 0,
        "queries": 2,
    },
    "community_idle_close": {
        "workflow_started": 1,
        "child_workflows": 0,
        "signals": 0,
        "timers": 1,
        "activity_attempts": 0,
        "local_activity_tasks": 2,
        "search_attribute_upserts": 1,
        "updates": 0,
        "total": 5,
        "heartbeats": 0,
        "queries": 0,
    },
}


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def costs(env: WorkflowEnvironment) -> dict[str, PathCost]:
    return {cost.path: cost for cost in await measure_costs(env)}


async def test_every_path_has_a_row(costs: dict[str, PathCost]) -> None:
    assert sorted(costs) == sorted(EXPECTED)


@pytest.mark.parametrize("path", list(EXPECTED))
async def test_a_path_costs_what_the_table_says(costs: dict[str, PathCost], path: str) -> None:
    measured = costs[path].breakdown()
    assert sorted(measured) == sorted(EXPECTED[path]), "the table's kinds are out of date"
    problems = [
        _difference(path, kind, expected, measured[kind])
        for kind, expected in EXPECTED[path].items()
        if measured[kind] != expected
    ]
    assert not problems, "\n".join(problems)


def _difference(path: str, kind: str, expected: int, measured: int) -> str:
    if measured > expected:
        return f"{path}: {kind} grew from {expected} to {measured} Actions"
    return (
        f"{path}: {kind} fell from {expected} to {measured} Actions: lower EXPECTED in"
        " tests/workflow/test_cost.py"
    )


# --- the counter on hand-built histories ---------------------------------------------------

E = EventType


def history(*events: HistoryEvent) -> WorkflowHistory:
    """A run of ``events``, numbered from 1."""
    for number, event in enumerate(events, start=1):
        event.event_id = number
    return WorkflowHistory("wf", list(events))


def started(*, child: bool = False) -> HistoryEvent:
    parent = WorkflowExecution(workflow_id="parent") if child else None
    return HistoryEvent(
        event_type=E.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED,
        workflow_execution_started_event_attributes=WorkflowExecutionStartedEventAttributes(
            parent_workflow_execution=parent
        ),
    )


def task_completed() -> HistoryEvent:
    return HistoryEvent(event_type=E.EVENT_TYPE_WORKFLOW_TASK_COMPLETED)


def local_activity(task_completed_id: int) -> HistoryEvent:
    return HistoryEvent(
        event_type=E.EVENT_TYPE_MARKER_RECORDED,
        marker_recorded_event_attributes=MarkerRecordedEventAttributes(
            marker_name=LOCAL_ACTIVITY_MARKER, workflow_task_completed_event_id=task_completed_id
        ),
    )


def upsert(*names: str) -> HistoryEvent:
    fields = {name: Payload(data=b'"x"') for name in names}
    return HistoryEvent(
        event_type=E.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES,
        upsert_workflow_search_attributes_event_attributes=(
            UpsertWorkflowSearchAttributesEventAttributes(
                search_attributes=SearchAttributes(indexed_fields=fields)
            )
        ),
    )


def test_an_activity_counts_every_attempt() -> None:
    runs = history(
        started(),
        HistoryEvent(
            event_type=E.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED,
            activity_task_scheduled_event_attributes=ActivityTaskScheduledEventAttributes(
                activity_type=ActivityType(name="deliver_step")
            ),
        ),
        # A retried activity leaves only its last attempt's started event, numbered.
        HistoryEvent(
            event_type=E.EVENT_TYPE_ACTIVITY_TASK_STARTED,
            activity_task_started_event_attributes=ActivityTaskStartedEventAttributes(
                scheduled_event_id=2, attempt=3
            ),
        ),
        HistoryEvent(event_type=E.EVENT_TYPE_ACTIVITY_TASK_COMPLETED),
    )
    assert count_actions(runs) == ActionCount(workflow_started=1, activity_attempts=3)
    assert activity_attempts_by_type([runs]) == {"deliver_step": 3}


def test_local_activities_count_once_per_workflow_task() -> None:
    one_task = history(started(), task_completed(), local_activity(2), local_activity(2))
    two_tasks = history(
        started(), task_completed(), local_activity(2), task_completed(), local_activity(4)
    )
    assert count_actions(one_task).local_activity_tasks == 1
    assert count_actions(two_tasks).local_activity_tasks == 2


def test_a_child_counts_two_at_its_parent_and_nothing_itself() -> None:
    parent = history(
        started(), HistoryEvent(event_type=E.EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_INITIATED)
    )
    child = history(started(child=True))
    assert count_actions([parent, child]) == ActionCount(workflow_started=1, child_workflows=2)


def test_each_run_of_a_continued_workflow_is_a_start() -> None:
    assert count_actions([history(started()), history(started())]).workflow_started == 2


def test_an_upsert_counts_once_and_the_versioning_attribute_is_free() -> None:
    runs = history(
        started(),
        upsert("TicketState", "SlaBreached"),
        upsert(CHANGE_VERSION),
        upsert(CHANGE_VERSION, "TicketState"),
    )
    assert count_actions(runs).search_attribute_upserts == 2


def test_a_signal_between_workflows_counts_once_at_its_sender() -> None:
    from_client = HistoryEvent(event_type=E.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED)
    sender = history(
        started(),
        HistoryEvent(event_type=E.EVENT_TYPE_SIGNAL_EXTERNAL_WORKFLOW_EXECUTION_INITIATED),
    )
    receiver = history(
        started(),
        from_client,
        HistoryEvent(
            event_type=E.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED,
            workflow_execution_signaled_event_attributes=WorkflowExecutionSignaledEventAttributes(
                external_workflow_execution=WorkflowExecution(workflow_id="sender")
            ),
        ),
    )
    assert count_actions([sender, receiver]).signals == 2


def test_timers_and_updates_count_one_each() -> None:
    runs = history(
        started(),
        HistoryEvent(event_type=E.EVENT_TYPE_TIMER_STARTED),
        HistoryEvent(event_type=E.EVENT_TYPE_TIMER_STARTED),
        HistoryEvent(event_type=E.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED),
    )
    assert count_actions(runs) == ActionCount(workflow_started=1, timers=2, updates=1)

"""Changing the ticket workflow while tickets are in flight (docs/versioning.md), on the
real dev server with the fake activities (tests/workflow/fakes.py).

A ticket opened by the previous release keeps the previous branch after the new worker
takes over (it replays its history, finds no patch marker and stays on the old path for
the rest of its run); a ticket opened afterwards takes the new branch and is marked with
``TemporalChangeVersion``, which is how operators find the tickets still on the old code.
Both histories replay against the current code; the new one does not replay against the
old release, which is why a rollback is unsafe once new tickets have started.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import Client, WorkflowHandle, WorkflowHistory, WorkflowUpdateFailedError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer

from bench.actions import LOCAL_ACTIVITY_MARKER
from contract.models import (
    Acknowledge,
    AgentReply,
    CustomerReply,
    Metric,
    Resolve,
    TicketInput,
    TicketState,
    TicketStatus,
)
from harness.policy import with_targets, write_policy
from harness.processes import eventually
from policy.schema import POLICY_FILE_ENV
from runtime.converter import support_data_converter
from tests.conftest import quiet, ticket
from tests.workflow.fakes import FakeActivities
from tests.workflow.previous_release import BEFORE_ROLLUP, BEFORE_TARGETS, PREVIOUS_RELEASE
from worker import worker_with
from workflows import ALL_WORKFLOWS
from workflows.ticket import BATCHED_LEDGER_WRITES
from workflows.ticket.patches import (
    CHANGES_SO_FAR,
    KEEP_WAKE_TIMER,
    LOCAL_FIRST_ATTEMPTS,
    lacking,
)


async def settled_after_an_activity(client: Client, workflow_id: str) -> None:
    """Wait until the ticket has no activity or workflow task in flight, and has completed
    an activity, on the server or locally (its policy resolved)."""
    handle = client.get_workflow_handle(workflow_id)

    async def done() -> bool:
        if not await quiet(handle):
            return False
        history = await handle.fetch_history()
        return any(
            e.activity_task_completed_event_attributes.ByteSize() or local_activity(e)
            for e in history.events
        )

    await eventually(f"{workflow_id} to settle", done)


@asynccontextmanager
async def across_a_deploy(
    client: Client,
    queue: str,
    fakes: FakeActivities,
    before: Sequence[type],
    old: TicketInput,
    new: TicketInput,
) -> AsyncIterator[None]:
    """The release ``before`` opens ``old`` and is replaced while the ticket waits; the
    current worker then opens ``new`` and serves both for the body of the block."""
    async with worker_with(client, queue, fakes.activities(), before):
        await client.start_workflow("SupportTicket", old, id=old.workflow_id, task_queue=queue)
        await settled_after_an_activity(client, old.workflow_id)
    async with worker_with(client, queue, fakes.activities()):
        await client.start_workflow("SupportTicket", new, id=new.workflow_id, task_queue=queue)
        await settled_after_an_activity(client, new.workflow_id)
        yield


async def alike_and_no_way_back(
    fakes: FakeActivities,
    tickets: tuple[TicketInput, TicketInput],
    old_history: WorkflowHistory,
    new_history: WorkflowHistory,
    before: Sequence[type],
) -> None:
    """Both tickets, opened then resolved, left the same ledger events; both histories
    replay on the current code; the new one fails on the release ``before`` (no rollback)."""
    for t in tickets:
        kinds = sorted(e.kind for e in await fakes.events(t.ticket_id))
        assert kinds == ["acknowledged", "notified", "opened", "resolved"], (t.ticket_id, kinds)
    current = Replayer(workflows=ALL_WORKFLOWS, data_converter=support_data_converter)
    for history in (old_history, new_history):
        await current.replay_workflow(history)
    previous = Replayer(workflows=before, data_converter=support_data_converter)
    rollback = await previous.replay_workflow(new_history, raise_on_replay_failure=False)
    assert rollback.replay_failure is not None
    assert "nondetermin" in str(rollback.replay_failure).lower()


def local_activity(event: HistoryEvent, activity_type: str = "") -> bool:
    """Whether ``event`` records a local activity (of ``activity_type``, if given)."""
    marker = event.marker_recorded_event_attributes
    if marker.marker_name != LOCAL_ACTIVITY_MARKER:
        return False
    data = b"".join(p.data for p in marker.details["data"].payloads)
    return activity_type.encode() in data


def ledger_writes(history: WorkflowHistory) -> tuple[int, int]:
    """The ledger activities of a run: (on the server, local)."""
    server = sum(
        1
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
        and e.activity_task_scheduled_event_attributes.activity_type.name == "record_sla_events"
    )
    return server, sum(1 for e in history.events if local_activity(e, "record_sla_events"))


def patch_markers(history: WorkflowHistory) -> int:
    return len(patch_ids(history))


def patch_ids(history: WorkflowHistory) -> list[str]:
    """The patch ids a run's markers record, in order."""
    return [
        json.loads(e.marker_recorded_event_attributes.details["patch-data"].payloads[0].data)["id"]
        for e in history.events
        if e.marker_recorded_event_attributes.marker_name == "core_patch"
    ]


def change_version_upserts(history: WorkflowHistory) -> int:
    return sum(
        1
        for e in history.events
        if "TemporalChangeVersion"
        in e.upsert_workflow_search_attributes_event_attributes.search_attributes.indexed_fields
    )


async def running_without_the_change(client: Client, queue: str) -> set[str]:
    query = (
        f"WorkflowType = 'SupportTicket' AND ExecutionStatus = 'Running'"
        f" AND TaskQueue = '{queue}'"
        # docs/versioning.md's query: a run without this change's id or the roll-up's.
        f" AND {lacking(BATCHED_LEDGER_WRITES)}"
    )
    return {w.id async for w in client.list_workflows(query)}


async def test_in_flight_ticket_keeps_the_old_branch_new_ones_take_the_new(
    dev_server: WorkflowEnvironment, tmp_path: Path
) -> None:
    client = dev_server.client
    queue = f"tq-{uuid.uuid4()}"
    fakes = FakeActivities()  # one ledger for both releases, as in a deploy
    old, new = ticket(f"V-OLD-{uuid.uuid4().hex[:6]}"), ticket(f"V-NEW-{uuid.uuid4().hex[:6]}")
    # The previous release opens a ticket, then is replaced while the ticket waits.
    async with across_a_deploy(client, queue, fakes, PREVIOUS_RELEASE, old, new):
        # Operators can list the tickets still on the old branch.

        async def only_the_old() -> bool:
            return await running_without_the_change(client, queue) == {old.workflow_id}

        await eventually("only the old ticket on the old branch", only_the_old)

        # Resolving an open ticket also acknowledges it: two ledger events at once.
        for t in (old, new):
            handle = client.get_workflow_handle(t.workflow_id, result_type=TicketStatus)
            await handle.signal("resolve", Resolve(by="ana", summary="fixed"))
            assert (await handle.result()).state is TicketState.RESOLVED

    old_history = await client.get_workflow_handle(old.workflow_id).fetch_history()
    new_history = await client.get_workflow_handle(new.workflow_id).fetch_history()
    # The old ticket wrote one server activity per event (opened, acknowledged, resolved)
    # all its run, under the new worker too, and ran nothing locally; in the new one
    # "opened" rode on the intake delivery and acknowledged + resolved went together, in
    # one local activity (LOCAL_FIRST_ATTEMPTS), as its plan and its intake were.
    assert (ledger_writes(old_history), patch_markers(old_history)) == ((3, 0), 0)
    assert not any(local_activity(e) for e in old_history.events)
    # (The new ticket takes the change with every later one under one marker,
    # CHANGES_SO_FAR.)
    assert (ledger_writes(new_history), patch_markers(new_history)) == ((0, 1), 1)
    for activity_type in ("resolve_ticket_plan", "deliver_step"):
        assert any(local_activity(e, activity_type) for e in new_history.events), activity_type
    assert patch_ids(new_history) == [CHANGES_SO_FAR]
    # Either way the ledger holds the same events.
    await alike_and_no_way_back(fakes, (old, new), old_history, new_history, PREVIOUS_RELEASE)


async def test_a_ticket_opened_before_the_roll_up_keeps_a_marker_per_change(
    dev_server: WorkflowEnvironment,
) -> None:
    """CHANGES_SO_FAR crossing a deploy: a ticket the release before opened keeps asking
    each change (its replay finds no roll-up marker), so the changes it had met keep their
    markers and a change it meets under the new worker takes its own; a ticket the new
    worker opens records the one roll-up marker and has every change. Both behave alike
    (the same ledger events), both replay on the current code, the new one does not
    replay on the release before, and the operators' query for a rolled-up change counts
    neither (the old one took it with its own marker, the new one with the roll-up)."""
    client = dev_server.client
    queue = f"tq-{uuid.uuid4()}"
    fakes = FakeActivities()
    old = ticket(f"V-PRU-{uuid.uuid4().hex[:6]}", tier="premium")
    new = ticket(f"V-RU-{uuid.uuid4().hex[:6]}", tier="premium")
    async with across_a_deploy(client, queue, fakes, BEFORE_ROLLUP, old, new):

        async def without_local_first() -> set[str]:
            query = (
                f"WorkflowType = 'SupportTicket' AND ExecutionStatus = 'Running'"
                f" AND TaskQueue = '{queue}' AND {lacking(LOCAL_FIRST_ATTEMPTS)}"
            )
            return {w.id async for w in client.list_workflows(query)}

        assert await without_local_first() == set()
        for t in (old, new):
            handle = client.get_workflow_handle(t.workflow_id, result_type=TicketStatus)
            await handle.execute_update("acknowledge", Acknowledge(agent="ana"))
            await handle.signal("resolve", Resolve(by="ana", summary="fixed"))
            assert (await handle.result()).state is TicketState.RESOLVED
    old_history = await client.get_workflow_handle(old.workflow_id).fetch_history()
    new_history = await client.get_workflow_handle(new.workflow_id).fetch_history()
    assert patch_ids(old_history) == [
        LOCAL_FIRST_ATTEMPTS,
        KEEP_WAKE_TIMER,
        BATCHED_LEDGER_WRITES,
    ]
    assert change_version_upserts(old_history) == 3
    assert (patch_ids(new_history), change_version_upserts(new_history)) == ([CHANGES_SO_FAR], 1)
    # Both took every change: plan, delivery and ledger write local, one ledger batch.
    for history in (old_history, new_history):
        for activity_type in ("resolve_ticket_plan", "deliver_step", "record_sla_events"):
            assert any(local_activity(e, activity_type) for e in history.events), activity_type
    await alike_and_no_way_back(fakes, (old, new), old_history, new_history, BEFORE_ROLLUP)


def test_the_query_for_runs_without_a_change_counts_the_roll_up() -> None:
    assert lacking(LOCAL_FIRST_ATTEMPTS) == (
        "(TemporalChangeVersion IS NULL OR (TemporalChangeVersion != 'local-first-attempts'"
        " AND TemporalChangeVersion != 'changes-through-local-first-attempts'))"
    )
    # A change after the roll-up has its own marker only.
    assert lacking("a-later-change") == (
        "(TemporalChangeVersion IS NULL OR (TemporalChangeVersion != 'a-later-change'))"
    )


async def test_a_delivery_acknowledged_away_while_its_attempt_fails_is_superseded_not_failed(
    dev_server: WorkflowEnvironment,
) -> None:
    """On the real server (the time-skipping one never resolves this race): the breach's
    message to the duty manager fails at once in its local first attempt, then hangs 2 s
    and fails in the server's attempt, as a chat timing out does, and the agent
    acknowledges during that server attempt. The activity hears of the cancellation only
    when the attempt ends, with its failure: the step is moot, so it is recorded as
    superseded (the support lead, reached, stays delivered), never as a failed
    notification, and never retried. The chat-outage drill counted 22 such steps as lost
    (CANCELLED_ATTEMPT_SUPERSEDED)."""
    client = dev_server.client
    queue = f"tq-{uuid.uuid4()}"
    fakes = FakeActivities()
    fakes.unreachable.add("duty-manager")
    fakes.hang = timedelta(seconds=2)
    fakes.hang_local = False  # the local attempt fails at once; the server's hangs
    now = datetime.now(UTC).replace(microsecond=0)
    # Opened an hour ago less 2 s: Premium's breach (1 h) falls due in 2 s.
    data = ticket(f"V-ACK-{uuid.uuid4().hex[:6]}", tier="premium", severity="sev2")
    data = data.model_copy(update={"opened_at": now - timedelta(hours=1) + timedelta(seconds=2)})
    key = f"{data.workflow_id}/breach/duty-manager"
    async with worker_with(client, queue, fakes.activities()):
        await client.start_workflow("SupportTicket", data, id=data.workflow_id, task_queue=queue)
        handle = client.get_workflow_handle(data.workflow_id, result_type=TicketStatus)
        await eventually(
            "the breach's server attempt",
            lambda: fakes.attempts.count(key) == 2,
            15,
            every=0.02,
        )
        await handle.execute_update("acknowledge", Acknowledge(agent="alice"))

        async def outcome() -> TicketStatus | None:
            status = await handle.query("status", result_type=TicketStatus)
            moot = [h for h in status.history if h.kind == "step_superseded"]
            failed = [h for h in status.history if h.kind == "notification_failed"]
            return status if moot or failed else None

        status = await eventually("the breach's outcome", outcome, 15, every=0.05)
        [record] = [e for e in status.escalations if e.step == "breach"]
        assert record.superseded_at is not None and record.failed == [], status.history
        assert "notification_failed" not in [h.kind for h in status.history]
        # The local first attempt (LOCAL_FIRST_ATTEMPTS), then the server activity's
        # first, which the acknowledgement cancelled: never retried.
        assert fakes.attempts.count(key) == 2
        await handle.execute_update("resolve", Resolve(by="alice"))
        await handle.result()
    events = await fakes.events(status.ticket_id)
    [breached] = [e for e in events if e.kind == "breached"]
    assert breached.detail["delivered"] == ["support-lead"]
    assert [e.kind for e in events].count("step_superseded") >= 1


async def test_a_ticket_opened_before_the_targets_keeps_the_first_response_only(
    dev_server: WorkflowEnvironment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SLA_TARGETS crossing a deploy: under a policy whose Premium tier has next-reply and
    resolution targets, a ticket the release before opened keeps the old branch after the
    new worker takes over (the replay of its start finds no marker, and the SDK keeps that
    answer for the run): the first response only, and agent_reply refused with why (it is
    acknowledged instead). A ticket opened by the new worker has every target. Both
    histories replay on the current code."""
    monkeypatch.setenv(
        POLICY_FILE_ENV, str(write_policy(tmp_path, with_targets("premium", "PT4H", "P1D")))
    )
    client = dev_server.client
    queue = f"tq-{uuid.uuid4()}"
    fakes = FakeActivities()
    old = ticket(f"V-PRE-{uuid.uuid4().hex[:6]}", tier="premium")
    new = ticket(f"V-TGT-{uuid.uuid4().hex[:6]}", tier="premium")
    async with across_a_deploy(client, queue, fakes, BEFORE_TARGETS, old, new):
        statuses: dict[str, TicketStatus] = {}
        for t in (old, new):
            handle = client.get_workflow_handle(t.workflow_id, result_type=TicketStatus)
            if t is old:
                with pytest.raises(WorkflowUpdateFailedError) as refused:
                    await handle.execute_update("agent_reply", AgentReply(agent="ana"))
                assert str(refused.value.cause).endswith(
                    f"cannot agent_reply: ticket {t.ticket_id} began before agent replies and"
                    " waits on the customer existed (this run keeps the first response only);"
                    " acknowledge or resolve it instead"
                )
                await handle.execute_update("acknowledge", Acknowledge(agent="ana"))
            else:
                await handle.execute_update("agent_reply", AgentReply(agent="ana"))
            await handle.signal(
                "customer_reply",
                CustomerReply(received_at=datetime.now(UTC), reference=f"<{t.ticket_id}@x>"),
            )

            async def replied(
                h: WorkflowHandle[Any, TicketStatus] = handle, first: bool = t is old
            ) -> TicketStatus | None:
                status = await h.query("status", result_type=TicketStatus)
                kinds = [e.kind for e in status.history]
                # The new ticket's next reply starts once its plan comes back.
                done = "customer_reply" in kinds and (first or "next_reply_started" in kinds)
                return status if done else None

            statuses[t.ticket_id] = await eventually("the reply", replied, 15, every=0.05)
            await handle.execute_update("resolve", Resolve(by="ana"))
            await handle.result()
    before, after = statuses[old.ticket_id], statuses[new.ticket_id]
    assert before.state is after.state is TicketState.ACKNOWLEDGED
    assert [t.metric for t in before.targets] == [Metric.FIRST_RESPONSE]
    assert {t.metric for t in after.targets} == {
        Metric.FIRST_RESPONSE,
        Metric.RESOLUTION,
        Metric.NEXT_REPLY,
    }
    current = Replayer(workflows=ALL_WORKFLOWS, data_converter=support_data_converter)
    for t in (old, new):
        await current.replay_workflow(
            await client.get_workflow_handle(t.workflow_id).fetch_history()
        )

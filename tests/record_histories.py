"""Record the committed workflow histories that ``test_replay.py`` replays.

    make replay-histories      # python -m tests.record_histories [path ...]

Runs each main path of a ticket on the time-skipping server with the current workflow code
and writes its history (and the SOW child's) to ``tests/histories/``, overwriting files of
the same name. Re-record only for a deliberate, versioned change (``workflow.patched``),
after moving the current files to ``tests/histories/before-<change>/``: tickets in flight
from the previous release still have those histories, and they must keep replaying.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from temporalio.client import WorkflowHandle, WorkflowHistory
from temporalio.testing import WorkflowEnvironment

from contract.models import (
    Acknowledge,
    AgentReply,
    AwaitCustomer,
    ChangeSeverity,
    CustomerReply,
    MarkOutOfScope,
    Resolve,
    SowDecision,
    TicketStatus,
)
from harness.policy import Edit, with_targets, write_policy
from harness.sinks import serve_sink
from policy.schema import POLICY_FILE_ENV
from runtime.converter import support_data_converter
from tests.conftest import (
    Stack,
    advance_to,
    binary,
    now_second,
    open_now,
    open_ticket_at,
    register_search_attributes,
    result_of,
    running_stack,
    ticket,
    until_status,
)

HISTORIES = Path(__file__).with_name("histories")
M = timedelta(minutes=1)


async def ack_and_resolve(handle: WorkflowHandle[Any, TicketStatus], agent: str) -> list[str]:
    """``agent`` acknowledges and resolves the ticket; its workflow id once it closed."""
    await handle.signal("acknowledge", Acknowledge(agent=agent))
    await handle.signal("resolve", Resolve(by=agent))
    await handle.result()
    return [handle.id]


async def ack_before_breach(stack: Stack) -> list[str]:
    t0, handle = await open_now(stack, ticket("H-ack-before-breach"))
    await advance_to(stack.env, t0 + 35 * M)
    await handle.signal("acknowledge", Acknowledge(agent="alice", note="on it"))
    await advance_to(stack.env, t0 + 40 * M)
    await handle.signal("acknowledge", Acknowledge(agent="bob"))
    await handle.signal("resolve", Resolve(by="alice", summary="restarted the API"))
    await handle.result()
    return [handle.id]


async def breach_and_repeat(stack: Stack) -> list[str]:
    t0, handle = await open_now(
        stack,
        ticket("H-breach", customer_id="example-bank", tier="mission_critical", severity="sev1"),
    )
    await advance_to(stack.env, t0 + 26 * M)
    return await ack_and_resolve(handle, "carol")


async def severity_changes(stack: Stack) -> list[str]:
    t0, handle = await open_now(
        stack, ticket("H-severity", tier="mission_critical", severity="sev3")
    )
    await advance_to(stack.env, t0 + 20 * M)
    await handle.signal("change_severity", ChangeSeverity(severity="sev1", by="triage"))
    await advance_to(stack.env, t0 + 22 * M)
    await handle.signal("change_severity", ChangeSeverity(severity="sev2", by="triage"))
    await advance_to(stack.env, t0 + 25 * M)
    await handle.signal("resolve", Resolve(by="dave"))
    await handle.result()
    return [handle.id]


async def out_of_scope_accepted(stack: Stack) -> list[str]:
    handle = await open_ticket_at(stack, ticket("H-sow-accepted", category="custom_engineering"))
    sow = stack.client.get_workflow_handle("sow-H-sow-accepted")
    await advance_to(stack.env, await now_second(stack.env) + 60 * M)
    await sow.signal(
        "sow_decision", SowDecision(decision="accepted", by="advisor", reference="SOW-1")
    )
    await handle.result()
    return [handle.id, sow.id]


async def marked_out_of_scope_expired(stack: Stack) -> list[str]:
    t0, handle = await open_now(stack, ticket("H-sow-expired", tier="standard"))
    await advance_to(stack.env, t0 + 5 * M)
    await handle.signal("mark_out_of_scope", MarkOutOfScope(by="erin", reason="feature request"))
    await result_of(stack.env, handle)
    return [handle.id, "sow-H-sow-expired"]


async def community_idle(stack: Stack) -> list[str]:
    handle = await open_ticket_at(stack, ticket("H-community", tier="community"))
    await result_of(stack.env, handle)
    return [handle.id]


async def long_escalation_continued(stack: Stack) -> list[str]:
    """Runs under a policy whose history limit is tiny, so the ticket continues as new."""
    t0, handle = await open_now(stack, ticket("H-long", tier="mission_critical", severity="sev1"))
    # Not on a step's instant: the time-skipping server cannot complete a continue-as-new
    # task that a signal raced ("invalid history builder state"), which a real server
    # handles by retrying the task with the signal.
    await advance_to(stack.env, t0 + 82 * M)
    return await ack_and_resolve(handle, "frank")


async def paged_ack_resolve(stack: Stack) -> list[str]:
    """The duty engineer is paged; the ack and the resolve are sent to the pager too."""
    t0, handle = await open_now(stack, ticket("H-paged", severity="sev1"))
    await advance_to(stack.env, t0 + 31 * M)
    await handle.signal("acknowledge", Acknowledge(agent="gina"))
    await advance_to(stack.env, t0 + 33 * M)
    await handle.signal("resolve", Resolve(by="gina"))
    await handle.result()
    return [handle.id]


async def ack_while_delivery_pending(stack: Stack) -> list[str]:
    """The breach step's webhook is down (its delivery retries) when the ticket is
    acknowledged: the delivery is still pending at the acknowledgement."""
    t0, handle = await open_now(stack, ticket("H-ack-pending"))
    await advance_to(stack.env, t0 + 60 * M)
    await until_status(
        handle, "the breach step", lambda s: any(e.kind == "breach" for e in s.escalations)
    )
    await handle.signal("acknowledge", Acknowledge(agent="hana"))
    await handle.signal("resolve", Resolve(by="hana"))
    await result_of(stack.env, handle)
    return [handle.id]


async def customer_replies(stack: Stack) -> list[str]:
    """The customer writes while the ticket is open, and again once it is acknowledged."""
    t0, handle = await open_now(stack, ticket("H-replies"))

    async def reply_at(minutes: int, subject: str, reference: str) -> None:
        """The customer's reply arrives ``minutes`` after the ticket opened."""
        at = t0 + minutes * M
        await advance_to(stack.env, at)
        reply = CustomerReply(received_at=at, subject=subject, reference=reference)
        await handle.signal("customer_reply", reply)

    await reply_at(10, "more logs", "<m1@acme.example>")
    await advance_to(stack.env, t0 + 20 * M)
    await handle.signal("acknowledge", Acknowledge(agent="ivan"))
    await reply_at(25, "still down", "<m2@acme.example>")
    await advance_to(stack.env, t0 + 30 * M)
    await handle.signal("resolve", Resolve(by="ivan"))
    await handle.result()
    return [handle.id]


async def agent_updates(stack: Stack) -> list[str]:
    """The agent surfaces' path: actions as Updates, the ack stamped by the surface."""
    t0, handle = await open_now(stack, ticket("H-updates", tier="mission_critical"))
    await advance_to(stack.env, t0 + 5 * M)
    await handle.execute_update("change_severity", ChangeSeverity(severity="sev1", by="triage"))
    await advance_to(stack.env, t0 + 17 * M)
    await handle.execute_update("acknowledge", Acknowledge(agent="jo", at=t0 + 14 * M))
    await handle.execute_update("resolve", Resolve(by="jo", summary="failed over"))
    await handle.result()
    return [handle.id]


async def sla_targets(stack: Stack) -> list[str]:
    """Next reply and resolution targets: an agent's public answer, customer replies that
    start the next reply's clock, a wait on the customer that pauses them, a missed next
    reply, a re-triage of the answered ticket, the resolution."""
    t0, handle = await open_now(stack, ticket("H-targets"))

    async def reply_at(hours: float, reference: str) -> None:
        at = t0 + timedelta(hours=hours)
        await advance_to(stack.env, at)
        await handle.signal(
            "customer_reply", CustomerReply(received_at=at, subject="more", reference=reference)
        )

    await advance_to(stack.env, t0 + 10 * M)
    await handle.execute_update("agent_reply", AgentReply(agent="kim", at=t0 + 10 * M))
    await reply_at(1, "<t1@acme.example>")
    await advance_to(stack.env, t0 + 4 * 60 * M + 30 * M)
    await handle.execute_update("agent_reply", AgentReply(agent="kim", summary="try this"))
    await advance_to(stack.env, t0 + 5 * 60 * M)
    await handle.execute_update("await_customer", AwaitCustomer(by="kim", reason="did it help?"))
    await reply_at(8, "<t2@acme.example>")
    await advance_to(stack.env, t0 + 12 * 60 * M + M)
    await handle.execute_update("change_severity", ChangeSeverity(severity="sev1", by="lead"))
    await handle.execute_update("resolve", Resolve(by="kim", summary="fixed"))
    await handle.result()
    return [handle.id]


async def raise_after_ack(stack: Stack) -> list[str]:
    """A Mission Critical sev3 ticket acknowledged, then raised to sev1: the new severity's
    first responders who have not heard of it are told."""
    t0, handle = await open_now(
        stack, ticket("H-raise-acked", tier="mission_critical", severity="sev3")
    )
    await advance_to(stack.env, t0 + 2 * M)
    await handle.execute_update("acknowledge", Acknowledge(agent="lee"))
    await advance_to(stack.env, t0 + 10 * M)
    await handle.execute_update(
        "change_severity", ChangeSeverity(severity="sev1", by="lee", reason="all regions")
    )
    await advance_to(stack.env, t0 + 20 * M)
    await handle.execute_update("resolve", Resolve(by="lee"))
    await handle.result()
    return [handle.id]


async def verify_requester(stack: Stack) -> list[str]:
    """The Community ticket of an unverified address at the bank's domain: a signal naming
    another address is refused, then the requester's confirmation moves the ticket to the
    bank's contract with the clock from the submission (its deadline is past: breached).
    Plain payloads, so that the release before the signal existed records it too."""
    unverified = ticket(
        "H-verify",
        customer_id="community",
        tier=None,
        severity="sev1",
        reporter_email="noc@bank.example",
        intake_channel="web_form",
    )
    t0, handle = await open_now(stack, unverified)
    await advance_to(stack.env, t0 + 5 * M)
    wrong = {"customer_id": "example-bank", "address": "eve@bank.example", "by": "intake"}
    await handle.signal("verify_requester", wrong)
    await advance_to(stack.env, t0 + 18 * M)
    await handle.signal("verify_requester", wrong | {"address": "noc@bank.example"})
    await advance_to(stack.env, t0 + 21 * M)
    await handle.execute_update("acknowledge", Acknowledge(agent="lee"))
    await handle.execute_update("resolve", Resolve(by="lee"))
    await handle.result()
    return [handle.id]


async def agent_signals(stack: Stack) -> list[str]:
    """A Premium ticket (no targets beyond the first response) answered and put on hold by
    the agent_reply and await_customer SIGNALS (a surface's fallback while no worker
    answered), then resolved: plain payloads, so that the releases before those signals
    had a handler (before-sla-targets) record it too."""
    t0, handle = await open_now(stack, ticket("H-agent-signals", tier="premium", severity="sev2"))
    await advance_to(stack.env, t0 + 5 * M)
    await handle.signal("agent_reply", {"agent": "lee", "summary": "looking"})
    await advance_to(stack.env, t0 + 10 * M)
    await handle.signal("await_customer", {"by": "lee", "reason": "logs?"})
    await advance_to(stack.env, t0 + 20 * M)
    await handle.signal("resolve", {"by": "lee"})
    await handle.result()
    return [handle.id]


PATHS: dict[str, Callable[[Stack], Awaitable[list[str]]]] = {
    "ack_before_breach": ack_before_breach,
    "breach_and_repeat": breach_and_repeat,
    "severity_changes": severity_changes,
    "out_of_scope_accepted": out_of_scope_accepted,
    "marked_out_of_scope_expired": marked_out_of_scope_expired,
    "community_idle": community_idle,
    "long_escalation_continued": long_escalation_continued,
    "paged_ack_resolve": paged_ack_resolve,
    "ack_while_delivery_pending": ack_while_delivery_pending,
    "customer_replies": customer_replies,
    "agent_updates": agent_updates,
    "sla_targets": sla_targets,
    "raise_after_ack": raise_after_ack,
    "verify_requester": verify_requester,
    "agent_signals": agent_signals,
}
# Paths recorded under a policy changed by the given edit.
POLICY_EDITS: dict[str, Edit] = {
    "long_escalation_continued": lambda p: p.update(limits={"continue_as_new_after_events": 60}),
    "paged_ack_resolve": lambda p: p["targets"]["duty-engineer"].update(
        channels=[{"type": "pager", "url_env": "RECORDING_PAGER_URL", "routing_key": "rk"}]
    ),
    "ack_while_delivery_pending": lambda p: p["targets"]["duty-manager"].update(
        channels=[{"type": "webhook", "url_env": "RECORDING_DOWN_URL"}]
    ),
    "sla_targets": with_targets(
        "premium", next_reply="PT4H", resolution="P1D", open_every_weekday=False
    ),
}


async def runs_of(env: WorkflowEnvironment, workflow_id: str) -> list[WorkflowHistory]:
    """Every run of a workflow id, oldest first (continue-as-new makes several)."""
    histories: list[WorkflowHistory] = []
    run_id: str | None = None
    while True:
        history = await env.client.get_workflow_handle(workflow_id, run_id=run_id).fetch_history()
        histories.insert(0, history)
        started = history.events[0].workflow_execution_started_event_attributes
        run_id = started.continued_execution_run_id or None
        if run_id is None:
            return histories


async def main(names: list[str]) -> None:
    unknown = set(names) - set(PATHS)
    if unknown:
        raise SystemExit(f"unknown paths {sorted(unknown)}; known: {', '.join(PATHS)}")
    env = await WorkflowEnvironment.start_time_skipping(
        data_converter=support_data_converter,
        test_server_existing_path=binary("temporal-test-server"),
    )
    await register_search_attributes(env)
    HISTORIES.mkdir(exist_ok=True)
    try:
        with tempfile.TemporaryDirectory() as tmp, serve_sink() as pager:
            os.environ["RECORDING_PAGER_URL"] = f"{pager.url}/pager"
            pager.down.add("/down")
            os.environ["RECORDING_DOWN_URL"] = f"{pager.url}/down"
            for name, path in PATHS.items():
                if names and name not in names:
                    continue
                if name in POLICY_EDITS:
                    os.environ[POLICY_FILE_ENV] = str(write_policy(Path(tmp), POLICY_EDITS[name]))
                else:
                    os.environ.pop(POLICY_FILE_ENV, None)
                async with running_stack(env, Path(tmp) / f"{name}.sqlite3") as stack:
                    ids = await path(stack)
                for workflow_id in ids:
                    for run, history in enumerate(await runs_of(env, workflow_id), start=1):
                        suffix = f".run{run}" if run > 1 or name in POLICY_EDITS else ""
                        target = HISTORIES / f"{name}.{workflow_id}{suffix}.json"
                        target.write_text(history.to_json())
                        print(
                            f"recorded {target.relative_to(HISTORIES.parent.parent)}"
                            f" ({len(history.events)} events)"
                        )
    finally:
        await env.shutdown()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))

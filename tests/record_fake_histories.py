"""Record the committed history of a path that needs a policy failure at one instant, which
the real activities of ``tests.record_histories`` cannot stage: a customer reply while the
policy cannot be resolved (a worker restarted without its versions while the file is
broken), fixed three minutes later. Runs on the fake activities of tests/workflow.

    .venv/bin/python -m tests.record_fake_histories        # tests/histories/resume_awaits_plan.*
    .venv/bin/python -m tests.record_fake_histories ack    # ack_during_attempt.* (dev server)

Run it from a worktree of an older release (with this file copied in) to record that
release's branch (tests/histories/before-resume-awaits-plan/)."""

import asyncio
import os
import sys
import tempfile
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from temporalio.testing import WorkflowEnvironment

from contract.models import (
    Acknowledge,
    AgentReply,
    AwaitCustomer,
    CustomerReply,
    Resolve,
    TicketStatus,
)
from harness.policy import with_targets, write_policy
from harness.processes import eventually
from harness.temporal import SDK_DYNAMIC_CONFIG, DevServer, connect
from policy.schema import POLICY_FILE_ENV
from runtime.converter import support_data_converter
from tests.conftest import (
    advance_to,
    binary,
    open_now,
    register_search_attributes,
    stack_on,
    ticket,
)
from tests.workflow.fakes import FakeActivities
from worker import worker_with

M, H, S = timedelta(minutes=1), timedelta(hours=1), timedelta(seconds=1)


OUT = Path(__file__).with_name("histories") / "resume_awaits_plan.ticket-H-resume-held.json"


async def main(out: str) -> None:
    env = await WorkflowEnvironment.start_time_skipping(
        data_converter=support_data_converter,
        test_server_existing_path=binary("temporal-test-server"),
    )
    await register_search_attributes(env)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            policy = write_policy(Path(tmp), with_targets("premium", "PT4H", "P1D"))
            os.environ[POLICY_FILE_ENV] = str(policy)
            fakes = FakeActivities()
            queue = f"tq-{uuid.uuid4()}"
            async with stack_on(
                env, queue, worker_with(env.client, queue, fakes.activities()), fakes
            ) as stack:
                t0, handle = await open_now(stack, ticket("H-resume-held", tier="premium"))
                await advance_to(env, t0 + 10 * M)
                await handle.execute_update("agent_reply", AgentReply(agent="kim", at=t0 + 10 * M))
                await advance_to(env, t0 + 2 * H)
                await handle.execute_update(
                    "await_customer", AwaitCustomer(by="kim", reason="logs?", at=t0 + 2 * H)
                )
                await advance_to(env, t0 + 2 * H + 5 * M)
                fakes.forget_policy_versions()
                text = policy.read_text()
                policy.write_text("version: broken\ntiers: [\n")
                await advance_to(env, t0 + 5 * H)
                await handle.signal(
                    "customer_reply",
                    CustomerReply(
                        received_at=t0 + 5 * H, subject="logs", reference="<logs@acme.example>"
                    ),
                )
                await advance_to(env, t0 + 5 * H + 2 * M + 30 * S)
                policy.write_text(text)
                await advance_to(env, t0 + 5 * H + 4 * M + 30 * S)
                await handle.execute_update("resolve", Resolve(by="kim"))
                await handle.result()
                history = await handle.fetch_history()
                await asyncio.to_thread(Path(out).write_text, history.to_json())
                print("recorded", out, len(history.events))
    finally:
        await env.shutdown()


ACK_OUT = Path(__file__).with_name("histories") / (
    "ack_during_attempt.ticket-H-ack-during-attempt.json"
)


async def ack_during_attempt(out: str) -> None:
    """On the dev server (the time-skipping one never resolves this race): the breach's
    message to the duty manager hangs 2 s and fails, and the agent acknowledges during
    that attempt (CANCELLED_ATTEMPT_SUPERSEDED)."""
    with tempfile.TemporaryDirectory() as tmp:
        server = DevServer(Path(tmp), in_memory=True, extra_args=SDK_DYNAMIC_CONFIG)
        await server.start()
        try:
            client = await connect(server.address)
            await register_search_attributes(WorkflowEnvironment.from_client(client))
            queue = f"tq-{uuid.uuid4()}"
            fakes = FakeActivities()
            fakes.unreachable.add("duty-manager")
            fakes.hang = timedelta(seconds=2)
            now = datetime.now(UTC).replace(microsecond=0)
            data = ticket("H-ack-during-attempt", tier="premium", severity="sev2")
            data = data.model_copy(update={"opened_at": now - H + 2 * S})
            key = f"{data.workflow_id}/breach/duty-manager"
            async with worker_with(client, queue, fakes.activities()):
                await client.start_workflow(
                    "SupportTicket", data, id=data.workflow_id, task_queue=queue
                )
                handle = client.get_workflow_handle(data.workflow_id, result_type=TicketStatus)
                await eventually("the attempt", lambda: key in fakes.attempts, 15, every=0.02)
                await handle.execute_update("acknowledge", Acknowledge(agent="alice"))

                async def outcome() -> TicketStatus | None:
                    status = await handle.query("status", result_type=TicketStatus)
                    kinds = {h.kind for h in status.history}
                    return status if kinds & {"step_superseded", "notification_failed"} else None

                await eventually("the breach's outcome", outcome, 15, every=0.05)
                await handle.execute_update("resolve", Resolve(by="alice"))
                await handle.result()
                history = await handle.fetch_history()
                await asyncio.to_thread(Path(out).write_text, history.to_json())
                print("recorded", out, len(history.events))
        finally:
            await asyncio.to_thread(server.stop)


if __name__ == "__main__":
    # python -m tests.record_fake_histories [resume|ack] [OUT]
    which = sys.argv[1] if len(sys.argv) > 1 else "resume"
    if which == "ack":
        asyncio.run(ack_during_attempt(sys.argv[2] if len(sys.argv) > 2 else str(ACK_OUT)))
    else:
        asyncio.run(main(sys.argv[2] if len(sys.argv) > 2 else str(OUT)))

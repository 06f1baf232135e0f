"""Health checks of the compose stack's long-running roles (docker-compose.yml runs them):

    python /app/deploy/healthcheck.py service   GET /healthz answers 200 (the service is up
                                                and reaches Temporal)
    python /app/deploy/healthcheck.py mailbox   the SMTP listener answers NOOP with 250
    python /app/deploy/healthcheck.py worker    this container's worker is polling the task
                                                queue (a poller whose identity is
                                                <pid>@<this hostname>, seen recently)

Exit 0 healthy, 1 not, with one line saying why; 2 for an unknown role.
"""

from __future__ import annotations

import asyncio
import os
import smtplib
import socket
import sys
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta

from runtime.process import exit_flushed

TIMEOUT_SECONDS = 5.0
# A worker long-polls: each poll lasts at most about 70 s, and the next one starts at once.
POLLER_FRESH = timedelta(minutes=3)


def check_service() -> str:
    port = int(os.environ.get("SUPPORT_HTTP_PORT", "8000"))
    url = f"http://127.0.0.1:{port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_SECONDS) as response:
            return f"{url}: {response.status}"
    except urllib.error.HTTPError as err:
        raise Unhealthy(f"{url}: {err.code} {err.read(200).decode(errors='replace')}") from err
    except OSError as err:
        raise Unhealthy(f"{url}: {err}") from err


def check_mailbox() -> str:
    port = int(os.environ.get("SUPPORT_MAILBOX_PORT", "2525"))
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=TIMEOUT_SECONDS) as smtp:
            code, _ = smtp.noop()
    except (OSError, smtplib.SMTPException) as err:
        raise Unhealthy(f"smtp 127.0.0.1:{port}: {err}") from err
    if code != 250:
        raise Unhealthy(f"smtp 127.0.0.1:{port}: NOOP answered {code}")
    return f"smtp 127.0.0.1:{port}: 250"


async def check_worker(hostname: str | None = None) -> str:
    from temporalio.api.enums.v1 import TaskQueueKind, TaskQueueType
    from temporalio.api.taskqueue.v1 import TaskQueue
    from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest

    from runtime.connection import connect, task_queue

    suffix = "@" + (hostname or socket.gethostname())
    queue = task_queue()
    try:
        client = await asyncio.wait_for(connect(), TIMEOUT_SECONDS)
        now = datetime.now(UTC)
        for kind, label in (
            (TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW, "workflow"),
            (TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY, "activity"),
        ):
            response = await client.workflow_service.describe_task_queue(
                DescribeTaskQueueRequest(
                    namespace=client.namespace,
                    task_queue=TaskQueue(name=queue, kind=TaskQueueKind.TASK_QUEUE_KIND_NORMAL),
                    task_queue_type=kind,
                ),
                timeout=timedelta(seconds=TIMEOUT_SECONDS),
            )
            fresh = [
                p
                for p in response.pollers
                if p.identity.endswith(suffix)
                and now - p.last_access_time.ToDatetime(tzinfo=UTC) < POLLER_FRESH
            ]
            if not fresh:
                raise Unhealthy(f"no {label} poller from *{suffix} on task queue {queue}")
    except Unhealthy:
        raise
    except Exception as err:  # unreachable server, timeout, refused call
        raise Unhealthy(f"task queue {queue}: {type(err).__name__}: {err}") from err
    return f"task queue {queue}: polled by *{suffix}"


class Unhealthy(Exception):
    pass


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    checks = {
        "service": check_service,
        "mailbox": check_mailbox,
        "worker": lambda: asyncio.run(check_worker()),
    }
    if len(args) != 1 or args[0] not in checks:
        print(f"usage: healthcheck.py {{{','.join(checks)}}}", file=sys.stderr)
        return 2
    try:
        print(checks[args[0]]())
    except Unhealthy as err:
        print(f"unhealthy: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    # os._exit after flushing (runtime.process): the Temporal client's threads can abort a
    # normal interpreter shutdown of a short-lived process, which would fail a healthy run.
    exit_flushed(main())

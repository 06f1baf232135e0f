"""``replay``: running tickets' histories replayed with this checkout's workflow code."""

from __future__ import annotations

import argparse
from typing import TextIO

from temporalio.client import Client

from ops.common import EXIT_FAILED, EXIT_OK
from ops.output import print_json

# `replay`: running executions of this project's workflow types, newest first.
REPLAY_DEFAULT = 200
REPLAY_QUERY = (
    "WorkflowType IN ('SupportTicket', 'StatementOfWork') AND ExecutionStatus = 'Running'"
)


async def replay_command(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    """Replay the histories of running tickets (and their statements of work) with the
    workflow code of this checkout: what a worker of this release would do with them. A
    nondeterminism error here is a change that needs ``workflow.patched``. The histories
    are decoded with the client's converter, so encrypted ones replay where keys are set."""
    # Imported here: the workflow code and the replayer are for this command only.
    from temporalio.runtime import Runtime, TelemetryConfig
    from temporalio.worker import Replayer

    from workflows import ALL_WORKFLOWS

    replayer = Replayer(
        workflows=ALL_WORKFLOWS,
        data_converter=client.data_converter,
        # The failures are reported below; the SDK core would also log them on stdout.
        runtime=Runtime(telemetry=TelemetryConfig(logging=None)),
    )
    histories = client.list_workflows(REPLAY_QUERY, limit=args.limit).map_histories()
    replayed: list[str] = []
    failed: dict[str, str] = {}
    async with replayer.workflow_replay_iterator(histories) as results:
        async for result in results:
            replayed.append(result.history.workflow_id)
            if result.replay_failure is not None:
                failed[result.history.workflow_id] = " ".join(str(result.replay_failure).split())
    if args.json:
        print_json({"replayed": len(replayed), "failed": failed}, out)
    else:
        for workflow_id, problem in sorted(failed.items()):
            print(f"FAILED {workflow_id}: {problem}", file=out)
        print(
            f"replayed {len(replayed)} running executions with this release:"
            f" {len(replayed) - len(failed)} ok, {len(failed)} failed",
            file=out,
        )
    return EXIT_FAILED if failed else EXIT_OK

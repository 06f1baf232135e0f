"""Ops CLI: list, inspect, acknowledge, reply to, set waiting, resolve and watch support
tickets.

    python -m ops list [--state S] [--tier T] [--severity S] [--breached | --not-breached]
                       [--customer C] [--limit N] [--page P] [--json]
    python -m ops show TICKET_ID [--json]
    python -m ops ack TICKET_ID [--agent NAME] [--note TEXT] [--json]
    python -m ops resolve TICKET_ID [--agent NAME] [--summary TEXT] [--json]
    python -m ops reply TICKET_ID [--agent NAME] [--summary TEXT] [--json]
    python -m ops wait TICKET_ID --reason TEXT [--agent NAME] [--json]
    python -m ops watch [filters] [--interval SECONDS] [--iterations N]
    python -m ops replay [--limit N] [--json]
    python -m ops policy diff FILE [--limit N] [--json]
    python -m ops policy adopt --version V (--ticket ID [ID ...] | --all-open) --by NAME
                               [--reason TEXT] [--json]
    python -m ops policy archive [FILE]
    python -m ops policy versions [--json]

Connects as Temporal's environment configuration says (``TEMPORAL_ADDRESS``, ...). Lists
come from visibility (search attributes), sorted by time to breach (open or acknowledged
tickets, and ``watch``, ranked across all of them: a flood of newer tickets cannot push an
older one out; a cut list says so); ``show`` reads the
ticket's ``status``; ``ack``, ``resolve``, ``reply`` and ``wait`` act through the ticket's
update and print the status after it. ``policy`` commands also read the SLA ledger's policy
archive (``--ledger-url``, default ``SUPPORT_LEDGER_URL``; docs/policy-versions.md). Exit
codes: 0 done, 2 bad arguments or an invalid policy file, 1 no such ticket, ticket closed,
an action refused, or Temporal or the ledger unreachable (one line on stderr); ``policy
diff``: 3 when a ticket would change (or could not be compared)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from datetime import UTC, datetime
from typing import Any, NoReturn, TextIO

from pydantic import BaseModel, ValidationError
from temporalio.service import RPCError

from contract.client import (
    BOARD_STATES,
    MAX_BOARD_PAGE,
    MAX_LIMIT,
    InvalidArgument,
    TicketError,
    check_customer,
    check_ticket_id,
)
from contract.models import (
    Acknowledge,
    AdoptPolicy,
    AgentReply,
    AwaitCustomer,
    Resolve,
    Severity,
    TicketState,
    Tier,
    describe_validation_error,
)
from ops.common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, BadInput, Failed, connect_or_fail
from ops.policy import policy_command
from ops.replay import REPLAY_DEFAULT, replay_command
from ops.tickets import list_command, show_command, signal_command, watch_command
from runtime.codec import DecryptionError
from runtime.process import exit_flushed

AGENT_ENV = "SUPPORT_AGENT"


# --- arguments ----------------------------------------------------------------------------


def _argument(check: Any) -> Any:
    """An argparse ``type`` from a ``contract.client`` check (bad value: exit 2)."""

    def parse(value: str) -> str:
        try:
            return str(check(value))
        except InvalidArgument as problem:
            raise argparse.ArgumentTypeError(str(problem).split(": ", 1)[-1]) from None

    return parse


def _add_filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--state", choices=[s.value for s in TicketState])
    parser.add_argument("--tier", choices=[t.value for t in Tier])
    parser.add_argument("--severity", choices=[s.value for s in Severity])
    breach = parser.add_mutually_exclusive_group()
    breach.add_argument(
        "--breached",
        dest="breached",
        action="store_const",
        const=True,
        default=None,
        help="only tickets whose response target was missed",
    )
    breach.add_argument(
        "--not-breached",
        dest="breached",
        action="store_const",
        const=False,
        help="only tickets with a target not missed (Community tickets have none)",
    )
    parser.add_argument("--customer", metavar="ID", type=_argument(check_customer))
    parser.add_argument(
        "--limit",
        metavar="N",
        type=int,
        default=500,
        help="at most N tickets (default 500): open or acknowledged ones (--state open,"
        " --state acknowledged, watch) ranked by time to breach across all of them, the N"
        " most urgent; any other listing the newest N, then sorted. A cut list says so",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="support-ops", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    ticket_id = _argument(check_ticket_id)

    listing = sub.add_parser("list", help="tickets from visibility, soonest breach first")
    _add_filters(listing)
    listing.add_argument(
        "--page",
        metavar="P",
        type=int,
        default=1,
        help="with --state open or acknowledged: page P of --limit tickets (default 1)",
    )
    listing.add_argument("--json", action="store_true", help="machine-readable JSON")

    show = sub.add_parser("show", help="a ticket's state, deadlines and SLA timeline")
    show.add_argument("ticket_id", metavar="TICKET_ID", type=ticket_id)
    show.add_argument("--json", action="store_true", help="the status query's JSON")

    ack = sub.add_parser("ack", help="acknowledge a ticket (stops its SLA clock)")
    ack.add_argument("ticket_id", metavar="TICKET_ID", type=ticket_id)
    ack.add_argument("--agent", metavar="NAME", help=f"who acknowledges (default ${AGENT_ENV})")
    ack.add_argument("--note", metavar="TEXT")
    ack.add_argument("--json", action="store_true")

    resolve = sub.add_parser("resolve", help="resolve a ticket")
    resolve.add_argument("ticket_id", metavar="TICKET_ID", type=ticket_id)
    resolve.add_argument("--agent", metavar="NAME", help=f"who resolves (default ${AGENT_ENV})")
    resolve.add_argument("--summary", metavar="TEXT")
    resolve.add_argument("--json", action="store_true")

    reply = sub.add_parser(
        "reply", help="the agent answered the customer (first response, next reply)"
    )
    reply.add_argument("ticket_id", metavar="TICKET_ID", type=ticket_id)
    reply.add_argument("--agent", metavar="NAME", help=f"who replied (default ${AGENT_ENV})")
    reply.add_argument("--summary", metavar="TEXT")
    reply.add_argument("--json", action="store_true")

    wait = sub.add_parser(
        "wait", help="the ticket waits on the customer (its pausable clocks stop)"
    )
    wait.add_argument("ticket_id", metavar="TICKET_ID", type=ticket_id)
    wait.add_argument("--reason", metavar="TEXT", required=True, help="what the customer owes")
    wait.add_argument("--agent", metavar="NAME", help=f"who says so (default ${AGENT_ENV})")
    wait.add_argument("--json", action="store_true")

    watch = sub.add_parser("watch", help="a live table of running tickets and countdowns")
    _add_filters(watch)
    watch.add_argument(
        "--interval",
        metavar="SECONDS",
        type=float,
        default=5.0,
        help="seconds between reads of visibility (default 5); countdowns tick every second",
    )
    watch.add_argument("--iterations", metavar="N", type=int, help="stop after N reads")

    replay = sub.add_parser(
        "replay",
        help="replay running tickets' histories with this release's workflow code"
        " (before deploying it)",
    )
    replay.add_argument(
        "--limit",
        metavar="N",
        type=int,
        default=REPLAY_DEFAULT,
        help=f"at most N running executions, newest first (default {REPLAY_DEFAULT})",
    )
    replay.add_argument("--json", action="store_true")
    _add_policy_commands(sub, ticket_id)
    return parser


def _add_ledger_url(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--ledger-url",
        metavar="URL",
        help="the SLA ledger holding the policy archive (default $SUPPORT_LEDGER_URL,"
        " else .data/sla-ledger.sqlite3)",
    )


def _add_policy_commands(sub: Any, ticket_id: Any) -> None:
    policy = sub.add_parser(
        "policy",
        help="policy versions: dry-run a new file, archive it, move open tickets to it",
        description="Tickets keep the policy version they started under (docs/policy-versions.md).",
    )
    commands = policy.add_subparsers(dest="policy_command", required=True)

    diff = commands.add_parser(
        "diff",
        help="dry run: every open ticket whose deadline or ladder FILE would change",
    )
    diff.add_argument("file", metavar="FILE", help="the new policy file")
    diff.add_argument(
        "--limit",
        metavar="N",
        type=int,
        default=argparse.SUPPRESS,
        help="read at most N running tickets, newest first, and say what was left out"
        " (default: every running ticket)",
    )
    diff.add_argument("--json", action="store_true")
    _add_ledger_url(diff)

    adopt = commands.add_parser(
        "adopt", help="move tickets to an archived policy version (recorded on each ticket)"
    )
    adopt.add_argument("--version", required=True, metavar="V", help="an archived version")
    which = adopt.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--ticket",
        dest="tickets",
        metavar="ID",
        nargs="+",
        action="extend",
        type=ticket_id,
        help="these tickets (the flag may be repeated)",
    )
    which.add_argument(
        "--all-open",
        action="store_true",
        help="every running ticket, open or acknowledged, not already on V",
    )
    adopt.add_argument("--by", metavar="NAME", help=f"who decided (default ${AGENT_ENV})")
    adopt.add_argument("--reason", metavar="TEXT")
    adopt.add_argument(
        "--limit",
        metavar="N",
        type=int,
        default=argparse.SUPPRESS,
        help="--all-open: read at most N running tickets, newest first, and say what was"
        " left out (default: every running ticket)",
    )
    adopt.add_argument("--json", action="store_true")
    _add_ledger_url(adopt)

    archive = commands.add_parser(
        "archive", help="validate a policy file and archive its version (before adopting it)"
    )
    archive.add_argument(
        "file", metavar="FILE", nargs="?", help="default $SUPPORT_POLICY_FILE, else the shipped one"
    )
    _add_ledger_url(archive)

    versions = commands.add_parser("versions", help="the archived policy versions")
    versions.add_argument("--json", action="store_true")
    _add_ledger_url(versions)


def _check_numbers(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if not 1 <= getattr(args, "limit", 1) <= MAX_LIMIT:
        parser.error(f"--limit: must be from 1 to {MAX_LIMIT}")
    page = getattr(args, "page", 1)
    if not 1 <= page <= MAX_BOARD_PAGE:
        parser.error(f"--page: must be from 1 to {MAX_BOARD_PAGE}")
    if page > 1 and args.state not in {s.value for s in BOARD_STATES}:
        parser.error(
            "--page: only with --state open or --state acknowledged (ranked across all of"
            " them); other listings read the newest --limit tickets"
        )
    if getattr(args, "interval", 1.0) <= 0:
        parser.error("--interval: must be more than 0")
    iterations = getattr(args, "iterations", None)
    if iterations is not None and iterations < 1:
        parser.error("--iterations: must be at least 1")


# The commands that act on a ticket through its update.
ACTING = ("ack", "resolve", "reply", "wait")


def _signal_payload(parser: argparse.ArgumentParser, args: argparse.Namespace) -> BaseModel:
    """The action's payload, checked before anything is contacted; ack, resolve, reply and
    wait are stamped with the instant the agent acted (now), which counts even if no worker
    is up."""
    adopting = args.command == "policy"
    given = args.by if adopting else args.agent
    agent = given if given is not None else os.environ.get(AGENT_ENV)
    flag = "--by" if adopting else "--agent"
    if not agent:
        command = "policy adopt" if adopting else args.command
        missing = flag if adopting else "agent"
        parser.error(f"{command}: no {missing} given: pass {flag} NAME (or set {AGENT_ENV})")
    try:
        if adopting:
            return AdoptPolicy(version=args.version, by=agent, reason=args.reason)
        now = datetime.now(UTC)
        if args.command == "ack":
            return Acknowledge(agent=agent, note=args.note, at=now)
        if args.command == "reply":
            return AgentReply(agent=agent, summary=args.summary, at=now)
        if args.command == "wait":
            return AwaitCustomer(by=agent, reason=args.reason, at=now)
        return Resolve(by=agent, summary=args.summary, at=now)
    except ValidationError as err:
        flags = {
            "agent": flag,
            "by": flag,
            "note": "--note",
            "summary": "--summary",
            "version": "--version",
            "reason": "--reason",
        }
        problems = []
        for problem in describe_validation_error(err, top="(signal)"):
            name, _, message = problem.partition(": ")
            problems.append(f"{flags.get(name, name)}: {message}")
        parser.error("; ".join(problems))


# --- entry points -------------------------------------------------------------------------


async def run(
    args: argparse.Namespace, payload: BaseModel | None, out: TextIO, err: TextIO | None = None
) -> int:
    try:
        if args.command == "policy":
            return await policy_command(args, payload, out)
        client = await connect_or_fail()
        if args.command == "list":
            return await list_command(client, args, out, err)
        if args.command == "show":
            return await show_command(client, args, out)
        if args.command == "watch":
            return await watch_command(client, args, out)
        if args.command == "replay":
            return await replay_command(client, args, out)
        assert payload is not None
        return await signal_command(client, args, payload, out)
    except TicketError as problem:
        raise Failed(str(problem)) from problem
    except InvalidArgument as problem:  # checked by the parser already; kept as a guard
        raise Failed(str(problem)) from problem
    except RPCError as problem:
        raise Failed(f"Temporal: {problem.message}") from problem
    except DecryptionError as problem:
        raise Failed(str(problem)) from problem


def cli(argv: list[str] | None = None, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run one command; returns the exit code (argparse exits 2 on bad arguments)."""
    out, err = out or sys.stdout, err or sys.stderr
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_numbers(parser, args)
    acting = args.command in ACTING or getattr(args, "policy_command", "") == "adopt"
    payload = _signal_payload(parser, args) if acting else None
    try:
        return asyncio.run(run(args, payload, out, err))
    except Failed as problem:
        print(f"error: {' '.join(str(problem).split())}", file=err)
        return EXIT_FAILED
    except BadInput as problem:
        for line in str(problem).splitlines():
            print(f"error: {line}", file=err)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_OK if args.command == "watch" else 130


def main() -> NoReturn:
    """Console entry point (``support-ops``). Exits with ``os._exit`` after flushing
    (``runtime.process.exit_flushed``: a normal interpreter shutdown can abort)."""
    try:
        code = cli()
        sys.stdout.flush()
    except SystemExit as done:  # argparse: --help (0) and bad arguments (2)
        code = (
            done.code
            if isinstance(done.code, int)
            else EXIT_OK
            if done.code is None
            else EXIT_USAGE
        )
    except BrokenPipeError:
        # The reader went away (``| head``): not an error worth a traceback.
        code = EXIT_OK
    exit_flushed(code)


if __name__ == "__main__":
    main()

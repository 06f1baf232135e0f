"""The ticket workflow as the previous release ran it, for the versioning test and replay:
the branch before each ``workflow.patched`` change, without the patch call (what a worker
still on that release executes). Kept apart from the tests so the workflow sandbox
validates it with workflow-safe imports only."""

from __future__ import annotations

from collections.abc import Sequence

from temporalio import workflow
from temporalio.common import RawValue

with workflow.unsafe.imports_passed_through():
    from contract.models import TicketPlan, TicketStatus
    from workflows.statement_of_work import StatementOfWork
    from workflows.ticket import SupportTicket


@workflow.defn(name="SupportTicket")
class TicketBeforeBatching(SupportTicket):
    """Before ``BATCHED_LEDGER_WRITES``: one ledger activity per SLA event (and before the
    later ``KEEP_WAKE_TIMER``: a timer per turn of the loop; and ``LOCAL_FIRST_ATTEMPTS``:
    every activity a server activity)."""

    @workflow.run
    async def run(self, raw: RawValue) -> TicketStatus:
        return await super().run(raw)

    def _takes_changes_so_far(self) -> bool:
        return False

    def _batch_ledger_writes(self) -> bool:
        return False

    def _takes_local_first(self) -> bool:
        return False

    def _keeps_wake_timer(self) -> bool:
        return False


@workflow.defn(name="SupportTicket")
class TicketBeforeTargets(SupportTicket):
    """Before ``SLA_TARGETS``: a ticket keeps the first response only (no next-reply or
    resolution clock), whatever its tier's policy says."""

    @workflow.run
    async def run(self, raw: RawValue) -> TicketStatus:
        return await super().run(raw)

    def _takes_changes_so_far(self) -> bool:
        return False

    def _start_clocks(self, plan: TicketPlan) -> None:
        return None

    def _takes_local_first(self) -> bool:
        return False


@workflow.defn(name="SupportTicket")
class TicketBeforeRollup(SupportTicket):
    """Before ``CHANGES_SO_FAR``: a marker (and a ``TemporalChangeVersion`` upsert) for each
    change as the run first meets it."""

    @workflow.run
    async def run(self, raw: RawValue) -> TicketStatus:
        return await super().run(raw)

    def _takes_changes_so_far(self) -> bool:
        return False


PREVIOUS_RELEASE: Sequence[type] = [TicketBeforeBatching, StatementOfWork]
# The release before the targets (SLA_TARGETS).
BEFORE_TARGETS: Sequence[type] = [TicketBeforeTargets, StatementOfWork]
# The release before the roll-up of its changes' markers (CHANGES_SO_FAR).
BEFORE_ROLLUP: Sequence[type] = [TicketBeforeRollup, StatementOfWork]

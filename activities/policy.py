"""Resolve the policy for one ticket; the result is pinned in the workflow's history.

A new ticket (no pinned version) is planned under the policy file as it is now, archived as
it loads; a ticket that pinned a version is planned under that version's archived rules,
whatever the file says now, so an edited or broken file never changes or stops a running
ticket (docs/policy-versions.md). A policy problem fails at once (non-retryable, logged at
error level; the workflow records it and keeps its last good plan); anything else, such as
the archive's database being away, is an ordinary error and is retried.
"""

from __future__ import annotations

from temporalio import activity
from temporalio.exceptions import ApplicationError

from contract.models import PlanRequest, TicketPlan
from ledger.policy_archive import (
    MemoryPolicyStore,
    PolicyArchive,
    PolicyStore,
    PolicyVersionUnavailable,
)
from policy.plan import resolve_plan
from policy.schema import Policy, PolicyError


class PolicyActivities:
    def __init__(self, archive: PolicyArchive | PolicyStore) -> None:
        self.archive = archive if isinstance(archive, PolicyArchive) else PolicyArchive(archive)

    @activity.defn(name="resolve_ticket_plan")
    async def resolve_ticket_plan(self, request: PlanRequest) -> TicketPlan:
        policy = await self._policy_for(request)
        plan = resolve_plan(
            policy,
            request.ticket,
            request.severity,
            request.opened_at,
            request.repeats_after,
            tier=request.tier,
            clocks=request.clocks,
        )
        activity.logger.info(
            "policy resolved",
            extra={
                "policy_version": plan.policy_version,
                "pinned_version": request.pinned_version,
                "severity": plan.severity.value,
                "response_due_at": str(plan.response_due_at),
            },
        )
        return plan

    async def _policy_for(self, request: PlanRequest) -> Policy:
        pinned = request.pinned_version
        try:
            if pinned is None:
                return await self.archive.current()
            return await self.archive.pinned(pinned)
        except PolicyError as err:
            # A policy problem needs a person: retrying it helps nobody. The workflow keeps
            # its last good plan and asks again later.
            kind = (
                "PolicyVersionUnavailable"
                if isinstance(err, PolicyVersionUnavailable)
                else ("PolicyError")
            )
            activity.logger.error(
                "ticket policy not resolved",
                extra={
                    "ticket_id": request.ticket.ticket_id,
                    "pinned_version": pinned,
                    "problem_type": kind,
                    "error": str(err),
                },
            )
            raise ApplicationError(str(err), type=kind, non_retryable=True) from err


@activity.defn(name="resolve_ticket_plan")
async def resolve_ticket_plan(request: PlanRequest) -> TicketPlan:
    """The same activity for a worker without an archive (tests that assemble their own
    worker): the policy file as loaded now, and a pinned version only when it is the
    file's (PolicyVersionUnavailable otherwise)."""
    return await PolicyActivities(MemoryPolicyStore()).resolve_ticket_plan(request)

"""Resolve the policy for one ticket; the result is pinned in the workflow's history."""

from __future__ import annotations

from temporalio import activity
from temporalio.exceptions import ApplicationError

from support.models import PlanRequest, TicketPlan
from support.policy import PolicyError, load_policy, resolve_plan


@activity.defn(name="resolve_ticket_plan")
async def resolve_ticket_plan(request: PlanRequest) -> TicketPlan:
    try:
        policy = load_policy()
    except PolicyError as err:
        # A broken policy file needs a person; retrying every second helps nobody, but
        # the workflow's retry policy keeps trying slowly so the ticket survives the fix.
        activity.logger.error("policy file invalid", extra={"error": str(err)})
        raise ApplicationError(str(err), type="PolicyError") from err
    if request.pinned_version and request.pinned_version != policy.version:
        # Only the loaded file can be resolved: the ticket records the change of version.
        activity.logger.warning(
            "ticket pinned another policy version",
            extra={"pinned_version": request.pinned_version, "loaded_version": policy.version},
        )
    plan = resolve_plan(
        policy, request.ticket, request.severity, request.opened_at, request.repeats_after
    )
    activity.logger.info(
        "policy resolved",
        extra={
            "policy_version": plan.policy_version,
            "severity": plan.severity.value,
            "response_due_at": str(plan.response_due_at),
        },
    )
    return plan

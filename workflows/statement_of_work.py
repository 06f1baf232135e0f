"""``StatementOfWork``: the path for requests outside the subscribed service scope.

Started by ``SupportTicket`` as child ``sow-<ticket_id>``. It tells advisory services, the
account team and the customer why the request left the SLA path and what happens next,
waits for a ``sow_decision``, reminds the account team once after ``remind_after`` and
expires after ``expire_after`` (both from the policy).
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RawValue
from temporalio.exceptions import ActivityError, ApplicationError

from workflows.activity_options import DELIVERY_RETRY, DELIVERY_TIMEOUT, delivery_deadline
from workflows.inputs import decode_input

with workflow.unsafe.imports_passed_through():
    from pydantic import ValidationError

    from activities.notify import NotifyActivities
    from contract import names
    from contract.labels import TIER_LABELS
    from contract.models import (
        DeliveryFailureDetails,
        Recipient,
        SowDecision,
        SowInput,
        SowOutcome,
        SowResult,
        StepDelivery,
        describe_validation_error,
    )


@workflow.defn(name=names.SOW_WORKFLOW)
class StatementOfWork:
    def __init__(self) -> None:
        self._result = SowResult(outcome=SowOutcome.PENDING)

    @workflow.signal(name=names.SOW_DECISION)
    def sow_decision(self, raw: RawValue) -> None:
        try:
            decision = workflow.payload_converter().from_payload(raw.payload, SowDecision)
        except ValidationError as err:
            # Recorded in the result, never applied (the SDK would drop it silently).
            problems = "; ".join(describe_validation_error(err, top="(signal)"))
            self._result.rejected.append(problems)
            workflow.logger.warning("sow decision rejected: %s", problems)
            return
        if self._result.outcome is not SowOutcome.PENDING:
            # The first decision stands; later ones are logged, never applied.
            workflow.logger.warning(
                "sow decision ignored: already %s",
                self._result.outcome.value,
                extra={"by": decision.by, "decision": decision.decision},
            )
            return
        self._result = SowResult(
            outcome=SowOutcome(decision.decision),
            decided_by=decision.by,
            decided_at=workflow.now(),
            reference=decision.reference,
            reminded_at=self._result.reminded_at,
            rejected=self._result.rejected,
            failed_notifications=self._result.failed_notifications,
        )

    @workflow.query(name=names.STATUS)
    def status(self) -> SowResult:
        return self._result

    @workflow.run
    async def run(self, raw: RawValue) -> SowResult:
        sow = decode_input(raw, SowInput, "InvalidInput", "(statement of work)")
        started = workflow.now()
        expires = (started + sow.terms.expire_after).strftime("%Y-%m-%d %H:%M UTC")
        tier = TIER_LABELS[sow.tier]
        await self._notify(
            sow,
            "opened",
            sow.terms.recipients,
            f"Request outside the {tier} support scope: {sow.reason}. It has left the SLA "
            "path: advisory services and the account team will contact the customer about a "
            "statement of work or advisory engagement. Record the decision with: temporal "
            f"workflow signal --workflow-id {workflow.info().workflow_id} --name sow_decision "
            '--input \'{"decision": "accepted", "by": "<you>", "reference": "<SOW id>"}\''
            f' (or "declined"). Without a decision it expires on {expires}.',
            customer_message=(
                f"Your request is outside the scope of {tier} support ({sow.reason}), so it"
                " will not be handled as a support ticket. Our advisory services and your"
                " account team will contact you about a statement of work or an advisory"
                " engagement."
            ),
        )
        decided = await self._wait_for_decision(sow.terms.remind_after)
        if not decided:
            self._result.reminded_at = workflow.now()
            account = [r for r in sow.terms.recipients if r.name != "reporter"]
            await self._notify(
                sow,
                "reminder",
                account,
                f"Reminder: no statement-of-work decision yet ({sow.reason}). "
                f"It expires on {expires}.",
            )
            remaining = started + sow.terms.expire_after - workflow.now()
            decided = await self._wait_for_decision(remaining)
        if not decided:
            self._result = SowResult(
                outcome=SowOutcome.EXPIRED,
                decided_by="system",
                decided_at=workflow.now(),
                reminded_at=self._result.reminded_at,
                rejected=self._result.rejected,
                failed_notifications=self._result.failed_notifications,
            )
        await self._notify(
            sow,
            self._result.outcome.value,
            sow.terms.recipients,
            f"Statement of work {self._result.outcome.value}"
            + (f" (reference {self._result.reference})" if self._result.reference else "")
            + (
                ". The request was not taken on; open a new ticket for any in-scope issue."
                if self._result.outcome is not SowOutcome.ACCEPTED
                else ". The work continues under the statement of work."
            ),
        )
        await workflow.wait_condition(workflow.all_handlers_finished)
        return self._result

    async def _wait_for_decision(self, within: timedelta) -> bool:
        if within > timedelta(0):
            try:
                await workflow.wait_condition(
                    lambda: self._result.outcome is not SowOutcome.PENDING, timeout=within
                )
            except TimeoutError:
                pass
        return self._result.outcome is not SowOutcome.PENDING

    async def _notify(
        self,
        sow: SowInput,
        step: str,
        recipients: list[Recipient],
        message: str,
        customer_message: str | None = None,
    ) -> None:
        request = StepDelivery(
            workflow_id=workflow.info().workflow_id,
            ticket_id=sow.ticket_id,
            customer_id=sow.customer_id,
            tier=sow.tier,
            severity=sow.severity,
            step=step,
            kind="sow",
            due_at=workflow.now(),
            response_due_at=None,
            subject=sow.subject,
            recipients=recipients,
            message=message,
            customer_message=customer_message,
            failover_after=sow.terms.failover_after,
        )
        try:
            result = await workflow.execute_activity_method(
                NotifyActivities.deliver_step,
                request,
                start_to_close_timeout=DELIVERY_TIMEOUT,
                schedule_to_close_timeout=delivery_deadline(sow.terms.failover_after, recipients),
                retry_policy=DELIVERY_RETRY,
            )
            failed = [f"{step}: {f.recipient}: {f.error}" for f in result.failed]
        except ActivityError as err:
            # Those the activity reports delivered before it gave up are not failures.
            cause = err.cause if isinstance(err.cause, ApplicationError) else None
            undelivered = DeliveryFailureDetails.of(cause).undelivered(
                recipients, str(err.cause or err)
            )
            failed = [f"{step}: {f.recipient}: {f.error}" for f in undelivered]
        for failure in failed:
            # Never silently lost: the ticket and the ledger record it (SowResult).
            workflow.logger.error("sow notification failed", extra={"failure": failure})
        self._result.failed_notifications += failed

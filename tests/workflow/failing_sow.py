"""A ``StatementOfWork`` that fails at once: stands in for the child in the test of how the
ticket records a failed statement of work (a module of its own, so the workflow sandbox
imports nothing else of the test)."""

from __future__ import annotations

from temporalio import workflow
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from contract.models import SowInput, SowResult


@workflow.defn(name="StatementOfWork")
class FailingStatementOfWork:
    @workflow.run
    async def run(self, sow: SowInput) -> SowResult:
        raise ApplicationError("the statement of work broke", non_retryable=True)

"""A workflow's input, decoded by the workflow itself (deterministic code).

Input that does not validate when a workflow starts is refused for good: a non-retryable
``ApplicationError`` naming each field and what is wrong, so no ticket runs on a payload
it cannot read. The same failure while replaying a history (a model tightened in a deploy)
is not the ticket's fault: it fails the workflow task, which Temporal retries until the
code is fixed, and the open ticket carries on then (docs/versioning.md)."""

from __future__ import annotations

from typing import TypeVar

from temporalio import workflow
from temporalio.common import RawValue
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from pydantic import BaseModel, ValidationError

    from contract.models import describe_validation_error

M = TypeVar("M", bound=BaseModel)


class InputUnreadable(RuntimeError):
    """A replayed input that today's models refuse: fails the workflow task (retried)."""


def decode_input(raw: RawValue, model: type[M], error_type: str, top: str) -> M:
    try:
        return workflow.payload_converter().from_payload(raw.payload, model)
    except Exception as err:  # a ValidationError, or not JSON at all
        if isinstance(err, ValidationError):
            problems = "; ".join(describe_validation_error(err, top=top))
        else:
            problems = f"{top}: {err}"
        if workflow.unsafe.is_replaying():
            raise InputUnreadable(
                f"the recorded {model.__name__} no longer validates: {problems}"
            ) from err
        raise ApplicationError(problems, type=error_type, non_retryable=True) from None

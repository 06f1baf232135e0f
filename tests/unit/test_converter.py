"""The project's payload converter writes the bytes the SDK's pydantic converter writes, and
reads what it wrote, so histories written by either replay with the other; and it builds its
encoding converters once per process, not once per workflow activation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from temporalio.contrib.pydantic import PydanticPayloadConverter, pydantic_data_converter

from bench.run import ticket as bench_ticket
from contract.models import Severity, SlaEvent, StepDeliveryResult, TicketPlan, TicketStatus, Tier
from policy.load import load_policy
from policy.plan import resolve_plan
from runtime.converter import SupportPayloadConverter, support_data_converter
from tests.unit.tickets import delivery, ticket

VALUES: list[tuple[Any, Any]] = [
    (None, type(None)),
    ("a ticket's subject, ünïcode", str),
    (42, int),
    (b"\x00raw", bytes),
    (datetime(2026, 12, 5, 9, 30, tzinfo=UTC), datetime),
    (timedelta(minutes=90), timedelta),
    (["a", "b"], list[str]),
    ({"on-call": "webhook"}, dict[str, str]),
    (ticket(), TicketStatus),
    (delivery(), type(delivery())),
    (StepDeliveryResult(delivered=["on-call"], channels={"on-call": "webhook"}), None),
    (
        SlaEvent(
            key="k",
            ticket_id="T-1",
            kind="breach",
            at=datetime(2026, 12, 5, tzinfo=UTC),
            source="workflow",
            detail={"delivered": ["on-call"], "n": 1},
        ),
        SlaEvent,
    ),
]


@pytest.mark.parametrize(("value", "hint"), VALUES, ids=lambda v: type(v).__name__)
def test_the_same_bytes_as_the_sdks_pydantic_converter(value: Any, hint: Any) -> None:
    ours = support_data_converter.payload_converter.to_payloads([value])
    sdks = pydantic_data_converter.payload_converter.to_payloads([value])
    assert ours == sdks
    hints = None if hint is None else [hint]
    assert support_data_converter.payload_converter.from_payloads(sdks, hints) == (
        pydantic_data_converter.payload_converter.from_payloads(sdks, hints)
    )
    if hint is not None:
        assert support_data_converter.payload_converter.from_payloads(ours, hints) == [value]


def test_its_encoding_converters_are_built_once() -> None:
    first, second = SupportPayloadConverter(), SupportPayloadConverter()
    assert list(first.converters) == list(PydanticPayloadConverter().converters)
    for encoding, converter in first.converters.items():
        assert second.converters[encoding] is converter


def test_a_decoded_plan_holds_one_object_per_distinct_recipient() -> None:
    opened = datetime(2026, 12, 5, 9, tzinfo=UTC)
    start = bench_ticket("T-1", opened).model_copy(update={"tier": Tier.MISSION_CRITICAL})
    plan = resolve_plan(load_policy(), start, Severity.SEV1, opened)
    [payload] = support_data_converter.payload_converter.to_payloads([plan])
    [decoded] = support_data_converter.payload_converter.from_payloads([payload], [TicketPlan])

    recipients = [r for step in decoded.all_steps() for r in step.recipients]
    distinct = {r.model_dump_json() for r in recipients}
    assert len(recipients) > len(distinct) >= 2  # the default ladder repeats its people
    assert len({id(r) for r in recipients}) == len(distinct)
    assert decoded == plan
    assert decoded.model_dump_json() == plan.model_dump_json()  # the same bytes again

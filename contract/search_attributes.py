"""Search attributes of the public contract (ops query tickets with these; no personal data)."""

from __future__ import annotations

from temporalio.common import SearchAttributeKey

SUPPORT_TIER = SearchAttributeKey.for_keyword("SupportTier")
SUPPORT_SEVERITY = SearchAttributeKey.for_keyword("SupportSeverity")
TICKET_STATE = SearchAttributeKey.for_keyword("TicketState")
CUSTOMER_ID = SearchAttributeKey.for_keyword("CustomerId")
RESPONSE_DUE_AT = SearchAttributeKey.for_datetime("ResponseDueAt")
SLA_BREACHED = SearchAttributeKey.for_bool("SlaBreached")
# The nearest deadline across the ticket's running targets, and its metric
# (first_response, next_reply, resolution); set by tickets that keep target clocks.
SLA_NEXT_DEADLINE = SearchAttributeKey.for_datetime("SlaNextDeadline")
SLA_NEXT_METRIC = SearchAttributeKey.for_keyword("SlaNextMetric")

ALL = (
    SUPPORT_TIER,
    SUPPORT_SEVERITY,
    TICKET_STATE,
    CUSTOMER_ID,
    RESPONSE_DUE_AT,
    SLA_BREACHED,
    SLA_NEXT_DEADLINE,
    SLA_NEXT_METRIC,
)


def cli_flags() -> list[str]:
    """``--search-attribute Name=Type`` flags for ``temporal server start-dev``."""
    # KEYWORD -> Keyword, DATETIME -> Datetime, BOOL -> Bool: the CLI's type names.
    return [f"--search-attribute={k.name}={k.indexed_value_type.name.capitalize()}" for k in ALL]

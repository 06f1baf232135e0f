"""Search attributes of the public contract (ops query tickets with these; no personal data)."""

from __future__ import annotations

from temporalio.common import SearchAttributeKey

SUPPORT_TIER = SearchAttributeKey.for_keyword("SupportTier")
SUPPORT_SEVERITY = SearchAttributeKey.for_keyword("SupportSeverity")
TICKET_STATE = SearchAttributeKey.for_keyword("TicketState")
CUSTOMER_ID = SearchAttributeKey.for_keyword("CustomerId")
RESPONSE_DUE_AT = SearchAttributeKey.for_datetime("ResponseDueAt")
SLA_BREACHED = SearchAttributeKey.for_bool("SlaBreached")

ALL = (SUPPORT_TIER, SUPPORT_SEVERITY, TICKET_STATE, CUSTOMER_ID, RESPONSE_DUE_AT, SLA_BREACHED)


def cli_flags() -> list[str]:
    """``--search-attribute Name=Type`` flags for ``temporal server start-dev``."""
    # KEYWORD -> Keyword, DATETIME -> Datetime, BOOL -> Bool: the CLI's type names.
    return [f"--search-attribute={k.name}={k.indexed_value_type.name.capitalize()}" for k in ALL]

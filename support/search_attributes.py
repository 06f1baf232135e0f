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
    kinds = {"KEYWORD": "Keyword", "DATETIME": "Datetime", "BOOL": "Bool"}
    return [
        f"--search-attribute={key.name}={kinds[key.indexed_value_type.name.removeprefix('INDEXED_VALUE_TYPE_')]}"
        for key in ALL
    ]

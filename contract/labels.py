"""How people read a tier and a severity: the one set of labels every message, page, chart
and policy error uses.

The maps are keyed by the enums. ``Tier`` and ``Severity`` are ``StrEnum``s, so a member
hashes and compares as its value: ``TIER_LABELS["premium"]`` finds ``Tier.PREMIUM`` too
(templates look labels up by value). ``tier_label`` is for a value that may not be a tier.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from contract.models import Severity, Tier

TIER_LABELS: Mapping[Tier, str] = MappingProxyType(
    {
        Tier.COMMUNITY: "Community",
        Tier.STANDARD: "Standard",
        Tier.PREMIUM: "Premium",
        Tier.MISSION_CRITICAL: "Mission Critical",
    }
)
# What each severity means, as the contact form offers it.
SEVERITY_LABELS: Mapping[Severity, str] = MappingProxyType(
    {
        Severity.SEV1: "SEV1: production down, no workaround",
        Severity.SEV2: "SEV2: production impaired, business affected",
        Severity.SEV3: "SEV3: partial loss of function, workaround exists",
        Severity.SEV4: "SEV4: question, cosmetic issue or request",
    }
)


def tier_label(tier: Tier | str) -> str:
    """``Mission Critical`` for ``mission_critical``; a value that is no tier as it is."""
    try:
        return TIER_LABELS[Tier(tier)]
    except ValueError:
        return str(tier)

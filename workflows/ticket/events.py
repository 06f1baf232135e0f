"""What a transition of the ticket produces: an ``Event`` for the ticket's history, with the
ledger's record of it when the ledger keeps one. The workflow's ``emit`` writes both and
syncs the search attributes; transitions stay pure."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class Record:
    """The ledger's event: keyed ``<workflow id>/<name>`` (a retried write is the same row),
    of ``kind`` (default: the name), from agent ``by`` (None: the workflow), with
    ``detail`` (None values are left out)."""

    name: str
    kind: str | None = None
    by: str | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Event:
    """One thing that happened to the ticket, at ``at``, by ``by`` (an agent; None: the
    ticket itself). ``detail`` is the history entry's text; ``logged=False`` for an event
    only the ledger keeps."""

    kind: str
    at: datetime
    by: str | None = None
    detail: str | None = None
    record: Record | None = None
    logged: bool = True


def iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None

"""Worker logs are JSON lines carrying the Temporal context flattened (ticket id included)."""

from __future__ import annotations

import io
import json
import logging

import structlog

from runtime.logs import configure_logging


def test_workflow_logger_records_render_as_json_with_ticket_id() -> None:
    stream = io.StringIO()
    configure_logging("INFO", stream)
    try:
        logging.getLogger("temporalio.workflow").info(
            "ticket %s",
            "acknowledged",
            extra={
                "temporal_workflow": {
                    "workflow_id": "ticket-T-9",
                    "workflow_type": "SupportTicket",
                    "run_id": "r1",
                },
                "by": "alice",
            },
        )
        structlog.get_logger("support.notify").warning(
            "notification", recipient="lead", ticket_id="T-9", step="breach"
        )
    finally:
        logging.getLogger().handlers.clear()
        structlog.reset_defaults()
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["event"] == "ticket acknowledged"
    assert (first["workflow_id"], first["ticket_id"], first["by"]) == ("ticket-T-9", "T-9", "alice")
    assert first["level"] == "info" and first["timestamp"].endswith("Z")
    assert (second["event"], second["ticket_id"], second["step"]) == (
        "notification",
        "T-9",
        "breach",
    )

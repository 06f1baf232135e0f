"""The SLA metrics a ticket emits, through Temporal's workflow metric meter: they appear on
the worker's Prometheus endpoint beside the SDK's own metrics (``SUPPORT_METRICS_BIND``),
and are not emitted again when a ticket's history is replayed.

Prometheus names (Temporal adds ``namespace``, ``task_queue`` and ``workflow_type``):

- ``support_tickets_opened{tier,severity}``: tickets opened;
- ``support_escalations_fired{tier,severity,kind}``: steps fired (intake, warning,
  breach, repeat);
- ``support_sla_breaches{tier,severity}``: response targets missed;
- ``support_time_to_acknowledge`` (histogram, seconds) ``{tier,breached}``: opened to
  first acknowledgement.

A worker that crashes after a workflow task emitted but before the server recorded it
emits again on the retry, so these are operational signals; the SLA ledger is the record.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow


def ticket_opened(tier: str, severity: str) -> None:
    workflow.metric_meter().create_counter("support_tickets_opened", "Support tickets opened").add(
        1, {"tier": tier, "severity": severity}
    )


def escalation_fired(tier: str, severity: str, kind: str) -> None:
    workflow.metric_meter().create_counter(
        "support_escalations_fired", "Escalation steps fired"
    ).add(1, {"tier": tier, "severity": severity, "kind": kind})


def sla_breached(tier: str, severity: str) -> None:
    workflow.metric_meter().create_counter("support_sla_breaches", "Response targets missed").add(
        1, {"tier": tier, "severity": severity}
    )


def acknowledged(tier: str, after: timedelta, breached: bool) -> None:
    workflow.metric_meter().create_histogram_float(
        "support_time_to_acknowledge", "Time from opening to acknowledgement", "s"
    ).record(max(0.0, after.total_seconds()), {"tier": tier, "breached": str(breached).lower()})

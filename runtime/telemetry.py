"""Observability of the worker: Prometheus metrics, OpenTelemetry traces, trace ids in logs.

- ``SUPPORT_METRICS_BIND`` (e.g. ``0.0.0.0:9464``): the Temporal runtime serves
  ``/metrics`` there: the SDK's metrics (``temporal_*``: task latencies, slots, polls,
  activity failures...), the tickets' SLA metrics (``workflows/ticket/metrics.py``) and
  ``support_tickets_open{tier,state}``, counted from visibility every
  ``SUPPORT_METRICS_POLL_SECONDS`` (default 30). Every worker replica reports the same
  count; aggregate with ``max by (tier, state)``.
- Tracing is on when ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``..._TRACES_ENDPOINT``) is set:
  Temporal's ``TracingInterceptor`` makes spans for client calls, workflow runs, signals
  and activities, propagated through headers, exported over OTLP/HTTP by the
  OpenTelemetry SDK (``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``... as usual).
- Log lines carry ``trace_id`` / ``span_id`` of the current span (``runtime.logs``).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping, Sequence

import structlog
from opentelemetry import trace
from temporalio.client import Client, Interceptor
from temporalio.common import MetricMeter
from temporalio.runtime import PrometheusConfig

from contract.models import TicketState, Tier
from contract.names import TIME_TO_ACK_BUCKETS
from runtime.logs import forward_core_logs

METRICS_BIND_ENV = "SUPPORT_METRICS_BIND"
METRICS_POLL_ENV = "SUPPORT_METRICS_POLL_SECONDS"
OPEN_STATES = (TicketState.OPEN, TicketState.ACKNOWLEDGED, TicketState.ROUTED_TO_SOW)

log = structlog.get_logger("runtime.telemetry")


def prometheus(metrics_bind: str) -> PrometheusConfig:
    """The Prometheus endpoint: OpenMetrics-style ``_total`` counters, durations in
    seconds, and buckets for time to acknowledge from a minute to a day."""
    return PrometheusConfig(
        bind_address=metrics_bind,
        counters_total_suffix=True,
        durations_as_seconds=True,
        histogram_bucket_overrides={"support_time_to_acknowledge": TIME_TO_ACK_BUCKETS},
    )


def install_runtime(environ: Mapping[str, str] | None = None) -> str | None:
    """Make the default runtime (before any client connects): core logs forwarded, and
    Prometheus metrics when ``SUPPORT_METRICS_BIND`` is set; returns that address."""
    env = os.environ if environ is None else environ
    bind = env.get(METRICS_BIND_ENV) or None
    forward_core_logs(prometheus(bind) if bind else None)
    return bind


def open_ticket_query(tier: Tier, state: TicketState) -> str:
    return (
        "WorkflowType = 'SupportTicket' AND ExecutionStatus = 'Running'"
        f" AND SupportTier = '{tier.value}' AND TicketState = '{state.value}'"
    )


async def count_open_tickets(client: Client, meter: MetricMeter) -> dict[tuple[str, str], int]:
    """Set ``support_tickets_open{tier,state}`` from visibility; returns the counts."""
    gauge = meter.create_gauge("support_tickets_open", "Tickets not yet resolved, by tier")
    counts: dict[tuple[str, str], int] = {}
    for tier in Tier:
        for state in OPEN_STATES:
            found = await client.count_workflows(open_ticket_query(tier, state))
            counts[(tier.value, state.value)] = found.count
            gauge.set(found.count, {"tier": tier.value, "state": state.value})
    return counts


async def report_open_tickets(client: Client, meter: MetricMeter, interval: float) -> None:
    """Keep the open-tickets gauge current until cancelled (visibility errors are logged
    and retried at the next interval)."""
    while True:
        try:
            await count_open_tickets(client, meter)
        except Exception as err:  # keep reporting through a visibility outage
            log.warning("counting open tickets failed", error=str(err))
        await asyncio.sleep(interval)


def poll_interval(environ: Mapping[str, str] | None = None) -> float:
    env = os.environ if environ is None else environ
    return float(env.get(METRICS_POLL_ENV) or 30)


# --- tracing ------------------------------------------------------------------------------


def tracing_enabled(environ: Mapping[str, str] | None = None) -> bool:
    env = os.environ if environ is None else environ
    return (
        bool(
            env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        )
        and env.get("OTEL_SDK_DISABLED", "").lower() != "true"
    )


def configure_tracing(service_name: str) -> Sequence[Interceptor]:
    """With an OTLP endpoint configured: a tracer provider exporting over OTLP/HTTP, and
    Temporal's tracing interceptor for the client (it applies to the worker as well)."""
    if not tracing_enabled():
        return []
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from temporalio.contrib.opentelemetry import TracingInterceptor

    resource = Resource.create({SERVICE_NAME: os.environ.get("OTEL_SERVICE_NAME", service_name)})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    return [TracingInterceptor()]


def shutdown_tracing() -> None:
    """Flush spans still queued (the SDK provider has ``shutdown``; the no-op one does not)."""
    provider = trace.get_tracer_provider()
    shutdown = getattr(provider, "shutdown", None)
    if callable(shutdown):
        shutdown()

"""Observability: the Prometheus endpoint after real ticket runs shows the SLA metrics with
the right values beside the SDK's; the worker process exports traces over OTLP/HTTP to a
real receiver on loopback, and its log lines carry the trace ids."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from subprocess import PIPE, STDOUT
from typing import Any

import httpx
import pytest
import pytest_asyncio
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from prometheus_client.parser import text_string_to_metric_families
from temporalio.client import Client, WorkflowHandle
from temporalio.contrib.opentelemetry import TracingInterceptor
from temporalio.testing import WorkflowEnvironment

from bench.actions import LOCAL_ACTIVITY_MARKER
from contract.models import Acknowledge, Resolve, Severity, Tier
from harness.processes import ROOT, eventually, free_port, service_process
from runtime.converter import support_data_converter
from runtime.logs import core_runtime
from runtime.telemetry import prometheus
from tests.conftest import (
    Stack,
    advance_to,
    binary,
    now_second,
    open_ticket_at,
    register_search_attributes,
    result_of,
    running_stack,
    ticket,
)

M = timedelta(minutes=1)
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(address: str) -> Samples:
    """Every sample on the endpoint: (name, labels) -> value."""
    text = httpx.get(f"http://{address}/metrics", timeout=5).text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum over samples of ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


# --- exact values on the time-skipping server ---------------------------------------------


@pytest_asyncio.fixture(loop_scope="session")
async def metered() -> AsyncIterator[tuple[WorkflowEnvironment, str]]:
    address = f"127.0.0.1:{free_port()}"
    environment = await WorkflowEnvironment.start_time_skipping(
        data_converter=support_data_converter,
        test_server_existing_path=binary("temporal-test-server"),
        runtime=core_runtime(prometheus(address)),
    )
    await register_search_attributes(environment)
    yield environment, address
    await environment.shutdown()


async def test_sla_metrics_after_ticket_runs(
    metered: tuple[WorkflowEnvironment, str], tmp_path: Path
) -> None:
    env, address = metered
    async with running_stack(env, tmp_path / "ledger.sqlite3") as stack:
        stack: Stack  # type: ignore[no-redef]
        t0 = await now_second(env)
        in_time = await open_ticket_at(stack, ticket(tier=Tier.PREMIUM, severity=Severity.SEV2), t0)
        late = await open_ticket_at(stack, ticket(tier=Tier.PREMIUM, severity=Severity.SEV2), t0)
        await advance_to(env, t0 + 35 * M)
        await in_time.signal("acknowledge", Acknowledge(agent="ana"))
        await advance_to(env, t0 + 70 * M)  # the other one breached at 60 min
        await late.signal("acknowledge", Acknowledge(agent="bob"))
        for handle in (in_time, late):
            await handle.signal("resolve", Resolve(by="ana", summary="done"))
        statuses = [await result_of(env, handle) for handle in (in_time, late)]

    samples = scrape(address)
    premium = {"tier": "premium", "severity": "sev2"}
    assert value(samples, "support_tickets_opened_total", **premium) == 2
    assert value(samples, "support_sla_breaches_total", **premium) == 1
    fired: dict[str, int] = {}
    for status in statuses:
        for record in status.escalations:
            fired[record.kind.value] = fired.get(record.kind.value, 0) + 1
    assert fired["breach"] == 1 and fired["intake"] == 2
    for kind, count in fired.items():
        assert value(samples, "support_escalations_fired_total", kind=kind, **premium) == count
    for breached, seconds in (("false", 35 * 60), ("true", 70 * 60)):
        labels = {"tier": "premium", "breached": breached}
        assert value(samples, "support_time_to_acknowledge_count", **labels) == 1
        # The acknowledgement lands when the signal arrives: within a second of the instant.
        assert value(samples, "support_time_to_acknowledge_sum", **labels) == pytest.approx(
            seconds, abs=1
        )
    assert value(samples, "support_time_to_acknowledge_bucket", le="3600", breached="false") == 1
    assert value(samples, "support_time_to_acknowledge_bucket", le="3600", breached="true") == 0
    # The SDK's own metrics are on the same endpoint.
    assert value(samples, "temporal_workflow_completed_total", workflow_type="SupportTicket") == 2
    # (Local activities: a ticket's first attempts, local-first-attempts.)
    assert value(samples, "temporal_local_activity_execution_latency_count") > 0


# --- the worker process: gauge from visibility, traces over OTLP, trace ids in logs ------


class OtlpReceiver:
    """An OTLP/HTTP trace receiver on loopback (protobuf ``ExportTraceServiceRequest``)."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, str]] = []  # (name, trace id hex)
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                request = ExportTraceServiceRequest.FromString(body)
                for resource in request.resource_spans:
                    for scope in resource.scope_spans:
                        receiver.spans.extend((s.name, s.trace_id.hex()) for s in scope.spans)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def otlp() -> Iterator[OtlpReceiver]:
    receiver = OtlpReceiver()
    thread = threading.Thread(target=receiver.server.serve_forever, daemon=True)
    thread.start()
    yield receiver
    receiver.server.shutdown()


async def intake_delivered(handle: WorkflowHandle[Any, Any]) -> None:
    """Wait until the ticket's first notification activity has completed (its local
    first attempt, or an activity on the server)."""

    async def delivered() -> bool:
        events = (await handle.fetch_history()).events
        delivering = {
            e.event_id
            for e in events
            if e.activity_task_scheduled_event_attributes.activity_type.name == "deliver_step"
        }
        locally = (
            e.marker_recorded_event_attributes
            for e in events
            if e.marker_recorded_event_attributes.marker_name == LOCAL_ACTIVITY_MARKER
        )
        return any(
            e.activity_task_completed_event_attributes.scheduled_event_id in delivering
            for e in events
            if e.HasField("activity_task_completed_event_attributes")
        ) or any(
            b"deliver_step" in marker.details["data"].payloads[0].data
            and not marker.HasField("failure")
            for marker in locally
        )

    await eventually(f"{handle.id}'s intake notification delivered", delivered)


async def test_worker_process_serves_metrics_traces_and_trace_ids(
    dev_server: WorkflowEnvironment, otlp: OtlpReceiver, tmp_path: Path
) -> None:
    metrics = f"127.0.0.1:{free_port()}"
    queue = f"obs-{uuid.uuid4()}"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("TEMPORAL_", "OTEL_"))},
        "TEMPORAL_ADDRESS": dev_server.client.service_client.config.target_host,
        "SUPPORT_TASK_QUEUE": queue,
        "SUPPORT_LEDGER_URL": f"sqlite:///{tmp_path / 'ledger.sqlite3'}",
        "SUPPORT_METRICS_BIND": metrics,
        "SUPPORT_METRICS_POLL_SECONDS": "0.5",
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp.url,
        "OTEL_BSP_SCHEDULE_DELAY": "200",
        "OTEL_SERVICE_NAME": "support-worker-test",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "worker.py", cwd=ROOT, env=env, stdout=PIPE, stderr=STDOUT
    )
    # The HTTP service traces the tickets it opens too (its own process).
    intake_token = "obs-intake-token-0123456789"
    service_env = {
        **env,
        "OTEL_SERVICE_NAME": "support-service-test",
        "SUPPORT_INTAKE_TOKENS": f"obs:{intake_token}",
        "SUPPORT_INTAKE_SCOPES": "obs=customers:*;max_tier:mission_critical",
        "SUPPORT_AGENT_TOKENS": "ana:obs-agent-token-0123456789",
        "SUPPORT_LINK_SECRET": "obs-link-secret-4Hs8Kq1Zt6Wm3Xc9Vb5Nj",
    }
    # The caller traces too: the ticket's spans in the worker join the caller's trace.
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: "intake-test"}))
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(f"{otlp.url}/v1/traces")))
    client = Client(
        dev_server.client.service_client,
        namespace=dev_server.client.namespace,
        data_converter=support_data_converter,
        interceptors=[TracingInterceptor(provider.get_tracer("intake-test"))],
    )
    try:
        opened = [
            ticket(tier=Tier.PREMIUM, severity=Severity.SEV2),
            ticket(tier=Tier.PREMIUM, severity=Severity.SEV2),
            ticket(tier=Tier.MISSION_CRITICAL, severity=Severity.SEV1),
        ]
        for t in opened[:2]:
            await client.start_workflow("SupportTicket", t, id=t.workflow_id, task_queue=queue)
        # Stopped (SIGTERM) at the block's end, which flushes its spans.
        async with service_process(service_env, tmp_path / "service.log") as http:
            response = await http.post(
                "/api/tickets",
                json=opened[2].model_dump(mode="json", exclude_none=True),
                headers={"Authorization": f"Bearer {intake_token}"},
            )
            assert response.status_code == 201, response.text
        for t in opened:
            await intake_delivered(client.get_workflow_handle(t.workflow_id))
        await client.get_workflow_handle(opened[0].workflow_id).signal(
            "acknowledge", Acknowledge(agent="ana")
        )
        expected = {
            ("premium", "open"): 1,
            ("premium", "acknowledged"): 1,
            ("mission_critical", "open"): 1,
            ("standard", "open"): 0,
        }

        def counted() -> Samples | None:
            samples = scrape(metrics)
            got = {
                key: value(samples, "support_tickets_open", tier=key[0], state=key[1])
                for key in expected
            }
            opened_total = value(samples, "support_tickets_opened_total")
            return samples if got == expected and opened_total == 3 else None

        samples = await eventually(
            f"the ticket gauges on /metrics: {expected}",
            counted,
            20,
            every=0.2,
            ignoring=httpx.HTTPError,
        )
        assert value(samples, "support_tickets_opened_total", tier="mission_critical") == 1
        for t in opened:
            handle = client.get_workflow_handle(t.workflow_id)
            await handle.terminate(reason="test finished")
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = await asyncio.wait_for(process.communicate(), 30)

    provider.shutdown()
    by_trace: dict[str, set[str]] = {}
    for name, trace_id in otlp.spans:
        by_trace.setdefault(trace_id, set()).add(name)
    # One trace per ticket, from the caller's start (this test's client, or the HTTP
    # service for the third) through the worker's workflow run, policy resolution and
    # notification activities.
    started = [names for names in by_trace.values() if "StartWorkflow:SupportTicket" in names]
    assert len(started) == 3, by_trace
    for names in started:
        assert {
            "RunWorkflow:SupportTicket",
            "StartActivity:resolve_ticket_plan",
            "RunActivity:resolve_ticket_plan",
            "RunActivity:deliver_step",
        } <= names, names
    assert any("HandleSignal:acknowledge" in names for names in by_trace.values()), by_trace
    traced = set(by_trace)
    lines = [json.loads(line) for line in output.decode().splitlines() if line.startswith("{")]
    notifications = [line for line in lines if line.get("event") == "notification"]
    assert notifications, output.decode()[-2000:]
    assert all(line.get("trace_id") in traced for line in notifications)
    begun = next(line for line in lines if line.get("event") == "worker started")
    assert begun["metrics"] == f"http://{metrics}/metrics" and begun["tracing"] == "otlp"

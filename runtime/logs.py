"""structlog JSON logging for the worker and the CLIs.

``workflow.logger`` and ``activity.logger`` stay the call sites in Temporal code (they are
replay-safe and attach the workflow / activity context); this module renders their stdlib
records, and structlog's own, as one JSON object per line with that context flattened in
(``workflow_id``, ``ticket_id``, ``activity_type``...).

No secret reaches a log line (``redact``): an acknowledge link's token
(``/board/ack/<token>``), a bearer token, and ``token=`` / ``csrf=`` / ``key=`` values
are replaced by ``[redacted]`` in every string of every line rendered here, and in the
HTTP access log whatever renders it (``redact_access_log``).
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Any

import structlog
from opentelemetry import trace
from temporalio import activity, workflow
from temporalio.runtime import (
    LogForwardingConfig,
    LoggingConfig,
    PrometheusConfig,
    Runtime,
    TelemetryConfig,
    TelemetryFilter,
)

_TEMPORAL_KEYS = ("temporal_workflow", "temporal_activity")

REDACTED = "[redacted]"
_SECRETS = re.compile(
    r"(?P<keep>/board/ack/|\bbearer\s+|[?&;](?:token|csrf|key|secret)=)[^\s\"'<>&;,)]+",
    re.IGNORECASE,
)


def redact(text: str) -> str:
    """``text`` with acknowledge-link tokens, bearer tokens and secret query values
    replaced by ``[redacted]``."""
    if "/board/ack/" not in text and "=" not in text and "earer" not in text:
        return text
    return _SECRETS.sub(lambda m: m.group("keep") + REDACTED, text)


def _redacted(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: _redacted(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_redacted(v) for v in value)
    return value


def redact_secrets(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    """structlog processor: :func:`redact` every string of the line (nested ones too)."""
    for key, value in event.items():
        if not key.startswith("_"):
            event[key] = _redacted(value)
    return event


class RedactSecrets(logging.Filter):
    """A stdlib filter that redacts a record's message and arguments in place, for loggers
    whose records may be rendered by a handler other than ours (uvicorn's access log)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {k: _redacted(v) for k, v in record.args.items()}
        return True


ACCESS_LOGGERS = ("uvicorn.access", "uvicorn.error")


def redact_access_log() -> None:
    """Redact the HTTP server's access and error logs (once per logger)."""
    for name in ACCESS_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactSecrets) for f in logger.filters):
            logger.addFilter(RedactSecrets())


def _flatten_temporal_context(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    for key in _TEMPORAL_KEYS:
        context = event.pop(key, None)
        if isinstance(context, dict):
            for name, value in context.items():
                event.setdefault(name, value)
    workflow_id = event.get("workflow_id")
    if isinstance(workflow_id, str) and "ticket_id" not in event:
        for prefix in ("ticket-", "sow-"):
            if workflow_id.startswith(prefix):
                event["ticket_id"] = workflow_id.removeprefix(prefix)
    return event


def add_trace_ids(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    """The current OpenTelemetry span's ids, as hex, when tracing is on and a span is
    current (a traced activity, a client call), so a log line leads to its trace."""
    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        event.setdefault("trace_id", format(context.trace_id, "032x"))
        event.setdefault("span_id", format(context.span_id, "016x"))
    return event


def configure_logging(level: str = "INFO", stream: Any = None) -> None:
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.stdlib.ExtraAdder(),
        _flatten_temporal_context,
        add_trace_ids,
        redact_secrets,
    ]
    structlog.configure(
        processors=[
            *shared[:1],
            structlog.stdlib.filter_by_level,
            *shared[1:],
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(default=str),
        ],
    )
    # The context goes into fields of its own, not into the message text as well.
    workflow.logger.workflow_info_on_message = False
    activity.logger.activity_info_on_message = False
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def core_runtime(metrics: PrometheusConfig | None = None) -> Runtime:
    """A Temporal runtime that sends the SDK core's (Rust) warnings through Python logging,
    so they are JSON lines like everything else; with ``metrics``, it also serves them
    (``runtime.telemetry``)."""
    return Runtime(
        telemetry=TelemetryConfig(
            logging=LoggingConfig(
                filter=TelemetryFilter(core_level="WARN", other_level="ERROR"),
                forwarding=LogForwardingConfig(logger=logging.getLogger("temporalio.core")),
            ),
            metrics=metrics,
        )
    )


def forward_core_logs(metrics: PrometheusConfig | None = None) -> None:
    """Make :func:`core_runtime` the default. Call before connecting."""
    Runtime.set_default(core_runtime(metrics), error_if_already_set=False)

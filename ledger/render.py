"""Renderers of an SLA compliance report: ``table`` (rich), ``csv``, ``json`` and ``html``.

Machine formats carry timestamps in ISO 8601 (UTC, ``Z``) and durations in seconds;
attainment is a percentage rounded to two decimals, ``null`` / empty when undefined.
Every duration comes twice: in business time on the ticket's contract clock
(``*_business_seconds``; the table's and page's "business" columns) and in wall-clock time
(``*_seconds``; "wall"). ``no_policy`` counts the tickets whose business time is wall time
because their policy version was not available; the report's notes name those versions.
The HTML page is self-contained (inline CSS and SVG charts) and rendered with autoescaping,
so whatever a customer or ticket id holds is shown as text, never run.
"""

from __future__ import annotations

import csv
import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

from contract.text import span
from ledger.report import Figures, Report, Row, TargetFigures, WaitFigures

CSV_COLUMNS = (
    "scope",
    "tier",
    "severity",
    "tickets",
    "with_sla",
    "met",
    "breached",
    "pending",
    "out_of_scope",
    "attainment_pct",
    "acknowledged",
    "ack_p50_seconds",
    "ack_p90_seconds",
    "ack_max_seconds",
    "overrun_total_seconds",
    "overrun_max_seconds",
    "ack_p50_business_seconds",
    "ack_p90_business_seconds",
    "ack_max_business_seconds",
    "overrun_total_business_seconds",
    "overrun_max_business_seconds",
    "no_policy",
)
# The table's and the page's duration columns: (measure, business value, wall value).
TIMINGS = (
    ("ack p50", "ack_business_p50", "ack_p50"),
    ("ack p90", "ack_business_p90", "ack_p90"),
    ("ack max", "ack_business_max", "ack_max"),
    ("overrun total", "overrun_business_total", "overrun_total"),
    ("overrun max", "overrun_business_max", "overrun_max"),
)
TEMPLATES = Path(__file__).with_name("templates")


# --- values -------------------------------------------------------------------------------


def iso(instant: datetime | None) -> str | None:
    if instant is None:
        return None
    return instant.isoformat().replace("+00:00", "Z")


def seconds(duration: timedelta | None) -> int | float | None:
    """Seconds, as an integer when whole, else to the millisecond."""
    if duration is None:
        return None
    value = round(duration.total_seconds(), 3)
    return int(value) if value.is_integer() else value


def percent(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def human(duration: timedelta | None, days: bool = True) -> str:
    """``1h 10m``, ``20m``, ``4m 30s``, ``2d 3h`` (to the nearest second); ``-`` for none.
    Business time is never shown in days (``days=False``: ``64h``), which would read as
    calendar days."""
    return "-" if duration is None else span(duration, days)


def human_percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f} %"


def human_instant(instant: datetime | None) -> str:
    return "-" if instant is None else instant.strftime("%Y-%m-%d %H:%M:%S")


def figures_record(figures: Figures) -> dict[str, Any]:
    """The figures under the same names as the CSV columns."""
    return {
        "tickets": figures.tickets,
        "with_sla": figures.with_sla,
        "met": figures.met,
        "breached": figures.breached,
        "pending": figures.pending,
        "out_of_scope": figures.out_of_scope,
        "attainment_pct": percent(figures.attainment),
        "acknowledged": figures.acknowledged,
        "ack_p50_seconds": seconds(figures.ack_p50),
        "ack_p90_seconds": seconds(figures.ack_p90),
        "ack_max_seconds": seconds(figures.ack_max),
        "overrun_total_seconds": seconds(figures.overrun_total),
        "overrun_max_seconds": seconds(figures.overrun_max),
        "ack_p50_business_seconds": seconds(figures.ack_business_p50),
        "ack_p90_business_seconds": seconds(figures.ack_business_p90),
        "ack_max_business_seconds": seconds(figures.ack_business_max),
        "overrun_total_business_seconds": seconds(figures.overrun_business_total),
        "overrun_max_business_seconds": seconds(figures.overrun_business_max),
        "no_policy": figures.no_policy,
    }


def timing_cells(figures: Figures) -> list[tuple[str, str]]:
    """(business, wall) for each of TIMINGS, human-readable; an overrun total without a
    breach is ``-``."""
    cells = []
    for _, business, wall in TIMINGS:
        if business == "overrun_business_total" and not figures.breached:
            cells.append(("-", "-"))
        else:
            cells.append(
                (human(getattr(figures, business), days=False), human(getattr(figures, wall)))
            )
    return cells


def row_record(row: Row) -> dict[str, Any]:
    return {
        "scope": row.scope,
        "tier": row.tier.value if row.tier else None,
        "severity": row.severity.value if row.severity else None,
        **figures_record(row.figures),
    }


def describe_scope(report: Report) -> str:
    f = report.filters
    opened = (
        f"opened {human_instant(f.opened_from) if f.opened_from else 'any time'}"
        f" .. {human_instant(f.opened_to) + ' (exclusive)' if f.opened_to else 'now'}"
    )
    return (
        f"SLA compliance: {opened}; customer {f.customer_id or 'all'};"
        f" tier {f.tier.value if f.tier else 'all'}; as of {human_instant(report.as_of)} UTC"
    )


# --- json ---------------------------------------------------------------------------------


def report_record(report: Report) -> dict[str, Any]:
    f = report.filters
    return {
        "report": "sla-compliance",
        "as_of": iso(report.as_of),
        "filters": {
            "opened_from": iso(f.opened_from),
            "opened_to": iso(f.opened_to),
            "customer_id": f.customer_id,
            "tier": f.tier.value if f.tier else None,
        },
        "rows": [row_record(r) for r in report.rows],
        "total": figures_record(report.total),
        "breaches": [
            {
                "ticket_id": b.ticket_id,
                "customer_id": b.customer_id,
                "tier": b.tier.value,
                "severity": b.severity.value,
                "state": b.state.value,
                "response_due_at": iso(b.response_due_at),
                "acknowledged_at": iso(b.acknowledged_at),
                "overrun_seconds": seconds(b.overrun),
                "recorded": b.recorded,
                "overrun_business_seconds": seconds(b.overrun_business),
                "calendar": b.clock.calendar_name,
                "clock": b.clock.kind,
            }
            for b in report.breaches
        ],
        "series": {
            "unit": report.series.unit,
            "buckets": [label for _, label in report.series.buckets],
            "tiers": {
                tier.value: [
                    {
                        "bucket": p.label,
                        "met": p.met,
                        "breached": p.breached,
                        "attainment_pct": percent(p.attainment),
                    }
                    for p in points
                ]
                for tier, points in report.series.tiers.items()
            },
        },
        "notes": list(report.notes),
        # Only when some ticket has them: a report of first responses only keeps its keys.
        **({"targets": [target_record(t) for t in report.targets]} if report.has_targets else {}),
        **({"customer_wait": [wait_record(w) for w in report.waits]} if report.waited else {}),
    }


def wait_record(w: WaitFigures) -> dict[str, Any]:
    return {
        "scope": "tier" if w.tier else "total",
        "tier": w.tier.value if w.tier else None,
        "tickets": w.tickets,
        "total_seconds": seconds(w.total),
        "total_business_seconds": seconds(w.business_total),
        "p50_seconds": seconds(w.p50),
        "p50_business_seconds": seconds(w.business_p50),
    }


def wait_cells(w: WaitFigures) -> list[str]:
    """A wait row's cells: tier, tickets that waited, total and p50 each as business and
    wall (``no data`` when no ticket waited)."""
    if not w.tickets:
        return [w.tier.value if w.tier else "all tiers", "0", "no data", "-", "-", "-"]
    return [
        w.tier.value if w.tier else "all tiers",
        str(w.tickets),
        human(w.business_total, days=False),
        human(w.total),
        human(w.business_p50, days=False),
        human(w.p50),
    ]


def target_record(t: TargetFigures) -> dict[str, Any]:
    return {
        "scope": "tier" if t.tier else "total",
        "tier": t.tier.value if t.tier else None,
        "metric": t.metric.value,
        "clocks": t.clocks,
        "met": t.met,
        "breached": t.breached,
        "pending": t.pending,
        "attainment_pct": percent(t.attainment),
        "p50_business_seconds": seconds(t.business_p50),
        "p90_business_seconds": seconds(t.business_p90),
        "p50_seconds": seconds(t.p50),
        "p90_seconds": seconds(t.p90),
    }


def target_cells(t: TargetFigures) -> list[str]:
    """A target row's cells: metric, tier, counts, attainment (``no data`` without clocks),
    then p50 and p90 each as business and wall."""
    return [
        t.metric.value.replace("_", " "),
        t.tier.value if t.tier else "all tiers",
        str(t.clocks),
        str(t.met),
        str(t.breached),
        str(t.pending),
        human_percent(t.attainment) if t.clocks else "no data",
        human(t.business_p50, days=False),
        human(t.p50),
        human(t.business_p90, days=False),
        human(t.p90),
    ]


def render_json(report: Report, out: TextIO) -> None:
    json.dump(report_record(report), out, indent=2, ensure_ascii=False)
    out.write("\n")


# --- csv ----------------------------------------------------------------------------------


def render_csv(report: Report, out: TextIO) -> None:
    """One row per (tier, severity) group, a ``tier`` subtotal row after each tier's groups,
    and a ``total`` row last; empty cells where a value does not apply."""
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in report.rows:
        writer.writerow({k: "" if v is None else v for k, v in row_record(row).items()})


# --- table --------------------------------------------------------------------------------


def render_table(report: Report, out: TextIO) -> None:
    """Rich tables; plain (no colour, no width limit) when ``out`` is not a terminal."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    from runtime.console import emit, make_console

    console = make_console(out)
    console.print(Text(describe_scope(report), style="bold"))
    summary = Table(box=box.SIMPLE_HEAD, show_edge=False)
    summary.add_column("tier")
    summary.add_column("severity")
    for name in (
        "tickets",
        "with SLA",
        "met",
        "breached",
        "pending",
        "out of scope",
        "attainment",
    ):
        summary.add_column(name, justify="right")
    # Each duration twice, side by side: business time (the contract's clock), wall time.
    for measure, _, _ in TIMINGS:
        summary.add_column(f"{measure}\nbusiness", justify="right")
        summary.add_column(f"{measure}\nwall", justify="right")
    for row in report.rows:
        f = row.figures
        cells = [
            row.tier.value if row.tier else "all tiers",
            row.severity.value if row.severity else "all",
            str(f.tickets),
            str(f.with_sla),
            str(f.met),
            str(f.breached),
            str(f.pending),
            str(f.out_of_scope),
            human_percent(f.attainment),
            *(cell for pair in timing_cells(f) for cell in pair),
        ]
        summary.add_row(
            *(Text(c) for c in cells),
            style="bold" if row.scope != "group" else None,
            end_section=row.scope != "group",
        )
    console.print(summary)
    console.print()
    targets = Table(
        box=box.SIMPLE_HEAD,
        show_edge=False,
        title="Next reply and resolution (time to meet: the time paused left out)",
        title_justify="left",
    )
    for name in ("target", "tier", "clocks", "met", "breached", "pending", "attainment"):
        targets.add_column(name, justify="left" if name in ("target", "tier") else "right")
    for name in ("p50\nbusiness", "p50\nwall", "p90\nbusiness", "p90\nwall"):
        targets.add_column(name, justify="right")
    for t in report.targets:
        targets.add_row(
            *(Text(c) for c in target_cells(t)),
            style=None if t.tier else "bold",
            end_section=t.tier is None,
        )
    console.print(targets)
    console.print()
    if report.waited:
        console.print(wait_table(report))
    else:
        console.print(Text("Waiting on the customer: no data (no ticket waited)."))
    console.print()
    if report.breaches:
        console.print(breach_table(report))
    else:
        console.print(Text("No breaches."))
    console.print()
    console.print(
        Text(
            "Durations: business = on the ticket's contract clock (business hours; every hour"
            " on a 24x7 calendar), wall = wall-clock time."
        )
    )
    for note in report.notes:
        console.print(Text(f"Note: {note}"))
    emit(console, out)


def wait_table(report: Report) -> Any:
    from rich import box
    from rich.table import Table
    from rich.text import Text

    waits = Table(
        box=box.SIMPLE_HEAD,
        show_edge=False,
        title="Waiting on the customer (tickets that waited)",
        title_justify="left",
    )
    waits.add_column("tier")
    for name in ("tickets", "total\nbusiness", "total\nwall", "p50\nbusiness", "p50\nwall"):
        waits.add_column(name, justify="right")
    for w in report.waits:
        waits.add_row(*(Text(c) for c in wait_cells(w)), style=None if w.tier else "bold")
    return waits


def breach_table(report: Report) -> Any:
    from rich import box
    from rich.table import Table
    from rich.text import Text

    breaches = Table(
        box=box.SIMPLE_HEAD, show_edge=False, title="Breaches (UTC)", title_justify="left"
    )
    for name in ("ticket", "customer", "tier", "severity", "state", "clock", "due"):
        breaches.add_column(name)
    breaches.add_column("acknowledged")
    breaches.add_column("overrun\nbusiness", justify="right")
    breaches.add_column("overrun\nwall", justify="right")
    for b in report.breaches:
        breaches.add_row(
            *(
                Text(c)
                for c in (
                    b.ticket_id,
                    b.customer_id,
                    b.tier.value,
                    b.severity.value,
                    b.state.value,
                    b.clock.label,
                    human_instant(b.response_due_at),
                    human_instant(b.acknowledged_at) if b.acknowledged_at else "not yet",
                    human(b.overrun_business, days=False),
                    human(b.overrun),
                )
            )
        )
    return breaches


# --- html ---------------------------------------------------------------------------------


def render_html(report: Report) -> str:
    """One self-contained page: the tables and three inline SVG charts."""
    from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
    from markupsafe import Markup

    from ledger.charts import acknowledge_chart, attainment_chart, targets_chart

    environment = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=select_autoescape(["html"], default=True),
        undefined=StrictUndefined,
        keep_trailing_newline=True,
    )
    rows = []
    for row in report.rows:
        f = row.figures
        rows.append(
            {
                "scope": row.scope,
                "tier": row.tier.value if row.tier else "total",
                "severity": row.severity.value if row.severity else "all",
                "tickets": f.tickets,
                "with_sla": f.with_sla,
                "met": f.met,
                "breached": f.breached,
                "pending": f.pending,
                "out_of_scope": f.out_of_scope,
                "attainment": human_percent(f.attainment),
                "timings": timing_cells(f),
            }
        )
    breaches = [
        {
            "ticket_id": b.ticket_id,
            "customer_id": b.customer_id,
            "tier": b.tier.value,
            "severity": b.severity.value,
            "state": b.state.value,
            "due": human_instant(b.response_due_at),
            "acknowledged": human_instant(b.acknowledged_at) if b.acknowledged_at else "not yet",
            "clock": b.clock.label,
            "overrun": human(b.overrun),
            "overrun_seconds": seconds(b.overrun),
            "overrun_business": human(b.overrun_business, days=False),
            "overrun_business_seconds": seconds(b.overrun_business),
        }
        for b in report.breaches
    ]
    template = environment.get_template("report.html")
    return template.render(
        title=describe_scope(report),
        as_of=iso(report.as_of),
        rows=rows,
        measures=[measure for measure, _, _ in TIMINGS],
        breaches=breaches,
        notes=report.notes,
        series_unit=report.series.unit,
        # Our own SVG (no customer data in it): the only markup let through unescaped.
        attainment_svg=Markup(attainment_chart(report)),
        acknowledge_svg=Markup(acknowledge_chart(report)),
        targets=[
            {"scope": "tier" if t.tier else "total", "cells": target_cells(t)}
            for t in report.targets
        ],
        waits=[
            {"scope": "tier" if w.tier else "total", "cells": wait_cells(w)} for w in report.waits
        ],
        waited=report.waited,
        targets_svg=Markup(targets_chart(report)) if report.has_targets or report.waited else "",
    )

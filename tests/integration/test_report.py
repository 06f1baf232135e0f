"""SLA compliance reports and evidence export: the figures of a hand-written scenario in
every format, the ``python -m ledger`` command line as a separate process, and a report on
a ledger filled by real workflow runs on the time-skipping server."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import re
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from contract.models import (
    Acknowledge,
    AgentReply,
    AwaitCustomer,
    CustomerReply,
    MarkOutOfScope,
    Metric,
    Resolve,
    Severity,
    SlaEvent,
    SowDecision,
    TicketOutcome,
    Tier,
)
from harness.policy import policy_text, with_targets, write_policy
from harness.processes import eventually
from ledger.evidence import collect_evidence, evidence_record
from ledger.render import CSV_COLUMNS, render_csv, render_html, render_table, report_record
from ledger.report import (
    Filters,
    Report,
    TicketClock,
    bucket_of,
    build_report,
    judge,
    nearest_rank,
    wait_spans,
)
from ledger.store import SqlLedger, head_revision
from policy.load import parse_policy
from policy.schema import POLICY_FILE_ENV, Policy
from tests.conftest import (
    ROOT,
    Stack,
    advance_to,
    now_second,
    open_now,
    open_ticket_at,
    status_of,
    ticket,
)

M, H = timedelta(minutes=1), timedelta(hours=1)
SCRIPT_CUSTOMER = '<script>alert("x")</script>'


def at(day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2026, 11, day, hour, minute, tzinfo=UTC)


def outcome(
    ticket_id: str,
    tier: str,
    severity: str,
    customer: str,
    opened: datetime,
    due: datetime | None,
    acked: datetime | None,
    state: str,
    **fields: object,
) -> TicketOutcome:
    data: dict[str, object] = {
        "ticket_id": ticket_id,
        "workflow_id": f"ticket-{ticket_id}",
        "revision": 4,
        "customer_id": customer,
        "tier": tier,
        "severity": severity,
        "category": "incident",
        "state": state,
        "opened_at": opened,
        "response_due_at": due,
        "acknowledged_at": acked,
        "acknowledged_by": "ana" if acked else None,
        "policy_version": "2026.11.1",
    }
    return TicketOutcome.model_validate(data | fields)


# The scenario: Monday 2 to Thursday 5 November 2026, judged at Thursday 12:00 UTC.
AS_OF = at(5, 12)
# fmt: off
SCENARIO = [
    # premium sev2, acked after 20 min of a 1 h target: met.
    outcome("P1", "premium", "sev2", "acme", at(2, 9), at(2, 10), at(2, 9, 20), "resolved"),
    # premium sev2, acked at 70 min: breached, overrun 10 min.
    outcome("P2", "premium", "sev2", "globex", at(3, 9), at(3, 10), at(3, 10, 10),
            "acknowledged", response_breached=True, overrun=10 * M),
    # premium sev2, still open, breach recorded (stored overrun 15 min is stale): overrun is
    # as_of - due = 12:00 - 11:00 = 1 h. Its customer id tries to inject a script.
    outcome("P3", "premium", "sev2", SCRIPT_CUSTOMER, at(5, 10), at(5, 11), None, "open",
            response_breached=True, overrun=15 * M),
    # premium sev3, due 12:30 after as_of: pending.
    outcome("P4", "premium", "sev3", "acme", at(5, 11, 30), at(5, 12, 30), None, "open"),
    # premium sev3, routed to a statement of work before its deadline, declined: out of scope.
    outcome("P5", "premium", "sev3", "acme", at(3, 14), at(3, 15), None, "closed",
            out_of_scope=True, sow_outcome="declined"),
    # premium sev2, open past due but the breach write has not landed: breached anyway,
    # overrun 12:00 - 10:00 = 2 h, not "recorded".
    outcome("P6", "premium", "sev2", "acme", at(5, 9), at(5, 10), None, "open"),
    # mission_critical sev1 (15 min): acked after 5 min: met.
    outcome("M1", "mission_critical", "sev1", "example-bank", at(2, 12), at(2, 12, 15),
            at(2, 12, 5), "resolved"),
    # mission_critical sev1 acked after 45 min: breached, overrun 30 min.
    outcome("M2", "mission_critical", "sev1", "example-bank", at(3, 12), at(3, 12, 15),
            at(3, 12, 45), "resolved", response_breached=True, overrun=30 * M),
    # standard sev3 (business hours, 08:00-18:00 CST = 14:00-24:00 UTC), opened Monday
    # 09:00 CST, acked after 2 h: met.
    outcome("S1", "standard", "sev3", "initech", at(2, 15), at(2, 19), at(2, 17), "resolved"),
    # standard sev4 opened Wednesday 08:00 CST, acked exactly at the deadline (4 h): met.
    outcome("S2", "standard", "sev4", "initech", at(4, 14), at(4, 18), at(4, 18), "resolved"),
    # community: no SLA; acked after 1 h 30 min (counts for the time to acknowledge only).
    outcome("C1", "community", "sev3", "hobbyist", at(4, 8), None, at(4, 9, 30), "resolved"),
]
# fmt: on

# Hand-computed figures. Times to acknowledge in seconds: M1 300, P1 1200, M2 2700, P2 4200,
# C1 5400, S1 7200, S2 14400. Nearest rank: p50 of n values is the ceil(n/2)-th, p90 the
# ceil(0.9 n)-th. Overruns: P2 600, P3 3600, P6 7200, M2 1800.
#   mission_critical sev1: M1 met, M2 breached -> 1/2 = 50 %; acks [300, 2700]: p50 rank 1
#     = 300, p90 rank ceil(1.8) = 2 = 2700; overrun 1800.
#   premium sev2: P1 met; P2, P3, P6 breached -> 1/4 = 25 %; acks [1200, 4200]: p50 1200,
#     p90 4200; overrun 600 + 3600 + 7200 = 11400, max 7200.
#   premium sev3: P4 pending, P5 out of scope; nothing decided -> n/a.
#   standard: S1, S2 met -> 100 %; acks [7200, 14400]: p50 7200, p90 14400.
#   community: no SLA -> n/a; ack 5400.
#   total: 11 tickets, 10 with SLA, met 4 (P1 M1 S1 S2), breached 4 (P2 P3 P6 M2) -> 50 %;
#     7 acks: p50 rank ceil(3.5) = 4 -> 4200, p90 rank ceil(6.3) = 7 -> 14400;
#     overrun 600 + 3600 + 7200 + 1800 = 13200, max 7200.
# Every ticket here lies within its calendar's open hours (the Standard ones on weekdays
# 08:00-18:00 CST, the others on 24x7 calendars), so business time equals wall time: the
# business columns repeat the wall ones (see with_business), and no ticket lacks a policy.
# scope, tier, severity, tickets, with_sla, met, breached, pending, out_of_scope, attainment,
# acknowledged, ack p50, p90, max, overrun total, overrun max (wall clock)
WALL_ROWS: list[tuple[Any, ...]] = [
    ("group", "mission_critical", "sev1", 2, 2, 1, 1, 0, 0, 50.0, 2, 300, 2700, 2700, 1800, 1800),
    ("tier", "mission_critical", None, 2, 2, 1, 1, 0, 0, 50.0, 2, 300, 2700, 2700, 1800, 1800),
    ("group", "premium", "sev2", 4, 4, 1, 3, 0, 0, 25.0, 2, 1200, 4200, 4200, 11400, 7200),
    ("group", "premium", "sev3", 2, 2, 0, 0, 1, 1, None, 0, None, None, None, 0, None),
    ("tier", "premium", None, 6, 6, 1, 3, 1, 1, 25.0, 2, 1200, 4200, 4200, 11400, 7200),
    ("group", "standard", "sev3", 1, 1, 1, 0, 0, 0, 100.0, 1, 7200, 7200, 7200, 0, None),
    ("group", "standard", "sev4", 1, 1, 1, 0, 0, 0, 100.0, 1, 14400, 14400, 14400, 0, None),
    ("tier", "standard", None, 2, 2, 2, 0, 0, 0, 100.0, 2, 7200, 14400, 14400, 0, None),
    ("group", "community", "sev3", 1, 0, 0, 0, 0, 0, None, 1, 5400, 5400, 5400, 0, None),
    ("tier", "community", None, 1, 0, 0, 0, 0, 0, None, 1, 5400, 5400, 5400, 0, None),
    ("total", None, None, 11, 10, 4, 4, 1, 1, 50.0, 7, 4200, 14400, 14400, 13200, 7200),
]
# Breaches by deadline: P2 (3rd 10:00), M2 (3rd 12:15), P6 (5th 10:00), P3 (5th 11:00).
EXPECTED_BREACHES = [
    {
        "ticket_id": "P2",
        "customer_id": "globex",
        "tier": "premium",
        "severity": "sev2",
        "state": "acknowledged",
        "response_due_at": "2026-11-03T10:00:00Z",
        "acknowledged_at": "2026-11-03T10:10:00Z",
        "overrun_seconds": 600,
        "recorded": True,
    },
    {
        "ticket_id": "M2",
        "customer_id": "example-bank",
        "tier": "mission_critical",
        "severity": "sev1",
        "state": "resolved",
        "response_due_at": "2026-11-03T12:15:00Z",
        "acknowledged_at": "2026-11-03T12:45:00Z",
        "overrun_seconds": 1800,
        "recorded": True,
    },
    {
        "ticket_id": "P6",
        "customer_id": "acme",
        "tier": "premium",
        "severity": "sev2",
        "state": "open",
        "response_due_at": "2026-11-05T10:00:00Z",
        "acknowledged_at": None,
        "overrun_seconds": 7200,
        "recorded": False,
    },
    {
        "ticket_id": "P3",
        "customer_id": SCRIPT_CUSTOMER,
        "tier": "premium",
        "severity": "sev2",
        "state": "open",
        "response_due_at": "2026-11-05T11:00:00Z",
        "acknowledged_at": None,
        "overrun_seconds": 3600,
        "recorded": True,
    },
]
# Day buckets 2..5 November; decided tickets per opening day:
#   mission_critical: 2nd M1 met, 3rd M2 breached; premium: 2nd P1 met, 3rd P2 breached,
#   5th P3 and P6 breached; standard: 2nd S1 met, 4th S2 met.
DAYS = ["2026-11-02", "2026-11-03", "2026-11-04", "2026-11-05"]


def point(bucket: str, met: int, breached: int, pct: float | None) -> dict[str, Any]:
    return {"bucket": bucket, "met": met, "breached": breached, "attainment_pct": pct}


EXPECTED_SERIES = {
    "unit": "day",
    "buckets": DAYS,
    "tiers": {
        "mission_critical": [
            point(DAYS[0], 1, 0, 100.0),
            point(DAYS[1], 0, 1, 0.0),
            point(DAYS[2], 0, 0, None),
            point(DAYS[3], 0, 0, None),
        ],
        "premium": [
            point(DAYS[0], 1, 0, 100.0),
            point(DAYS[1], 0, 1, 0.0),
            point(DAYS[2], 0, 0, None),
            point(DAYS[3], 0, 2, 0.0),
        ],
        "standard": [
            point(DAYS[0], 1, 0, 100.0),
            point(DAYS[1], 0, 0, None),
            point(DAYS[2], 1, 0, 100.0),
            point(DAYS[3], 0, 0, None),
        ],
    },
}


def with_business(values: tuple[Any, ...]) -> tuple[Any, ...]:
    """The row with its business columns (equal to the wall ones) and no_policy 0."""
    return (*values, *values[11:16], 0)


EXPECTED_ROWS = [with_business(values) for values in WALL_ROWS]


def expected_row(values: tuple[Any, ...]) -> dict[str, Any]:
    return dict(zip(CSV_COLUMNS, values, strict=True))


def expected_json() -> dict[str, Any]:
    rows = [expected_row(v) for v in EXPECTED_ROWS]
    return {
        "report": "sla-compliance",
        "as_of": "2026-11-05T12:00:00Z",
        "filters": {"opened_from": None, "opened_to": None, "customer_id": None, "tier": None},
        "rows": rows,
        "total": {k: v for k, v in rows[-1].items() if k not in ("scope", "tier", "severity")},
        "breaches": [
            b
            | {
                "overrun_business_seconds": b["overrun_seconds"],
                "calendar": "always",
                "clock": "24x7",
            }
            for b in EXPECTED_BREACHES
        ],
        "series": EXPECTED_SERIES,
        "notes": [],
    }


def scenario_report() -> Report:
    return build_report(SCENARIO, AS_OF)


def table_text(report: Report) -> str:
    out = io.StringIO()  # not a terminal: plain text
    render_table(report, out)
    return out.getvalue()


def csv_text(report: Report) -> str:
    out = io.StringIO()
    render_csv(report, out)
    return out.getvalue()


# --- the figures ------------------------------------------------------------------------------


def test_nearest_rank_percentile_is_the_smallest_value_covering_p_percent() -> None:
    ten = [timedelta(seconds=s) for s in range(10, 0, -1)]  # unsorted on purpose
    assert nearest_rank(ten, 50) == timedelta(seconds=5)  # rank ceil(5) = 5
    assert nearest_rank(ten, 90) == timedelta(seconds=9)  # rank ceil(9) = 9
    assert nearest_rank(ten, 91) == timedelta(seconds=10)  # rank ceil(9.1) = 10
    four = [timedelta(seconds=s) for s in (10, 20, 30, 40)]
    assert nearest_rank(four, 50) == timedelta(seconds=20)  # rank 2, no interpolation
    assert nearest_rank(four, 90) == timedelta(seconds=40)  # rank ceil(3.6) = 4
    assert nearest_rank([timedelta(seconds=7)], 50) == timedelta(seconds=7)
    assert nearest_rank([], 50) is None


def test_scenario_figures_per_group_tier_and_total_as_json() -> None:
    assert report_record(scenario_report()) == expected_json()


def test_scenario_as_csv_has_one_row_per_group_with_subtotals_and_total() -> None:
    rows = list(csv.reader(io.StringIO(csv_text(scenario_report()))))
    assert rows[0] == list(CSV_COLUMNS)
    assert rows[1:] == [["" if v is None else str(v) for v in values] for values in EXPECTED_ROWS]


def test_scenario_as_a_table_shows_the_figures_without_colour() -> None:
    text = table_text(scenario_report())
    assert "\x1b[" not in text, "no ANSI escapes when the output is not a terminal"
    assert all(line == line.rstrip() for line in text.splitlines())
    assert text.startswith(
        "SLA compliance: opened any time .. now; customer all; tier all;"
        " as of 2026-11-05 12:00:00 UTC\n"
    )
    lines = {tuple(line.split()[:2]): line.split()[2:] for line in text.splitlines() if line}
    # tickets, with SLA, met, breached, pending, out of scope, attainment, then business and
    # wall side by side: p50, p90, max, overrun total, overrun max (equal in this scenario).
    assert lines[("ack", "p50")][:4] == ["ack", "p50", "ack", "p90"]  # header, first line
    assert lines[("tier", "severity")][9:12] == ["attainment", "business", "wall"]
    assert lines[("mission_critical", "sev1")] == (
        "2 2 1 1 0 0 50.0 % 5m 5m 45m 45m 45m 45m 30m 30m 30m 30m".split()
    )
    assert lines[("premium", "sev2")] == (
        "4 4 1 3 0 0 25.0 % 20m 20m 1h 10m 1h 10m 1h 10m 1h 10m 3h 10m 3h 10m 2h 2h".split()
    )
    assert lines[("premium", "sev3")] == "2 2 0 0 1 1 n/a - - - - - - - - - -".split()
    assert lines[("premium", "all")] == (
        "6 6 1 3 1 1 25.0 % 20m 20m 1h 10m 1h 10m 1h 10m 1h 10m 3h 10m 3h 10m 2h 2h".split()
    )
    assert lines[("standard", "sev4")] == "1 1 1 0 0 0 100.0 % 4h 4h 4h 4h 4h 4h - - - -".split()
    assert lines[("community", "sev3")] == (
        "1 0 0 0 0 0 n/a 1h 30m 1h 30m 1h 30m 1h 30m 1h 30m 1h 30m - - - -".split()
    )
    assert lines[("all", "tiers")] == (
        "all 11 10 4 4 1 1 50.0 % 1h 10m 1h 10m 4h 4h 4h 4h 3h 40m 3h 40m 2h 2h".split()
    )
    breaches = text[text.index("Breaches (UTC)") :].split("\n\n")[0].splitlines()[4:]
    assert [line.split()[0] for line in breaches] == ["P2", "M2", "P6", "P3"]
    assert "always (24x7)   2026-11-05 11:00:00   not yet" in breaches[3]
    assert breaches[3].endswith(" 1h        1h")
    assert SCRIPT_CUSTOMER in breaches[3], "a terminal shows the id as it is (no markup)"


def test_scenario_as_html_is_self_contained_escaped_and_deterministic() -> None:
    report = scenario_report()
    html = render_html(report)
    assert html == render_html(report), "same report, same bytes (charts included)"
    # The figures.
    for figure in ("50.0 %", "25.0 %", "100.0 %", "n/a", "1h 10m", "3h 40m", "3h 10m", "4h"):
        assert f"<td>{figure}</td>" in html, figure
    assert '<tr class="total">' in html and html.count('<tr class="tier">') == 4
    # Both charts, inline, with ids that never clash between them.
    charts = re.findall(r'<figure id="([a-z-]+)">\s*<svg', html)
    assert charts == ["attainment-chart", "acknowledge-chart"]
    assert html.count("<svg") == 2
    ids = re.findall(r'\bid="([^"]+)"', html)
    assert len(ids) == len(set(ids))
    assert "Mission Critical" in html and "2026-11-03" in html  # chart text stays text
    # Nothing from the ledger runs: the injected customer id is shown as text.
    assert "<script" not in html
    assert '<td class="text">&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;</td>' in html
    assert not re.search(r'\b(src|href)="(?!#)', html), "self-contained: no external resource"
    assert "<link" not in html


def test_an_empty_report_renders_in_every_format() -> None:
    report = build_report([], AS_OF)
    assert report_record(report)["total"]["tickets"] == 0
    assert report_record(report)["total"]["attainment_pct"] is None
    assert report_record(report)["series"] == {"unit": "day", "buckets": [], "tiers": {}}
    assert csv_text(report).splitlines()[1] == "total,,,0,0,0,0,0,0,,0,,,,0,,,,,0,,0"
    assert "No breaches." in table_text(report)
    assert render_html(report).count("<svg") == 2


def test_long_ranges_are_charted_per_iso_week() -> None:
    window = Filters(datetime(2026, 10, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC))
    series = report_record(build_report(SCENARIO, AS_OF, window))["series"]
    # 1 October (Thursday, week 40) to 30 November (Monday, week 49): 61 days -> weeks.
    assert series["unit"] == "week"
    assert series["buckets"] == [f"2026-W{w}" for w in range(40, 50)]
    week45 = {tier: points[5] for tier, points in series["tiers"].items()}
    assert week45 == {
        "mission_critical": point("2026-W45", 1, 1, 50.0),
        "premium": point("2026-W45", 1, 3, 25.0),
        "standard": point("2026-W45", 2, 0, 100.0),
    }


@pytest.mark.parametrize(
    ("case", "fields", "verdict"),
    [
        # A breach stays on record after a severity change moved the deadline past the ack:
        # breached, with the overrun the workflow measured from the breach instant.
        (
            "breach-then-deadline-moved",
            {"acknowledged_at": at(2, 9, 50), "response_breached": True, "overrun": 5 * M},
            ("breached", 5 * M),
        ),
        # Acknowledged in time, then routed to a statement of work: still met.
        (
            "met-then-routed",
            {"acknowledged_at": at(2, 9, 30), "state": "routed_to_sow", "out_of_scope": True},
            ("met", None),
        ),
        # Breached, then routed without an ack: the stored overrun, not as_of - due.
        (
            "breached-then-routed",
            {
                "state": "routed_to_sow",
                "out_of_scope": True,
                "response_breached": True,
                "overrun": 20 * M,
            },
            ("breached", 20 * M),
        ),
        # Routed before the deadline: neither met, breached nor pending.
        ("routed-in-time", {"state": "closed", "out_of_scope": True}, ("none", None)),
    ],
)
def test_verdicts_of_tickets_that_changed_course(
    case: str, fields: dict[str, object], verdict: tuple[str, timedelta | None]
) -> None:
    base = outcome("X", "premium", "sev2", "acme", at(2, 9), at(2, 10), None, "acknowledged")
    judged = judge(TicketOutcome.model_validate(base.model_dump() | fields), AS_OF)
    name = "met" if judged.met else "breached" if judged.breached else "none"
    assert (name, judged.overrun) == verdict, case
    assert not judged.pending


# --- business time: each ticket on the clock its contract uses -----------------------------


def business_policy() -> Policy:
    """The shipped default policy plus a Standard customer on its own calendar (Berlin,
    09:00-17:00, no holidays)."""

    def eu_customer(data: dict[str, Any]) -> None:
        data["calendars"]["eu-business-hours"] = {
            "time_zone": "Europe/Berlin",
            "hours": {day: ["09:00-17:00"] for day in ("mon", "tue", "wed", "thu", "fri")},
        }
        data["customers"]["acme-eu"] = {"tier": "standard", "calendar": "eu-business-hours"}

    return parse_policy(policy_text(eu_customer), "business-policy")


BUSINESS_POLICY = business_policy()
OLD_VERSION = "2026.10.1"  # a version the resolver cannot give


def business_policies(version: str | None) -> Policy | None:
    return None if version == OLD_VERSION else BUSINESS_POLICY


# Standard runs on us-business-hours: weekdays 08:00-18:00 America/Chicago (CST = UTC-6 in
# November, so 14:00-24:00 UTC); acme-eu on Berlin 09:00-17:00 (CET = UTC+1: 08:00-16:00
# UTC). Judged at Tuesday 10 November 15:30 UTC (09:30 CST). 6-9 November: Fri to Mon.
BUSINESS_AS_OF = at(10, 15, 30)
# fmt: off
BUSINESS_SCENARIO = [
    # Fri 17:00 CST -> acked Mon 09:00 CST: 1 h Friday + 1 h Monday = 2 business hours; 64 h
    # wall. Due Mon 11:00 CST (1 h Friday, 3 h Monday): met.
    outcome("B1", "standard", "sev3", "initech", at(6, 23), at(9, 17), at(9, 15), "resolved"),
    # Thu 15:00 CST, due Fri 09:00 CST, acked Mon 10:00 CST: acknowledged late.
    #   to acknowledge: Thu 3 h + Fri 10 h + Mon 2 h = 15 h business; 91 h wall.
    #   overrun: Fri 09:00-18:00 9 h + Mon 2 h = 11 h business; 73 h wall.
    outcome("B2", "standard", "sev3", "initech", at(5, 21), at(6, 15), at(9, 16),
            "acknowledged", response_breached=True, breached_at=at(6, 15), overrun=73 * H),
    # Mon 08:00 CST, due 12:00 CST, still open at Tue 09:30 CST: overrun Mon 6 h + Tue 1 h
    # 30 min = 7 h 30 min business; 21 h 30 min wall (the breach write has not landed).
    outcome("B3", "standard", "sev3", "initech", at(9, 14), at(9, 18), None, "open"),
    # acme-eu's calendar: Fri 16:00 CET -> acked Mon 10:00 CET: 1 h + 1 h = 2 h business,
    # 66 h wall; due Mon 12:00 CET (11:00 UTC): met.
    outcome("B4", "standard", "sev3", "acme-eu", at(6, 15), at(9, 11), at(9, 9), "resolved"),
    # Breached at Fri 17:00 CST, routed to a statement of work without an ack: the stored
    # overrun (16 h wall, to Sat 09:00 CST) holds 1 business hour (Fri 17:00-18:00).
    outcome("B5", "standard", "sev4", "initech", at(6, 19), at(6, 23), None, "routed_to_sow",
            out_of_scope=True, response_breached=True, breached_at=at(6, 23), overrun=16 * H),
    # Premium (24x7): business time is wall time. Acked after 70 min: overrun 10 min.
    outcome("B6", "premium", "sev2", "globex", at(9, 9), at(9, 10), at(9, 10, 10),
            "acknowledged", response_breached=True, breached_at=at(9, 10), overrun=10 * M),
    # Like B1, but opened under a policy version the resolver does not have: wall time for
    # both (64 h), counted in no_policy and named in the notes.
    outcome("B7", "standard", "sev3", "initech", at(6, 23), at(9, 17), at(9, 15), "resolved",
            policy_version=OLD_VERSION),
]
# fmt: on
# Hand-computed (hours unless marked):
#   standard sev3: B1 B4 B7 met, B2 B3 breached -> 60 %; 4 acks.
#     wall acks [64, 64, 66, 91]: p50 rank 2 = 64, p90 rank 4 = 91, max 91;
#     business acks [2, 2, 15, 64]: p50 2, p90 64, max 64.
#     overrun wall 73 + 21.5 = 94.5, max 73; business 11 + 7.5 = 18.5, max 11; no policy 1.
#   standard sev4: B5 breached (and out of scope): overrun wall 16, business 1.
#   standard: met 3, breached 3 -> 50 %; overrun wall 110.5, business 19.5.
#   premium sev2: B6: ack 70 min, overrun 10 min, business = wall.
#   total: 7 tickets, met 3, breached 4 -> 42.86 %; wall acks [70 min, 64, 64, 66, 91]:
#     p50 rank 3 = 64, p90 rank 5 = 91; business [70 min, 2, 2, 15, 64]: p50 2, p90 64;
#     overrun wall 110.5 h + 10 min, business 19.5 h + 10 min.
HOUR = 3600
# tickets, with_sla, met, breached, pending, out_of_scope, attainment, acknowledged,
# ack p50, p90, max, overrun total, max (wall), then the same five in business time, no_policy
BUSINESS_ROWS: dict[tuple[str, str | None, str | None], tuple[Any, ...]] = {
    ("group", "premium", "sev2"): (
        1, 1, 0, 1, 0, 0, 0.0, 1, 4200, 4200, 4200, 600, 600, 4200, 4200, 4200, 600, 600, 0,
    ),
    ("group", "standard", "sev3"): (
        5, 5, 3, 2, 0, 0, 60.0, 4, 64 * HOUR, 91 * HOUR, 91 * HOUR, 94.5 * HOUR, 73 * HOUR,
        2 * HOUR, 64 * HOUR, 64 * HOUR, 18.5 * HOUR, 11 * HOUR, 1,
    ),
    ("group", "standard", "sev4"): (
        1, 1, 0, 1, 0, 1, 0.0, 0, None, None, None, 16 * HOUR, 16 * HOUR,
        None, None, None, 1 * HOUR, 1 * HOUR, 0,
    ),
    ("tier", "standard", None): (
        6, 6, 3, 3, 0, 1, 50.0, 4, 64 * HOUR, 91 * HOUR, 91 * HOUR, 110.5 * HOUR, 73 * HOUR,
        2 * HOUR, 64 * HOUR, 64 * HOUR, 19.5 * HOUR, 11 * HOUR, 1,
    ),
    ("total", None, None): (
        7, 7, 3, 4, 0, 1, 42.86, 5, 64 * HOUR, 91 * HOUR, 91 * HOUR, 110.5 * HOUR + 600,
        73 * HOUR, 2 * HOUR, 64 * HOUR, 64 * HOUR, 19.5 * HOUR + 600, 11 * HOUR, 1,
    ),
}  # fmt: skip
BUSINESS_NOTE = (
    "no policy for version '2026.10.1' (1 ticket): their business time is wall-clock time"
)


def business_report() -> Report:
    return build_report(BUSINESS_SCENARIO, BUSINESS_AS_OF, policy_for_version=business_policies)


def test_a_standard_ticket_from_friday_17_to_monday_09_took_2_business_hours_64_wall() -> None:
    b1 = BUSINESS_SCENARIO[0]
    name, calendar = BUSINESS_POLICY.calendar_for(Tier.STANDARD, "initech")
    verdict = judge(b1, BUSINESS_AS_OF, TicketClock(name, calendar))
    assert (verdict.business_to_acknowledge, verdict.time_to_acknowledge) == (2 * H, 64 * H)
    assert verdict.met and not verdict.no_policy
    # Without a clock (no policy consulted) both are wall time.
    assert judge(b1, BUSINESS_AS_OF).business_to_acknowledge == 64 * H


def test_business_and_wall_figures_per_group_with_the_contract_calendar() -> None:
    record = report_record(business_report())
    rows = {(r["scope"], r["tier"], r["severity"]): r for r in record["rows"]}
    assert set(rows) == set(BUSINESS_ROWS) | {("tier", "premium", None)}
    for key, values in BUSINESS_ROWS.items():
        expected = dict(zip(CSV_COLUMNS[3:], values, strict=True))
        got = {k: v for k, v in rows[key].items() if k not in ("scope", "tier", "severity")}
        assert got == expected, key
    assert record["notes"] == [BUSINESS_NOTE]
    assert [
        (
            b["ticket_id"], b["calendar"], b["clock"], b["overrun_business_seconds"],
            b["overrun_seconds"], b["recorded"],
        )
        for b in record["breaches"]
    ] == [
        ("B2", "us-business-hours", "business hours", 11 * HOUR, 73 * HOUR, True),
        ("B5", "us-business-hours", "business hours", 1 * HOUR, 16 * HOUR, True),
        ("B6", "always", "24x7", 600, 600, True),
        ("B3", "us-business-hours", "business hours", 7.5 * HOUR, 21.5 * HOUR, False),
    ]  # fmt: skip


def test_business_time_uses_a_customers_own_calendar() -> None:
    report = build_report(
        [BUSINESS_SCENARIO[3]], BUSINESS_AS_OF, policy_for_version=business_policies
    )
    group = report.group(Tier.STANDARD, Severity.SEV3)
    assert group is not None
    assert (group.ack_business_max, group.ack_max) == (2 * H, 66 * H)
    assert report.ack_times_business == {Tier.STANDARD: [2 * H]}
    assert report.notes == []


def test_business_and_wall_time_side_by_side_in_csv_table_and_html() -> None:
    report = business_report()
    rows = list(csv.DictReader(io.StringIO(csv_text(report))))
    total = rows[-1]
    assert total["scope"] == "total"
    assert (total["ack_p50_seconds"], total["ack_p50_business_seconds"]) == ("230400", "7200")
    assert (total["overrun_total_seconds"], total["overrun_total_business_seconds"]) == (
        "398400", "70800",
    )  # fmt: skip
    assert total["no_policy"] == "1"

    text = table_text(report)
    lines = {tuple(line.split()[:2]): line.split()[2:] for line in text.splitlines() if line}
    # ... attainment, then business / wall: p50, p90, max, overrun total, overrun max.
    assert (
        lines[("standard", "sev3")]
        == (
            "5 5 3 2 0 0 60.0 % 2h 2d 16h 64h 3d 19h 64h 3d 19h 18h 30m 3d 22h 30m 11h 3d 1h"
        ).split()
    )
    breaches = text[text.index("Breaches (UTC)") :].split("\n\n")[0].splitlines()[4:]
    assert [line.split()[0] for line in breaches] == ["B2", "B5", "B6", "B3"]
    assert "us-business-hours" in breaches[0] and breaches[0].endswith(" 11h     3d 1h")
    assert "always (24x7)" in breaches[2] and breaches[2].endswith(" 10m       10m")
    assert f"Note: {BUSINESS_NOTE}" in text.splitlines()

    html = render_html(report)
    assert '<th colspan="2" class="pair">ack p50</th>' in html
    assert '<th class="pair">business</th><th>wall</th>' in html
    assert '<td class="pair">18h 30m</td><td>3d 22h 30m</td>' in html
    assert '<td class="pair" data-seconds="39600">11h</td>' in html
    assert '<td data-seconds="262800">3d 1h</td>' in html
    escaped_note = BUSINESS_NOTE.replace("'", "&#39;")
    assert f"<li>Note: {escaped_note}</li>" in html


def test_the_resolver_is_asked_once_per_policy_version() -> None:
    asked: list[str | None] = []

    def counting(version: str | None) -> Policy | None:
        asked.append(version)
        return business_policies(version)

    build_report(BUSINESS_SCENARIO, BUSINESS_AS_OF, policy_for_version=counting)
    assert sorted(asked, key=str) == ["2026.10.1", "2026.11.1"]


def test_without_a_loadable_policy_the_report_falls_back_to_wall_time_with_a_note(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(POLICY_FILE_ENV, str(tmp_path / "missing.yaml"))
    report = build_report(BUSINESS_SCENARIO[:1], BUSINESS_AS_OF)  # the default resolver
    group = report.group(Tier.STANDARD, Severity.SEV3)
    assert group is not None
    assert (group.ack_business_max, group.ack_max, group.no_policy) == (64 * H, 64 * H, 1)
    assert report.notes == [
        "no policy for version '2026.11.1' (1 ticket): their business time is wall-clock time"
    ]
    assert report.breaches == [] and "Note: no policy for version" in table_text(report)


async def test_reports_read_back_from_the_ledger_on_both_backends(any_ledger: SqlLedger) -> None:
    for row in SCENARIO:
        await any_ledger.save_outcome(row)
    assert report_record(build_report(await any_ledger.outcomes(), AS_OF)) == expected_json()
    # Filters are applied by the store: acme's premium tickets opened on the 3rd to 5th.
    window = Filters(at(3, 0), at(6, 0), "acme", Tier.PREMIUM)
    rows = await any_ledger.outcomes(at(3, 0), at(6, 0), "acme", "premium")
    assert [r.ticket_id for r in rows] == ["P5", "P6", "P4"]
    report = build_report(rows, AS_OF, window)
    sev2 = report.group(Tier.PREMIUM, Severity.SEV2)
    assert sev2 is not None and (sev2.tickets, sev2.breached, sev2.overrun_total) == (1, 1, 2 * H)
    assert report_record(report)["filters"] == {
        "opened_from": "2026-11-03T00:00:00Z",
        "opened_to": "2026-11-06T00:00:00Z",
        "customer_id": "acme",
        "tier": "premium",
    }


# --- the command line, as a separate process ----------------------------------------------------


async def cli(*args: str) -> tuple[int, str, str]:
    """``python -m ledger ...`` as a separate process: (exit code, stdout, stderr)."""
    environment = {k: v for k, v in os.environ.items() if k != "SUPPORT_LEDGER_URL"}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ledger",
        *args,
        cwd=ROOT,
        env=environment,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def cli_in_process(*args: str) -> tuple[int, str, str]:
    """The same entry point in this process (in a thread: it runs its own event loop), for
    the input checks that need no fresh interpreter."""
    from ledger.__main__ import main

    out, err = io.StringIO(), io.StringIO()
    code = await asyncio.to_thread(main, list(args), out, err)
    return code, out.getvalue(), err.getvalue()


P2_EVENTS = [
    SlaEvent(
        key="ticket-P2/opened",
        ticket_id="P2",
        kind="opened",
        at=at(3, 9),
        source="workflow",
        detail={"tier": "premium", "response_due_at": "2026-11-03T10:00:00Z"},
    ),
    SlaEvent(
        key="ticket-P2/breach",
        ticket_id="P2",
        kind="breached",
        at=at(3, 10),
        source="timer",
        detail={"step": "breach", "targets": ["support-lead", "duty-manager"]},
    ),
    SlaEvent(
        key="ticket-P2/acknowledged",
        ticket_id="P2",
        kind="acknowledged",
        at=at(3, 10, 10),
        source="agent:ana",
        detail={"response_breached": True, "overrun_seconds": 600.0, "note": 'a "quoted", note'},
    ),
]


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def scenario_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A SQLite ledger file holding the scenario and the events of one ticket (read only)."""
    url = f"sqlite:///{tmp_path_factory.mktemp('scenario') / 'ledger.sqlite3'}"
    ledger = SqlLedger.from_url(url)
    await ledger.migrate()
    for row in SCENARIO:
        await ledger.save_outcome(row)
    await ledger.append(P2_EVENTS)
    await ledger.close()
    return url


async def test_cli_migrates_a_new_ledger_and_reports_the_revision(tmp_path: Path) -> None:
    path = tmp_path / "new" / "ledger.sqlite3"
    code, out, err = await cli_in_process("migrate", "--url", f"sqlite:///{path}")
    assert (code, err) == (0, "")
    revision = head_revision()
    assert (
        out == f"SLA ledger at sqlite+aiosqlite:///{path}: schema at revision {revision} (head)\n"
    )
    ledger = SqlLedger.from_url(f"sqlite:///{path}")
    try:
        await ledger.check_schema()
    finally:
        await ledger.close()


def error_cases(url: str) -> dict[str, tuple[list[str], int, str]]:
    """Bad input and an unusable ledger: (arguments, exit code, start of the message)."""
    return {
        "bad-date": (
            ["report", "--url", url, "--from", "2026-13-01"],
            2,
            "error: --from: '2026-13-01' is not a date or date-time"
            " (YYYY-MM-DD, or ISO 8601 such as 2026-11-01T09:30:00Z)\n",
        ),
        "unknown-tier": (
            ["report", "--url", url, "--tier", "gold"],
            2,
            "error: --tier: 'gold' is not a tier;"
            " valid: mission_critical, premium, standard, community\n",
        ),
        "from-after-to": (
            ["report", "--url", url, "--from", "2026-11-05", "--to", "2026-11-01"],
            2,
            "error: --from: 2026-11-05 is not before --to 2026-11-01 (--to is exclusive)\n",
        ),
        "unknown-ticket": (
            ["evidence", "T-404", "--url", url],
            1,
            "error: no ticket 'T-404' in the SLA ledger at sqlite+aiosqlite:///"
            f"{url.removeprefix('sqlite:///')}\n",
        ),
        "unreachable": (
            ["report", "--url", "postgresql://reporter:s3cret@127.0.0.1:1/ledger"],
            1,
            "error: cannot use the SLA ledger at"
            " postgresql+asyncpg://reporter:***@127.0.0.1:1/ledger: ",
        ),
    }


@dataclass
class CliRuns:
    results: dict[str, tuple[int, str, str]]
    page: Path


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def cli_runs(scenario_url: str, tmp_path_factory: pytest.TempPathFactory) -> CliRuns:
    """Every ``python -m ledger`` process of these tests, run at once (each one spends about
    a second importing; side by side they keep the suite fast). The slowest first."""
    page = tmp_path_factory.mktemp("html") / "report.html"
    as_of = ["--url", scenario_url, "--as-of", "2026-11-05T13:00:00+01:00"]  # = 12:00 UTC
    runs = {
        "html": ["report", *as_of, "--format", "html", "--output", str(page)],
        "table": ["report", *as_of],
        "csv": ["report", *as_of, "--format", "csv"],
        "json": ["report", *as_of, "--format", "json"],
        "evidence": ["evidence", "P2", "--url", scenario_url],
        "bad-format": ["report", "--format", "xml"],
    } | {name: args for name, (args, _, _) in error_cases(scenario_url).items()}
    results = await asyncio.gather(*(cli(*args) for args in runs.values()))
    return CliRuns(dict(zip(runs, results, strict=True)), page)


async def test_cli_reports_in_every_format(cli_runs: CliRuns) -> None:
    report = scenario_report()
    assert cli_runs.results["table"] == (0, table_text(report), "")
    assert cli_runs.results["csv"] == (0, csv_text(report), "")
    code, out, err = cli_runs.results["json"]
    assert (code, err) == (0, "") and json.loads(out) == expected_json()
    assert cli_runs.results["html"] == (0, "", "")
    assert cli_runs.page.read_text(encoding="utf-8") == render_html(report)


async def test_cli_filters_by_open_time_customer_and_tier(scenario_url: str) -> None:
    code, out, err = await cli_in_process(
        "report", "--url", scenario_url, "--as-of", "2026-11-05T12:00:00Z", "--format", "json",
        "--from", "2026-11-03", "--to", "2026-11-05", "--customer", "acme", "--tier", "premium",
    )  # fmt: skip
    assert (code, err) == (0, "")
    data = json.loads(out)
    assert data["filters"] == {
        "opened_from": "2026-11-03T00:00:00Z",
        "opened_to": "2026-11-05T00:00:00Z",
        "customer_id": "acme",
        "tier": "premium",
    }
    # acme's premium tickets opened on the 3rd and 4th: only P5 (out of scope).
    assert [(r["scope"], r["severity"], r["tickets"], r["out_of_scope"]) for r in data["rows"]] == [
        ("group", "sev3", 1, 1),
        ("tier", None, 1, 1),
        ("total", None, 1, 1),
    ]


async def test_cli_exports_the_evidence_of_a_ticket(cli_runs: CliRuns, scenario_url: str) -> None:
    code, out, err = cli_runs.results["evidence"]
    csv_code, csv_out, _ = await cli_in_process(
        "evidence", "P2", "--url", scenario_url, "--format", "csv"
    )
    assert (code, err, csv_code) == (0, "", 0)
    evidence = json.loads(out)
    assert evidence["ticket_id"] == "P2"
    assert evidence["ticket"]["acknowledged_at"] == "2026-11-03T10:10:00Z"
    assert evidence["ticket"]["overrun_seconds"] == 600
    assert evidence["ticket"]["response_breached"] is True
    assert evidence["events"] == [
        {
            "at": e.at.isoformat().replace("+00:00", "Z"),
            "kind": e.kind,
            "source": e.source,
            "key": e.key,
            "detail": e.detail,
        }
        for e in P2_EVENTS
    ]
    rows = list(csv.DictReader(io.StringIO(csv_out)))
    assert [(r["record"], r["at"], r["kind"], r["source"], r["key"]) for r in rows] == [
        ("ticket", "2026-11-03T09:00:00Z", "ticket", "ledger", "ticket-P2"),
        ("event", "2026-11-03T09:00:00Z", "opened", "workflow", "ticket-P2/opened"),
        ("event", "2026-11-03T10:00:00Z", "breached", "timer", "ticket-P2/breach"),
        ("event", "2026-11-03T10:10:00Z", "acknowledged", "agent:ana", "ticket-P2/acknowledged"),
    ]
    assert json.loads(rows[0]["detail"]) == evidence["ticket"]
    assert json.loads(rows[3]["detail"])["note"] == 'a "quoted", note'


async def test_cli_errors_name_the_flag_and_set_the_exit_code(
    cli_runs: CliRuns, scenario_url: str
) -> None:
    for name, (args, code, message) in error_cases(scenario_url).items():
        got_code, out, err = cli_runs.results[name]
        assert (got_code, out) == (code, ""), (args, err)
        assert err.startswith(message) and err.count("\n") == 1, (args, err)
    assert "s3cret" not in cli_runs.results["unreachable"][2], "the password is never printed"
    # argparse's own checks exit 2 with its usage line.
    code, _, err = cli_runs.results["bad-format"]
    assert code == 2 and "argument --format: invalid choice: 'xml'" in err


async def test_cli_input_checks(scenario_url: str, tmp_path: Path) -> None:
    url = ["--url", scenario_url]
    missing, unmigrated = tmp_path / "missing.sqlite3", tmp_path / "empty.sqlite3"
    unmigrated.touch()
    cases: list[tuple[list[str], int, str]] = [
        (
            ["report", *url, "--as-of", "yesterday"],
            2,
            "error: --as-of: 'yesterday' is not a date or date-time",
        ),
        (["report", *url, "--to", "2026-02-30"], 2, "error: --to: '2026-02-30' is not a date"),
        (["report", *url, "--customer", " "], 2, "error: --customer: must not be empty\n"),
        (
            ["report", *url, "--output", str(tmp_path / "no" / "such" / "r.html")],
            2,
            f"error: --output: directory '{tmp_path / 'no' / 'such'}' does not exist\n",
        ),
        (
            ["report", "--url", "mysql://reports@db/ledger"],
            2,
            "error: --url: 'mysql' is not supported; use postgresql://... or sqlite:///path\n",
        ),
        (
            ["evidence", "T 1", *url],
            2,
            "error: TICKET_ID: 'T 1' is not a ticket id ([A-Za-z0-9._-]{1,64})\n",
        ),
        (
            ["evidence", "T-1", "--url", f"sqlite:///{missing}"],
            1,
            f"error: no SLA ledger at sqlite+aiosqlite:///{missing}: {missing} does not exist"
            " (`python -m ledger migrate` creates it)\n",
        ),
        (
            ["report", "--url", f"sqlite:///{unmigrated}"],
            1,
            f"error: the SLA ledger at sqlite+aiosqlite:///{unmigrated} is at schema revision"
            f" none, this code needs {head_revision()}: run `python -m ledger migrate`\n",
        ),
    ]
    for args, code, message in cases:
        got_code, out, err = await cli_in_process(*args)
        assert (got_code, out) == (code, ""), (args, err)
        assert err.startswith(message), (args, err)
    assert not missing.exists(), "a report never creates an empty ledger"


# --- on a ledger filled by real workflow runs -------------------------------------------------


async def ledger_row(stack: Stack, ticket_id: str, done: Any) -> TicketOutcome:
    """Wait (real time, at most 10 s) until the ticket's ledger row satisfies ``done``: the
    ledger writes run as background activities."""

    async def row() -> TicketOutcome | None:
        found = await stack.ledger.outcome(ticket_id)
        return found if found is not None and done(found) else None

    return await eventually(f"{ticket_id}'s ledger row as expected", row, every=0.02)


async def test_report_on_a_ledger_filled_by_real_workflow_runs(stack: Stack) -> None:
    t0 = await now_second(stack.env)
    met = await open_ticket_at(stack, ticket("R-met"), t0)  # premium sev2: 1 h
    late = await open_ticket_at(stack, ticket("R-late"), t0)
    await open_ticket_at(stack, ticket("R-waiting"), t0)  # never acknowledged
    mission = await open_ticket_at(
        stack,
        ticket("R-mc", customer_id="example-bank", tier="mission_critical", severity="sev1"),
        t0,
    )
    routed = await open_ticket_at(stack, ticket("R-sow", severity="sev3"), t0)
    community = await open_ticket_at(stack, ticket("R-community", tier="community"), t0)

    await advance_to(stack.env, t0 + 5 * M)
    await mission.signal("acknowledge", Acknowledge(agent="mia"))
    await advance_to(stack.env, t0 + 10 * M)
    await routed.signal("mark_out_of_scope", MarkOutOfScope(by="bob", reason="custom operator"))
    await advance_to(stack.env, t0 + 20 * M)
    await met.signal("acknowledge", Acknowledge(agent="ana"))
    await advance_to(stack.env, t0 + 30 * M)
    await community.signal("acknowledge", Acknowledge(agent="cole"))
    await advance_to(stack.env, t0 + 70 * M)
    await late.signal("acknowledge", Acknowledge(agent="ben"))
    await open_ticket_at(stack, ticket("R-pending"), t0 + 75 * M)  # due t0 + 135 min
    await advance_to(stack.env, t0 + 80 * M)

    # Finish what can finish; the rest stays open (the fixture terminates it).
    for handle in (met, mission, community):
        await handle.signal("resolve", Resolve(by="ana"))
        await handle.result()
    sow = stack.client.get_workflow_handle("sow-R-sow")
    await sow.signal("sow_decision", SowDecision(decision="declined", by="account-manager"))
    await routed.result()

    # Acknowledgement instants are when the workflow processed the signal.
    acked = {
        name: (await status_of(handle)).acknowledged_at
        for name, handle in (("met", met), ("late", late), ("mc", mission), ("c", community))
    }
    to_ack = {name: instant - t0 for name, instant in acked.items() if instant is not None}
    assert 20 * M <= to_ack["met"] < 21 * M and 70 * M <= to_ack["late"] < 71 * M
    assert 5 * M <= to_ack["mc"] < 6 * M and 30 * M <= to_ack["c"] < 31 * M

    await ledger_row(stack, "R-met", lambda r: r.state.value == "resolved")
    await ledger_row(stack, "R-late", lambda r: r.state.value == "acknowledged")
    await ledger_row(stack, "R-waiting", lambda r: r.response_breached)
    await ledger_row(stack, "R-mc", lambda r: r.state.value == "resolved")
    await ledger_row(stack, "R-sow", lambda r: r.state.value == "closed")
    await ledger_row(stack, "R-community", lambda r: r.state.value == "resolved")
    await ledger_row(stack, "R-pending", lambda r: r.response_due_at == t0 + 135 * M)

    as_of = t0 + 90 * M
    report = build_report(await stack.ledger.outcomes(), as_of)
    late_overrun = to_ack["late"] - H  # acknowledged at ~70 min of a 60 min target
    # The still-open breached ticket: as_of - due = 90 - 60 = 30 min.
    waiting_overrun = 30 * M

    def figures(tier: Tier, severity: Severity | None = None) -> tuple[Any, ...]:
        f = report.group(tier, severity) if severity else report.subtotal(tier)
        assert f is not None, (tier, severity)
        return (
            f.tickets, f.with_sla, f.met, f.breached, f.pending, f.out_of_scope,
            f.attainment, f.ack_p50, f.ack_p90, f.ack_max, f.overrun_total, f.overrun_max,
        )  # fmt: skip

    # premium sev2: met, late, waiting, pending -> met 1, breached 2 (late, waiting),
    # pending 1 -> 1/3; acks [20, 70] min: p50 rank 1 = met's, p90 rank 2 = late's.
    assert figures(Tier.PREMIUM, Severity.SEV2) == (
        4, 4, 1, 2, 1, 0, 100 / 3, to_ack["met"], to_ack["late"], to_ack["late"],
        late_overrun + waiting_overrun, waiting_overrun,
    )  # fmt: skip
    # premium sev3: routed to a statement of work at 10 min, before its deadline.
    assert figures(Tier.PREMIUM, Severity.SEV3) == (
        1, 1, 0, 0, 0, 1, None, None, None, None, timedelta(0), None,
    )  # fmt: skip
    assert figures(Tier.PREMIUM)[:7] == (5, 5, 1, 2, 1, 1, 100 / 3)
    assert figures(Tier.MISSION_CRITICAL, Severity.SEV1) == (
        1, 1, 1, 0, 0, 0, 100.0, to_ack["mc"], to_ack["mc"], to_ack["mc"], timedelta(0), None,
    )  # fmt: skip
    # community (default severity of the helper: sev2): no SLA, acked after 30 min.
    assert figures(Tier.COMMUNITY, Severity.SEV2) == (
        1, 0, 0, 0, 0, 0, None, to_ack["c"], to_ack["c"], to_ack["c"], timedelta(0), None,
    )  # fmt: skip
    # total: acks [5, 20, 30, 70] min: p50 rank 2 = met's, p90 rank ceil(3.6) = 4 = late's.
    total = report.total
    assert (total.tickets, total.with_sla, total.met, total.breached, total.pending) == (
        7, 6, 2, 2, 1,
    )  # fmt: skip
    assert (total.out_of_scope, total.attainment) == (1, 50.0)
    assert (total.ack_p50, total.ack_p90, total.ack_max) == (
        to_ack["met"], to_ack["late"], to_ack["late"],
    )  # fmt: skip
    assert total.overrun_total == late_overrun + waiting_overrun
    assert [
        (b.ticket_id, b.state.value, b.response_due_at, b.acknowledged_at, b.overrun, b.recorded)
        for b in report.breaches
    ] == [
        ("R-late", "acknowledged", t0 + H, acked["late"], late_overrun, True),
        ("R-waiting", "open", t0 + H, None, waiting_overrun, True),
    ]
    day = report.series.tiers[Tier.PREMIUM][
        [b for b, _ in report.series.buckets].index(bucket_of(t0, "day"))
    ]
    assert (day.met, day.breached) == (1, 2)

    evidence = await collect_evidence(stack.ledger, "R-late")
    assert evidence is not None
    record = evidence_record(evidence)
    kinds = [e["kind"] for e in record["events"]]
    assert kinds[0] == "opened" and "breached" in kinds and kinds[-1] == "acknowledged"
    assert record["ticket"]["response_breached"] is True
    instants = [datetime.fromisoformat(e["at"]) for e in record["events"]]
    assert instants == sorted(instants), "events in time order"


async def test_report_on_real_runs_with_next_reply_and_resolution_targets(
    stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Premium ticket (24x7: business time is wall time) with a 4 h next reply and a 1 day
    resolution, run through the workflow: three next replies (one late), a wait on the
    customer, then resolved; the report reads it from the ledger row."""
    monkeypatch.setenv(
        POLICY_FILE_ENV, str(write_policy(tmp_path, with_targets("premium", "PT4H", "P1D")))
    )
    t0, handle = await open_now(stack, ticket("R-targets"))

    async def act(offset: timedelta, name: str, payload: Any) -> None:
        await advance_to(stack.env, t0 + offset)
        if name == "customer_reply":
            await handle.signal(name, payload)
        else:
            await handle.execute_update(name, payload)

    def answer(offset: timedelta) -> AgentReply:
        return AgentReply(agent="ana", at=t0 + offset)

    def customer(offset: timedelta) -> CustomerReply:
        return CustomerReply(received_at=t0 + offset, reference=f"<r{offset}@acme.example>")

    await act(10 * M, "agent_reply", answer(10 * M))  # the first response
    await act(H, "customer_reply", customer(H))  # next reply 1, due 5 h
    await act(2 * H, "agent_reply", answer(2 * H))  # met after 1 h
    await act(3 * H, "customer_reply", customer(3 * H))  # next reply 2, due 7 h
    # Met after 4 h 30 min: late. (Not at 8 h, where next reply 2's hourly repeat fires:
    # the time-skipping server strands a workflow task that cancels a timer firing while
    # the worker holds the task, and the next update then waits forever.)
    await act(7 * H + 30 * M, "agent_reply", answer(7 * H + 30 * M))
    wait = AwaitCustomer(by="ana", reason="logs?", at=t0 + 9 * H)
    await act(9 * H, "await_customer", wait)  # the resolution pauses
    await act(12 * H, "customer_reply", customer(12 * H))  # 3 h waited; next reply 3
    await act(12 * H + 30 * M, "agent_reply", answer(12 * H + 30 * M))  # met after 30 min
    await act(13 * H, "resolve", Resolve(by="ana"))
    await handle.result()
    row = await ledger_row(stack, "R-targets", lambda r: r.state.value == "resolved")
    assert row.customer_wait == 3 * H
    # The wait as the ledger's events record it (what customer_waits is read from).
    assert wait_spans(await stack.ledger.events("R-targets")) == [(t0 + 9 * H, t0 + 12 * H)]
    # Read for many tickets in one query (what `python -m ledger report` does); a ticket
    # without waits has none.
    read = await stack.ledger.wait_events(["R-targets", "no-such-ticket"])
    assert [e.kind for e in read["R-targets"]] == ["awaiting-customer-1", "customer_resumed"]
    assert wait_spans(read["R-targets"]) == [(t0 + 9 * H, t0 + 12 * H)]
    assert read["no-such-ticket"] == []

    report = build_report(await stack.ledger.outcomes(), t0 + 14 * H)
    figures = {(t.metric.value, t.tier): t for t in report.targets}
    replies = figures[("next_reply", Tier.PREMIUM)]
    # [30 min, 1 h, 4 h 30 min]: p50 rank 2 = 1 h, p90 rank 3 = 4 h 30 min.
    late = 4 * H + 30 * M
    assert (replies.clocks, replies.met, replies.breached, replies.pending) == (3, 2, 1, 0)
    assert (replies.p50, replies.p90, replies.business_p50, replies.business_p90) == (
        H, late, H, late,
    )  # fmt: skip
    resolution = figures[("resolution", Tier.PREMIUM)]
    # Resolved at 13 h (the ticket processed the signal then), 3 h paused: 10 h.
    assert (resolution.clocks, resolution.met, resolution.attainment) == (1, 1, 100.0)
    assert resolution.p50 is not None and 10 * H <= resolution.p50 < 10 * H + M
    assert resolution.business_p50 == resolution.p50
    [premium, total] = report.waits
    assert (premium.tier, premium.tickets, premium.total, premium.business_total) == (
        Tier.PREMIUM, 1, 3 * H, 3 * H,
    )  # fmt: skip
    assert (total.tier, total.tickets) == (None, 1)
    # The first response keeps its figures: answered after 10 min of 1 h.
    first = report.group(Tier.PREMIUM, Severity.SEV2)
    assert first is not None and (first.met, first.breached, first.ack_p50) == (1, 0, 10 * M)


# --- next reply and resolution (issue 16) -------------------------------------------------
# Judged at BUSINESS_AS_OF (Tue 10 Nov 15:30 UTC) on BUSINESS_POLICY (Premium 24x7).
# T1, Standard: resolution started Thu 5 Nov 09:00 CST, paused Fri 17:00 CST -> Mon 10:00 CST
# (65 h wall; 3 business hours: Fri 17-18, Mon 08-10), resolved Mon 11:00 CST. Business:
# Thu 9 h + Fri 10 h + Mon 3 h = 22 h, minus the 3 paused = 19 h; wall 98 h - 65 h = 33 h.
# T2, Premium: next reply 1 met after 2 h; next reply 2 met after 5 h, late (breached);
#   resolution still runs, due after as_of: pending.
# T3, Premium: resolution due Mon 20:00, met Mon 22:00 (breached), paused 2 h waiting on the
#   customer: 14 h - 2 h = 12 h, business = wall (24x7).
# T4, Premium: resolution due Tue 12:00, still running at as_of: breached, found by the
#   report (no breach recorded).
# T5, Premium: resolution due Tue 12:00 but paused since Tue 10:00 (waiting): not overdue.
def clock(
    metric: str, cycle: int, start: datetime, due: datetime, **fields: object
) -> dict[str, Any]:
    return {
        "metric": metric,
        "cycle": cycle,
        "target": due - start,
        "started_at": start,
        "due_at": due,
        "pausable": True,
        **fields,
    }


TARGETS_SCENARIO = [
    outcome(
        "T1", "standard", "sev3", "initech", at(5, 15), at(5, 19), at(5, 16), "resolved",
        customer_wait=timedelta(hours=65),
        targets=[
            clock("first_response", 1, at(5, 15), at(5, 19), met_at=at(5, 16), pausable=False),
            clock(
                "resolution", 1, at(5, 15), at(9, 19), met_at=at(9, 17),
                paused=timedelta(hours=65), paused_business=timedelta(hours=3),
            ),
        ],
    ),
    outcome(
        "T2", "premium", "sev2", "acme", at(9, 10), at(9, 11), at(9, 10, 30), "acknowledged",
        targets=[
            clock("next_reply", 1, at(9, 11), at(9, 15), met_at=at(9, 13)),
            clock("next_reply", 2, at(9, 16), at(9, 20), met_at=at(9, 21), breached=True,
                  breached_at=at(9, 20)),
            clock("resolution", 1, at(9, 10), at(12, 10)),
        ],
    ),
    outcome(
        "T3", "premium", "sev2", "acme", at(9, 8), at(9, 9), at(9, 8, 30), "resolved",
        customer_wait=2 * H,
        targets=[
            clock("resolution", 1, at(9, 8), at(9, 20), met_at=at(9, 22), breached=True,
                  breached_at=at(9, 20), paused=2 * H, paused_business=2 * H),
        ],
    ),
    outcome(
        "T4", "premium", "sev2", "acme", at(9, 12), at(9, 13), at(9, 12, 30), "acknowledged",
        targets=[clock("resolution", 1, at(9, 12), at(10, 12))],
    ),
    outcome(
        "T5", "premium", "sev2", "acme", at(9, 12), at(9, 13), at(9, 12, 30), "acknowledged",
        targets=[clock("resolution", 1, at(9, 12), at(10, 12), paused_since=at(10, 10))],
    ),
]  # fmt: skip
# Hand-computed: (clocks, met, breached, pending, attainment, business p50, p90, wall p50, p90)
#   next reply, premium (= all tiers): 2, 1 (cycle 1), 1 (cycle 2), 0 -> 50 %; [2 h, 5 h].
#   resolution, premium: T2 pending, T3 breached, T4 breached, T5 pending -> 0 %; [12 h].
#   resolution, standard: T1 met -> 100 %; business [19 h], wall [33 h].
#   resolution, all tiers: 5 clocks, met 1, breached 2, pending 2 -> 33.33 %;
#     business [12, 19]: p50 12, p90 19; wall [12, 33]: p50 12, p90 33.
#   waiting: premium T3 (2 h, 2 h business); standard T1 (65 h, 3 h business);
#     all: 2 tickets, 67 h wall, 5 h business, p50 wall [2, 65] -> 2 h, business [2, 3] -> 2 h.
EXPECTED_TARGETS = {
    ("next_reply", "premium"): (2, 1, 1, 0, 50.0, 2 * H, 5 * H, 2 * H, 5 * H),
    ("next_reply", None): (2, 1, 1, 0, 50.0, 2 * H, 5 * H, 2 * H, 5 * H),
    ("resolution", "premium"): (4, 0, 2, 2, 0.0, 12 * H, 12 * H, 12 * H, 12 * H),
    ("resolution", "standard"): (1, 1, 0, 0, 100.0, 19 * H, 19 * H, 33 * H, 33 * H),
    ("resolution", None): (5, 1, 2, 2, 100 / 3, 12 * H, 19 * H, 12 * H, 33 * H),
}


def targets_report() -> Report:
    return build_report(TARGETS_SCENARIO, BUSINESS_AS_OF, policy_for_version=business_policies)


def test_next_reply_and_resolution_attainment_and_times_leave_the_paused_time_out() -> None:
    report = targets_report()
    assert {
        (t.metric.value, t.tier.value if t.tier else None): (
            t.clocks, t.met, t.breached, t.pending, t.attainment,
            t.business_p50, t.business_p90, t.p50, t.p90,
        )
        for t in report.targets
    } == EXPECTED_TARGETS  # fmt: skip
    # In the report's order: per target, each tier then the total.
    assert [(t.metric.value, t.tier) for t in report.targets] == [
        ("next_reply", Tier.PREMIUM),
        ("next_reply", None),
        ("resolution", Tier.PREMIUM),
        ("resolution", Tier.STANDARD),
        ("resolution", None),
    ]
    # The first response keeps its own figures (the targets' first_response is not counted).
    standard = report.subtotal(Tier.STANDARD)
    assert standard is not None and (standard.met, standard.breached) == (1, 0)
    assert [
        (w.tier, w.tickets, w.total, w.business_total, w.p50, w.business_p50) for w in report.waits
    ] == [
        (Tier.PREMIUM, 1, 2 * H, 2 * H, 2 * H, 2 * H),
        (Tier.STANDARD, 1, 65 * H, 3 * H, 65 * H, 3 * H),
        (None, 2, 67 * H, 5 * H, 2 * H, 2 * H),
    ]


def test_next_reply_and_resolution_in_json_table_and_html() -> None:
    report = targets_report()
    record = report_record(report)
    assert [
        (t["scope"], t["metric"], t["tier"], t["clocks"], t["attainment_pct"])
        for t in record["targets"]
    ] == [
        ("tier", "next_reply", "premium", 2, 50.0),
        ("total", "next_reply", None, 2, 50.0),
        ("tier", "resolution", "premium", 4, 0.0),
        ("tier", "resolution", "standard", 1, 100.0),
        ("total", "resolution", None, 5, 33.33),
    ]
    standard = record["targets"][3]
    assert (standard["p50_business_seconds"], standard["p50_seconds"]) == (19 * HOUR, 33 * HOUR)
    assert record["customer_wait"][-1] == {
        "scope": "total",
        "tier": None,
        "tickets": 2,
        "total_seconds": 67 * HOUR,
        "total_business_seconds": 5 * HOUR,
        "p50_seconds": 2 * HOUR,
        "p50_business_seconds": 2 * HOUR,
    }
    text = table_text(report)
    assert "Next reply and resolution (time to meet: the time paused left out)" in text
    lines = [line.split() for line in text.splitlines()]
    # target, tier, clocks, met, breached, pending, attainment, p50 and p90 business | wall.
    assert "resolution standard 1 1 0 0 100.0 % 19h 1d 9h 19h 1d 9h".split() in lines
    assert "next reply all tiers 2 1 1 0 50.0 % 2h 2h 5h 5h".split() in lines
    assert "standard 1 3h 2d 17h 3h 2d 17h".split() in lines  # waited: business | wall
    html = render_html(report)
    assert html == render_html(report), "same report, same bytes (charts included)"
    charts = re.findall(r'<figure id="([a-z-]+)">\s*<svg', html)
    assert charts == ["attainment-chart", "acknowledge-chart", "targets-chart"]
    ids = re.findall(r'\bid="([^"]+)"', html)
    assert len(ids) == len(set(ids))
    assert '<td class="text">resolution</td><td class="text">standard</td>' in html
    assert "<td>33.3 %</td>" in html and 'id="waits"' in html
    assert "waited on the customer" in html  # the chart's third panel


def test_a_report_without_more_targets_adds_no_data_rows_only() -> None:
    report = scenario_report()
    assert [(t.metric.value, t.tier, t.clocks, t.attainment) for t in report.targets] == [
        ("next_reply", None, 0, None),
        ("resolution", None, 0, None),
    ]
    assert not report.has_targets and not report.waited
    # JSON and CSV keep their shape (test_scenario_figures_per_group_tier_and_total_as_json).
    assert "targets" not in report_record(report)
    assert "customer_wait" not in report_record(report)
    lines = [line.split() for line in table_text(report).splitlines()]
    assert "next reply all tiers 0 0 0 0 no data - - - -".split() in lines
    assert "resolution all tiers 0 0 0 0 no data - - - -".split() in lines
    assert "Waiting on the customer: no data (no ticket waited).".split() in lines
    html = render_html(report)
    assert html.count("<svg") == 2 and 'id="targets-chart"' not in html
    assert "<td>no data</td>" in html
    assert "No data: no ticket in this report has a next-reply or resolution target." in html
    assert "No data: no ticket waited on the customer." in html


# --- waiting on the customer, on the ticket's calendar --------------------------------------
# Standard (us-business-hours: weekdays 08:00-18:00 CST = 14:00-24:00 UTC), judged at
# BUSINESS_AS_OF (Tue 10 Nov 09:30 CST = 15:30 UTC):
# W1, no pausable clock: waited Fri 6 Nov 17:00 CST -> Mon 9 Nov 10:00 CST: 65 h wall,
#   Fri 17-18 + Mon 08-10 = 3 business hours (the row alone said 0).
# W2, waited Mon 9 Nov 10:00 CST -> resolved 13:00 CST while waiting (no resume on record;
#   the resolution clock's paused_business was never added): 3 h wall, 3 h business.
# W3, two waits: Mon 9 Nov 16:00-17:00 CST (resumed: 1 h), then since Mon 17:30 CST and
#   still waiting at as_of: Mon 17:30-18:00 + Tue 08:00-09:30 = 2 h business; 16 h wall.
# Standard: 3 tickets, wall 65 + 3 + 17 = 85 h, business 3 + 3 + 3 = 9 h;
#   p50 (rank 2 of 3): wall [3, 17, 65] -> 17 h, business [3, 3, 3] -> 3 h.
def waited(kind: str, instant: datetime, n: int) -> SlaEvent:
    return SlaEvent(
        key=f"ticket-W/{kind}-{n}", ticket_id="W", kind=kind, at=instant, source="workflow"
    )


WAIT_SCENARIO = [
    outcome("W1", "standard", "sev3", "initech", at(6, 20), at(9, 14), at(6, 21), "acknowledged",
            customer_wait=65 * H),
    outcome("W2", "standard", "sev3", "initech", at(9, 15), at(9, 19), at(9, 15, 30), "resolved",
            resolved_at=at(9, 19), customer_wait=3 * H,
            targets=[clock("resolution", 1, at(9, 15), at(10, 15), met_at=at(9, 19),
                           paused=3 * H)]),
    outcome("W3", "standard", "sev3", "initech", at(9, 21), at(10, 15), at(9, 21, 30),
            "acknowledged", customer_wait=H,
            targets=[clock("resolution", 1, at(9, 21), at(11, 21), paused=H,
                           paused_business=H, paused_since=at(9, 23, 30))]),
]  # fmt: skip
WAIT_EVENTS = {
    "W1": [waited("awaiting-customer-1", at(6, 23), 1), waited("customer_resumed", at(9, 16), 1)],
    "W2": [waited("awaiting-customer-1", at(9, 16), 1), waited("resolved", at(9, 19), 1)],
    "W3": [
        waited("customer_resumed", at(9, 23), 1),  # any order: sorted by instant
        waited("awaiting-customer-1", at(9, 22), 1),
        waited("awaiting-customer-2", at(9, 23, 30), 2),
    ],
}


RESOLUTION, STANDARD = Metric.RESOLUTION, Tier.STANDARD


def test_waiting_on_the_customer_is_measured_from_its_waits_on_the_ticket_calendar() -> None:
    spans = {ticket_id: wait_spans(events) for ticket_id, events in WAIT_EVENTS.items()}
    assert spans == {
        "W1": [(at(6, 23), at(9, 16))],
        "W2": [(at(9, 16), None)],
        "W3": [(at(9, 22), at(9, 23)), (at(9, 23, 30), None)],
    }
    report = build_report(
        WAIT_SCENARIO, BUSINESS_AS_OF, policy_for_version=business_policies, customer_waits=spans
    )
    assert [
        (w.tier, w.tickets, w.total, w.business_total, w.p50, w.business_p50) for w in report.waits
    ] == [
        (Tier.STANDARD, 3, 85 * H, 9 * H, 17 * H, 3 * H),
        (None, 3, 85 * H, 9 * H, 17 * H, 3 * H),
    ]
    # W2's resolution, met while waiting: Mon 09:00-13:00 CST less the wait from 10:00, so
    # 1 h on both clocks (the row's paused_business never got the last pause: the workflow
    # cannot count business time, so the waits measure it).
    [resolution] = [t for t in report.targets if (t.metric, t.tier) == (RESOLUTION, STANDARD)]
    assert (resolution.met, resolution.pending, resolution.business_p50, resolution.p50) == (
        1,
        1,
        H,
        H,
    )
    # Without the events, the rows alone: W1 lost no pausable clock's time, W2's wait
    # ended at the resolution, W3's open wait is not counted.
    rows_only = build_report(WAIT_SCENARIO, BUSINESS_AS_OF, policy_for_version=business_policies)
    assert [(w.tickets, w.total, w.business_total) for w in rows_only.waits] == [
        (3, 69 * H, H),
        (3, 69 * H, H),
    ]
    [resolution] = [t for t in rows_only.targets if (t.metric, t.tier) == (RESOLUTION, STANDARD)]
    assert (resolution.business_p50, resolution.p50) == (4 * H, H)

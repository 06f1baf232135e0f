"""Tests of the support policy file: the shipped default, per-ticket plans with exact
instants, and error reports that name both the file and the field."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import holidays
import pytest

from contract.models import ClockRequest, Metric, Severity, StepKind, TicketInput, TicketPlan, Tier
from harness.policy import Edit, with_targets, write_policy
from harness.processes import ROOT
from policy.calendar import CountryHolidays
from policy.load import default_policy_path, load_policy, parse_policy, policy_path
from policy.plan import resolve_plan
from policy.schema import (
    POLICY_FILE_ENV,
    REPEAT_WINDOW,
    CustomerSpec,
    Policy,
    PolicyError,
    _holiday_countries,
)

H = timedelta(hours=1)
MIN = timedelta(minutes=1)
HOUR = timedelta(hours=1)
COMMERCIAL = (Tier.STANDARD, Tier.PREMIUM, Tier.MISSION_CRITICAL)
# Thanksgiving 2026, 09:30 UTC: a holiday on the business calendar, irrelevant to 24x7 tiers.
T0 = datetime(2026, 11, 26, 9, 30, tzinfo=UTC)


@pytest.fixture(scope="module")
def policy() -> Policy:
    return load_policy(default_policy_path())


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def ticket(tier: Tier, customer: str = "acme", **extra: Any) -> TicketInput:
    return TicketInput(ticket_id="T-1", customer_id=customer, tier=tier, **extra)


def names(plan: TicketPlan) -> list[str]:
    return [step.name for step in plan.steps]


def step(plan: TicketPlan, name: str):
    return next(s for s in plan.steps if s.name == name)


def recipients(plan: TicketPlan, name: str) -> list[str]:
    return [r.name for r in step(plan, name).recipients]


def policy_error(path: Path, *, one_line_per_problem: bool = True) -> str:
    """The PolicyError message for the file; each line starts with "<file>: "."""
    with pytest.raises(PolicyError) as err:
        load_policy(path)
    message = str(err.value)
    lines = message.splitlines() if one_line_per_problem else message.splitlines()[:1]
    for line in lines:
        assert line.startswith(f"{path}: "), line
    return message


# --- the shipped default encodes the seed ----------------------------------------------------


def test_default_policy_loads_and_is_the_configured_file_when_no_override(monkeypatch):
    monkeypatch.delenv(POLICY_FILE_ENV, raising=False)
    assert policy_path() == default_policy_path()
    loaded = load_policy()
    assert loaded.version == "2026.12.1"
    assert loaded.default_severity is Severity.SEV3
    assert set(loaded.tiers) == set(Tier)


def test_default_policy_file_reloads_from_cache_as_the_same_object(policy):
    assert load_policy(default_policy_path()) is policy


def test_standard_is_4h_on_the_us_business_hours_calendar(policy):
    tier = policy.tiers[Tier.STANDARD]
    assert tier.commercial_sla
    assert tier.response_target == 4 * H
    assert tier.calendar == "us-business-hours"
    spec = policy.calendars["us-business-hours"]
    assert not spec.always_open
    assert spec.time_zone == "America/Chicago"
    calendar = spec.build()
    assert not calendar.always_open
    assert calendar.hours == {day: ((time(8), time(18)),) for day in range(5)}
    # US federal holidays (observed) for any year, and the vendor's closures every year.
    assert calendar.country_holidays == CountryHolidays("US", None, True, ("public",))
    assert [(c.name, c.date_in(2026)) for c in calendar.yearly_closures] == [
        ("Day after Thanksgiving", date(2026, 11, 27)),
        ("Christmas Eve", date(2026, 12, 24)),
    ]
    for severity in Severity:
        assert tier.rule_for(severity)[0] == 4 * H


def test_premium_is_1h_on_a_24x7_calendar(policy):
    tier = policy.tiers[Tier.PREMIUM]
    assert tier.commercial_sla
    assert tier.response_target == H
    assert tier.calendar is not None
    assert policy.calendars[tier.calendar].always_open
    assert policy.calendars[tier.calendar].build().always_open
    for severity in Severity:
        assert tier.rule_for(severity)[0] == H


def test_mission_critical_is_15min_for_sev1_and_no_worse_than_premium_otherwise(policy):
    tier = policy.tiers[Tier.MISSION_CRITICAL]
    premium = policy.tiers[Tier.PREMIUM]
    assert tier.commercial_sla
    assert tier.calendar is not None
    assert policy.calendars[tier.calendar].always_open
    assert tier.rule_for(Severity.SEV1)[0] == 15 * MIN
    for severity in (Severity.SEV2, Severity.SEV3, Severity.SEV4):
        target = tier.rule_for(severity)[0]
        assert target == H
        assert target <= premium.rule_for(severity)[0]


def test_community_has_no_response_target_and_no_commercial_sla(policy):
    tier = policy.tiers[Tier.COMMUNITY]
    assert tier.commercial_sla is False
    assert tier.response_target is None
    assert tier.calendar is None
    assert tier.idle_close_after == timedelta(days=14)
    assert [s.kind for s in tier.ladder] == [StepKind.INTAKE]


@pytest.mark.parametrize("tier", COMMERCIAL, ids=lambda t: t.value)
@pytest.mark.parametrize("severity", list(Severity), ids=lambda s: s.value)
def test_commercial_ladders_warn_before_breach_at_the_target_then_repeat(policy, tier, severity):
    target, ladder = policy.tiers[tier].rule_for(severity)
    assert target is not None
    kinds = [s.kind for s in ladder]
    assert kinds.count(StepKind.BREACH) == 1
    breach = next(s for s in ladder if s.kind is StepKind.BREACH)
    assert breach.at.share == 1.0
    assert breach.at.amount(target) == target
    warnings = [s for s in ladder if s.kind is StepKind.WARNING]
    assert warnings
    assert all(timedelta(0) < w.at.amount(target) < target for w in warnings)
    repeats = [s for s in ladder if s.kind is StepKind.REPEAT]
    assert len(repeats) == 1
    assert repeats[0].repeat_every is not None and repeats[0].repeat_every > timedelta(0)
    assert repeats[0].at.amount(target) >= target
    assert ladder[0].kind is StepKind.INTAKE and ladder[0].at.offset == timedelta(0)


def test_out_of_scope_categories_cover_engineering_consulting_and_customer_dependencies(
    policy,
):
    assert {"custom_engineering", "consulting", "customer_dependency"} <= set(
        policy.out_of_scope_categories
    )
    assert all(reason for reason in policy.out_of_scope_categories.values())


def test_every_target_and_contact_in_the_default_has_a_channel(policy):
    assert all(target.channels for target in policy.targets.values())
    assert policy.customers["example-bank"].tier is Tier.MISSION_CRITICAL
    (contact,) = policy.customers["example-bank"].contacts
    assert contact.name == "example-bank-noc"
    assert contact.at_steps == ["intake", "breach"]


# --- resolve_plan: exact instants --------------------------------------------------------------


def test_premium_sev2_plan_has_exact_wall_clock_deadlines_and_recipients(policy):
    plan = resolve_plan(policy, ticket(Tier.PREMIUM), Severity.SEV2, T0)
    assert plan.policy_version == "2026.12.1"
    assert plan.commercial_sla
    assert plan.calendar == "always"
    assert plan.time_zone == "UTC"
    assert plan.response_target == H
    assert plan.response_due_at == utc(2026, 11, 26, 10, 30)
    assert names(plan)[:5] == ["intake", "warning", "final-warning", "breach", "repeat-1"]
    expected = {
        "intake": (utc(2026, 11, 26, 9, 30), ["support-queue", "duty-engineer"]),
        "warning": (utc(2026, 11, 26, 10, 0), ["duty-engineer"]),
        "final-warning": (utc(2026, 11, 26, 10, 15), ["duty-engineer", "support-lead"]),
        "breach": (utc(2026, 11, 26, 10, 30), ["support-lead", "duty-manager"]),
        "repeat-1": (utc(2026, 11, 26, 11, 0), ["duty-manager"]),
        "repeat-2": (utc(2026, 11, 26, 11, 30), ["duty-manager"]),
        "repeat-24": (utc(2026, 11, 26, 22, 30), ["duty-manager"]),
    }
    for name, (due_at, who) in expected.items():
        assert step(plan, name).due_at == due_at, name
        assert recipients(plan, name) == who, name
    assert len(plan.steps) == 4 + REPEAT_WINDOW
    assert [s.due_at for s in plan.steps] == sorted(s.due_at for s in plan.steps)
    assert plan.more_steps
    assert plan.out_of_scope_reason is None
    assert all(c.type == "log" for s in plan.steps for r in s.recipients for c in r.channels)


def test_plan_accepts_an_aware_non_utc_open_time_and_returns_utc(policy):
    opened = T0.astimezone(ZoneInfo("Asia/Kolkata"))  # 15:00 IST
    assert opened.utcoffset() == timedelta(hours=5, minutes=30)
    plan = resolve_plan(policy, ticket(Tier.PREMIUM), Severity.SEV2, opened)
    assert plan.response_due_at == utc(2026, 11, 26, 10, 30)
    assert plan.response_due_at.utcoffset() == timedelta(0)


def test_mission_critical_sev1_is_due_in_15min_on_a_5min_repeat(policy):
    plan = resolve_plan(policy, ticket(Tier.MISSION_CRITICAL), Severity.SEV1, T0)
    assert plan.response_target == 15 * MIN
    assert plan.response_due_at == utc(2026, 11, 26, 9, 45)
    assert step(plan, "intake").due_at == T0
    assert step(plan, "warning").due_at == utc(2026, 11, 26, 9, 40)
    assert step(plan, "breach").due_at == utc(2026, 11, 26, 9, 45)
    assert step(plan, "repeat-1").due_at == utc(2026, 11, 26, 9, 50)
    assert step(plan, "repeat-24").due_at == utc(2026, 11, 26, 11, 45)
    assert recipients(plan, "intake") == ["duty-engineer", "duty-manager", "incident-commander"]
    assert recipients(plan, "breach") == ["duty-manager", "incident-commander"]


def test_mission_critical_sev2_uses_the_tier_1h_ladder(policy):
    plan = resolve_plan(policy, ticket(Tier.MISSION_CRITICAL), Severity.SEV2, T0)
    assert plan.response_due_at == utc(2026, 11, 26, 10, 30)
    assert step(plan, "warning").due_at == utc(2026, 11, 26, 10, 0)
    assert step(plan, "repeat-1").due_at == utc(2026, 11, 26, 10, 45)


def test_customer_contract_adds_its_contact_to_intake_and_breach_only(policy):
    plan = resolve_plan(
        policy, ticket(Tier.MISSION_CRITICAL, customer="example-bank"), Severity.SEV1, T0
    )
    assert plan.response_due_at == utc(2026, 11, 26, 9, 45)
    assert recipients(plan, "intake") == [
        "duty-engineer",
        "duty-manager",
        "incident-commander",
        "example-bank-noc",
    ]
    assert recipients(plan, "breach") == ["duty-manager", "incident-commander", "example-bank-noc"]
    assert recipients(plan, "warning") == ["duty-engineer", "support-lead", "duty-manager"]
    for s in plan.steps:
        if s.name not in ("intake", "breach"):
            assert "example-bank-noc" not in [r.name for r in s.recipients], s.name


def contract_contact_at(*at_steps: str) -> Edit:
    """Mission Critical with next-reply and resolution targets (harness.TARGET_LADDER:
    warning to duty-engineer, breach to support-lead, repeats to duty-manager), the bank's
    contact told at ``at_steps``."""

    def edit(data: dict[str, Any]) -> None:
        with_targets("mission_critical", next_reply="PT1H", resolution="PT4H")(data)
        data["customers"]["example-bank"]["contacts"][0]["at_steps"] = list(at_steps)

    return edit


def test_a_contract_contact_is_told_at_the_target_steps_it_names_every_cycle_or_one(tmp_path):
    custom = load_policy(
        write_policy(
            tmp_path,
            contract_contact_at(
                "intake", "next_reply-breach", "next_reply-1-breach", "next_reply-1-warning",
                "resolution-repeat",
            ),
        )
    )  # fmt: skip
    bank = ticket(Tier.MISSION_CRITICAL, customer="example-bank")
    plan = resolve_plan(custom, bank, Severity.SEV1, T0)
    assert "example-bank-noc" in recipients(plan, "intake")
    assert "example-bank-noc" not in recipients(plan, "breach"), "breach: the response's only"
    [resolution] = plan.clocks
    told = {s.name: [r.name for r in s.recipients] for s in resolution.steps}
    assert told["resolution-1-warning"] == ["duty-engineer"]
    assert told["resolution-1-breach"] == ["support-lead"]
    assert told["resolution-1-repeat-1"] == ["duty-manager", "example-bank-noc"]
    assert all("example-bank-noc" in told[f"resolution-1-repeat-{n}"] for n in range(1, 25))
    replies = [
        ClockRequest(metric=Metric.NEXT_REPLY, cycle=n, started_at=T0 + n * H) for n in (1, 2)
    ]
    first, second = resolve_plan(custom, bank, Severity.SEV1, T0, clocks=replies).clocks
    told = {s.name: [r.name for r in s.recipients] for c in (first, second) for s in c.steps}
    # Named twice (every cycle and cycle 1), told once.
    assert told["next_reply-1-breach"] == ["support-lead", "example-bank-noc"]
    assert told["next_reply-2-breach"] == ["support-lead", "example-bank-noc"]
    assert told["next_reply-1-warning"] == ["duty-engineer", "example-bank-noc"]
    assert told["next_reply-2-warning"] == ["duty-engineer"], "cycle 1 only"
    assert "example-bank-noc" not in told["next_reply-1-repeat-1"]


def no_targets(data: dict[str, Any]) -> None:
    for metric in ("next_reply", "resolution"):
        del data["tiers"]["mission_critical"][metric]


@pytest.mark.parametrize(
    ("at_step", "edits"),
    [
        ("resolution-escalate", []),  # no such step in the clock's ladder
        ("resolution-0-breach", []),  # cycles count from 1
        ("next-reply-breach", []),  # the metric as the policy spells it: next_reply
        ("resolution-breach", [no_targets]),  # the tier has no resolution target
    ],
)
def test_a_contact_naming_no_step_of_the_tier_is_refused(tmp_path, at_step, edits):
    message = policy_error(write_policy(tmp_path, contract_contact_at(at_step), *edits))
    assert (
        f"customers.example-bank.contacts.0.at_steps: {at_step!r} is not a step of the"
        " mission_critical ladders" in message
    )


def test_standard_friday_ticket_counts_business_hours_across_the_weekend(policy):
    # Fri 2026-10-30 16:00 CDT; DST ends Sunday; due Mon 2026-11-02 10:00 CST.
    opened = utc(2026, 10, 30, 21)
    plan = resolve_plan(policy, ticket(Tier.STANDARD), Severity.SEV3, opened)
    assert plan.calendar == "us-business-hours"
    assert plan.time_zone == "America/Chicago"
    assert plan.response_target == 4 * H
    assert plan.response_due_at == utc(2026, 11, 2, 16)
    expected = {
        "intake": utc(2026, 10, 30, 21),  # Fri 16:00 CDT
        "warning": utc(2026, 11, 2, 15),  # Mon 09:00 CST (3 business hours)
        "breach": utc(2026, 11, 2, 16),  # Mon 10:00 CST
        "repeat-1": utc(2026, 11, 2, 17),  # Mon 11:00 CST
        "repeat-8": utc(2026, 11, 3, 0),  # Mon 18:00 CST, the close
        "repeat-9": utc(2026, 11, 3, 15),  # Tue 09:00 CST
        "repeat-24": utc(2026, 11, 4, 20),  # Wed 14:00 CST
    }
    for name, due_at in expected.items():
        assert step(plan, name).due_at == due_at, name
    assert recipients(plan, "intake") == ["support-queue"]
    assert recipients(plan, "warning") == ["duty-engineer"]
    assert recipients(plan, "breach") == ["duty-engineer", "support-lead"]
    assert recipients(plan, "repeat-1") == ["support-lead"]


def test_standard_ticket_on_a_holiday_is_due_the_next_business_day(policy):
    # Thanksgiving Thu 2026-11-26 and Fri 11-27 are holidays -> Mon 11-30 12:00 CST.
    plan = resolve_plan(policy, ticket(Tier.STANDARD), Severity.SEV2, T0)
    assert plan.response_due_at == utc(2026, 11, 30, 18)
    assert step(plan, "intake").due_at == T0


def test_standard_ticket_opened_friday_before_christmas_2028_is_due_tuesday_11_00(policy):
    # Fri 2028-12-22 17:00 CST (23:00 UTC): 1 business hour on Friday, Christmas on Monday,
    # 3 more from Tuesday 08:00 -> Tue 2028-12-26 11:00 CST (17:00 UTC). The dates the
    # default used to list ran out in 2027 and put this deadline on Christmas Day.
    plan = resolve_plan(policy, ticket(Tier.STANDARD), Severity.SEV3, utc(2028, 12, 22, 23))
    assert plan.response_due_at == utc(2028, 12, 26, 17)
    assert step(plan, "warning").due_at == utc(2028, 12, 26, 16)  # 3 business hours


def test_the_default_closes_every_date_its_old_list_closed_and_the_federal_holidays(policy):
    calendar = policy.calendars["us-business-hours"].build()
    old_list = [
        "2026-01-01", "2026-05-25", "2026-07-03", "2026-09-07", "2026-11-26", "2026-11-27",
        "2026-12-24", "2026-12-25", "2027-01-01", "2027-05-31", "2027-07-05", "2027-09-06",
        "2027-11-25", "2027-11-26", "2027-12-24", "2027-12-31",
    ]  # fmt: skip
    assert all(calendar.is_holiday(date.fromisoformat(day)) for day in old_list)
    # Added by the federal list: MLK Day, Washington's Birthday, Juneteenth, Columbus Day,
    # Veterans Day.
    for day in ("2026-01-19", "2026-02-16", "2026-06-19", "2026-10-12", "2026-11-11"):
        assert calendar.is_holiday(date.fromisoformat(day)), day
    assert not calendar.is_holiday(date(2026, 12, 23))


def test_holidays_given_as_a_list_of_dates_still_load_and_close_those_days(tmp_path):
    def old_form(data: dict[str, Any]) -> None:
        calendar = data["calendars"]["us-business-hours"]
        calendar.pop("closures")
        calendar["holidays"] = ["2026-09-07", "2026-12-25"]

    custom = load_policy(write_policy(tmp_path, old_form))
    calendar = custom.calendars["us-business-hours"].build()
    assert calendar.holidays == frozenset({date(2026, 9, 7), date(2026, 12, 25)})
    assert calendar.country_holidays is None and calendar.yearly_closures == ()
    # Fri 2026-09-04 16:00 CDT, Labor Day Monday -> Tue 10:00 CDT.
    plan = resolve_plan(custom, ticket(Tier.STANDARD), Severity.SEV3, utc(2026, 9, 4, 21))
    assert plan.response_due_at == utc(2026, 9, 8, 15)
    # Veterans Day is not in that list: open.
    assert not calendar.is_holiday(date(2026, 11, 11))


def test_one_off_closures_are_plain_dates_beside_the_yearly_ones(tmp_path):
    def office_move(data: dict[str, Any]) -> None:
        data["calendars"]["us-business-hours"]["closures"] += [
            "2027-06-11",
            {"name": "Office move", "date": "2027-06-14"},
        ]

    custom = load_policy(write_policy(tmp_path, office_move))
    # Thu 2027-06-10 16:00 CDT: 2 h on Thursday; Fri 11, the weekend, Mon 14 closed.
    plan = resolve_plan(custom, ticket(Tier.STANDARD), Severity.SEV3, utc(2027, 6, 10, 21))
    assert plan.response_due_at == utc(2027, 6, 15, 15)  # Tue 10:00 CDT


def test_community_plan_has_intake_only_and_no_deadline(policy):
    plan = resolve_plan(policy, ticket(Tier.COMMUNITY), Severity.SEV1, T0)
    assert not plan.commercial_sla
    assert plan.response_target is None
    assert plan.response_due_at is None
    assert names(plan) == ["intake"]
    assert step(plan, "intake").due_at == T0
    assert recipients(plan, "intake") == ["community-queue"]
    assert not plan.more_steps
    assert plan.idle_close_after == timedelta(days=14)


def test_out_of_scope_category_is_explained_in_the_plan(policy):
    plan = resolve_plan(policy, ticket(Tier.PREMIUM, category="consulting"), Severity.SEV3, T0)
    assert plan.out_of_scope_reason == (
        "category 'consulting': out-of-scope consulting needs an advisory engagement"
    )
    # Out of scope at intake: no SLA clock, so no deadline (DESIGN.md).
    assert plan.response_due_at is None


def test_statement_of_work_terms_include_the_reporter_only_with_an_email(policy):
    without = resolve_plan(policy, ticket(Tier.PREMIUM), Severity.SEV3, T0)
    assert [r.name for r in without.sow.recipients] == ["advisory-services", "account-team"]
    assert without.sow.remind_after == timedelta(days=2)
    assert without.sow.expire_after == timedelta(days=14)
    with_email = resolve_plan(
        policy, ticket(Tier.PREMIUM, reporter_email="ops@bank.example"), Severity.SEV3, T0
    )
    assert [r.name for r in with_email.sow.recipients] == [
        "advisory-services",
        "account-team",
        "reporter",
    ]


def repeats(plan: TicketPlan) -> list[str]:
    return [s.name for s in plan.steps if s.kind is StepKind.REPEAT]


def test_repeat_steps_expand_window_by_window(policy):
    first = resolve_plan(policy, ticket(Tier.PREMIUM), Severity.SEV2, T0)
    last_sent = step(first, "repeat-24").due_at
    second = resolve_plan(policy, ticket(Tier.PREMIUM), Severity.SEV2, T0, repeats_after=last_sent)
    assert first.more_steps and second.more_steps
    # The next window holds the repeats due after the last one sent, numbered on.
    assert repeats(second) == [f"repeat-{n}" for n in range(25, 49)]
    assert step(second, "repeat-25").due_at == utc(2026, 11, 26, 23, 0)
    assert step(second, "repeat-48").due_at == utc(2026, 11, 27, 10, 30)
    assert last_sent + 30 * MIN == step(second, "repeat-25").due_at
    assert recipients(second, "repeat-25") == ["duty-manager"]
    # The deadline itself does not move with the window.
    assert second.response_due_at == first.response_due_at


def test_repeats_after_an_instant_of_another_cadence_start_strictly_after_it(policy):
    # A Mission Critical sev1 ticket sent its 5-minute repeats up to 2 h; lowered to sev2
    # (repeats every 15 min after the 1 h breach), the next repeat is the first after 2 h.
    after = T0 + 2 * HOUR
    plan = resolve_plan(
        policy, ticket(Tier.MISSION_CRITICAL), Severity.SEV2, T0, repeats_after=after
    )
    first = plan.steps[[s.kind for s in plan.steps].index(StepKind.REPEAT)]
    assert (first.name, first.due_at) == ("repeat-5", T0 + 2 * HOUR + 15 * MIN)
    assert all(s.due_at > after for s in plan.steps if s.kind is StepKind.REPEAT)


def test_repeat_windows_end_at_max_repeats(tmp_path):
    def cap(data: dict[str, Any]) -> None:
        data["tiers"]["premium"]["ladder"][-1]["max_repeats"] = 30

    capped = load_policy(write_policy(tmp_path, cap))
    first = resolve_plan(capped, ticket(Tier.PREMIUM), Severity.SEV2, T0)
    assert names(first)[-1] == "repeat-24" and first.more_steps
    after = step(first, "repeat-24").due_at
    last = resolve_plan(capped, ticket(Tier.PREMIUM), Severity.SEV2, T0, repeats_after=after)
    assert repeats(last) == [f"repeat-{n}" for n in range(25, 31)]
    assert step(last, "repeat-30").due_at == utc(2026, 11, 27, 1, 30)
    assert not last.more_steps
    after = step(last, "repeat-30").due_at
    beyond = resolve_plan(capped, ticket(Tier.PREMIUM), Severity.SEV2, T0, repeats_after=after)
    assert repeats(beyond) == [] and not beyond.more_steps


def test_customer_calendar_moves_a_standard_deadline_but_not_a_premium_one(tmp_path):
    def add_eu_customer(data: dict[str, Any]) -> None:
        data["calendars"]["eu-business-hours"] = {
            "time_zone": "Europe/Berlin",
            "hours": {day: ["09:00-17:00"] for day in ("mon", "tue", "wed", "thu", "fri")},
        }
        data["customers"]["acme-eu"] = {"tier": "standard", "calendar": "eu-business-hours"}

    custom = load_policy(write_policy(tmp_path, add_eu_customer))
    opened = utc(2026, 3, 10, 14)  # Tue 15:00 CET = 09:00 CDT
    eu = resolve_plan(custom, ticket(Tier.STANDARD, customer="acme-eu"), Severity.SEV3, opened)
    assert eu.calendar == "eu-business-hours"
    assert eu.time_zone == "Europe/Berlin"
    # 2 h on Tuesday until 17:00 CET, 2 h from Wednesday 09:00 -> Wed 11:00 CET.
    assert eu.response_due_at == utc(2026, 3, 11, 10)
    us = resolve_plan(custom, ticket(Tier.STANDARD, customer="acme"), Severity.SEV3, opened)
    assert us.calendar == "us-business-hours"
    assert us.response_due_at == utc(2026, 3, 10, 18)  # 13:00 CDT
    # A 24x7 tier stays 24x7 for that customer (its contract's calendar is for business
    # hours; a ticket of a contracted customer runs at the contract's tier anyway).
    name, premium = custom.calendar_for(Tier.PREMIUM, "acme-eu")
    assert name == "always" and premium.always_open


# --- error reporting: file path and dotted field path ------------------------------------------


def test_unknown_time_zone_names_the_file_and_field(tmp_path):
    def bad_zone(data: dict[str, Any]) -> None:
        data["calendars"]["X"] = {"time_zone": "Mars/Olympus_Mons", "always_open": True}

    path = write_policy(tmp_path, bad_zone)
    message = policy_error(path)
    assert str(path) in message
    assert "calendars.X.time_zone" in message
    assert "Mars/Olympus_Mons" in message


def test_ladder_without_breach_step_names_the_file_and_tier(tmp_path):
    def drop_breach(data: dict[str, Any]) -> None:
        ladder = data["tiers"]["standard"]["ladder"]
        data["tiers"]["standard"]["ladder"] = [s for s in ladder if s["kind"] != "breach"]

    path = write_policy(tmp_path, drop_breach)
    message = policy_error(path)
    assert str(path) in message
    # Reported as "<file>: tiers.standard: ladder: needs a breach step".
    assert "tiers.standard" in message
    assert "ladder: needs a breach step" in message


def test_severity_ladder_without_breach_step_names_the_severity(tmp_path):
    def drop_breach(data: dict[str, Any]) -> None:
        rule = data["tiers"]["mission_critical"]["severities"]["sev1"]
        rule["ladder"] = [s for s in rule["ladder"] if s["kind"] != "breach"]

    path = write_policy(tmp_path, drop_breach)
    message = policy_error(path)
    assert "tiers.mission_critical" in message
    assert "severities.sev1.ladder: needs a breach step" in message


def test_unknown_step_target_names_the_file_and_step_field(tmp_path):
    def bad_target(data: dict[str, Any]) -> None:
        data["tiers"]["premium"]["ladder"][1]["targets"] = ["duty-engineer", "nobody"]

    path = write_policy(tmp_path, bad_target)
    message = policy_error(path)
    assert str(path) in message
    assert "tiers.premium.ladder.1.targets" in message
    assert "unknown target 'nobody'" in message


def test_reversed_hours_interval_names_the_file_and_calendar_hours(tmp_path):
    def reversed_hours(data: dict[str, Any]) -> None:
        data["calendars"]["us-business-hours"]["hours"]["mon"] = ["18:00-08:00"]

    path = write_policy(tmp_path, reversed_hours)
    message = policy_error(path)
    assert str(path) in message
    assert "calendars.us-business-hours.hours" in message
    assert "'18:00-08:00' closes before it opens" in message


@pytest.mark.parametrize(
    ("interval", "problem"),
    [
        ("8:00-18:00", "is not an interval"),
        ("08:00-24:30", "closes after 24:00"),
        ("08:00-25:00", "is not an interval"),
        ("08:00-08:00", "closes before it opens"),
    ],
)
def test_malformed_hours_intervals_are_rejected(tmp_path, interval, problem):
    def bad(data: dict[str, Any]) -> None:
        data["calendars"]["us-business-hours"]["hours"]["tue"] = [interval]

    message = policy_error(write_policy(tmp_path, bad))
    assert "calendars.us-business-hours.hours" in message
    assert problem in message


def test_overlapping_hours_intervals_are_rejected(tmp_path):
    def overlap(data: dict[str, Any]) -> None:
        data["calendars"]["us-business-hours"]["hours"]["wed"] = ["08:00-13:00", "12:00-18:00"]

    message = policy_error(write_policy(tmp_path, overlap))
    assert "calendars.us-business-hours.hours" in message
    assert "overlap" in message


def test_unknown_customer_calendar_names_the_customer(tmp_path):
    def bad_calendar(data: dict[str, Any]) -> None:
        data["customers"]["example-bank"]["calendar"] = "moon-hours"

    message = policy_error(write_policy(tmp_path, bad_calendar))
    assert "customers.example-bank.calendar" in message
    assert "'moon-hours'" in message


def test_every_problem_is_reported_on_its_own_line(tmp_path):
    def two_problems(data: dict[str, Any]) -> None:
        data["calendars"]["us-business-hours"]["time_zone"] = "Nowhere/Town"
        data["statement_of_work"]["remind_after"] = "P30D"

    path = write_policy(tmp_path, two_problems)
    lines = policy_error(path).splitlines()
    assert len(lines) == 2
    assert any("calendars.us-business-hours.time_zone" in line for line in lines)
    assert any("statement_of_work" in line and "remind_after" in line for line in lines)


def test_invalid_yaml_names_the_file(tmp_path):
    path = write_policy(tmp_path, text="version: '2026.1\ncalendars: [\n")
    # The YAML parser's own multi-line explanation follows the first line.
    message = policy_error(path, one_line_per_problem=False)
    assert str(path) in message
    assert "not valid YAML" in message


def test_non_mapping_top_level_names_the_file(tmp_path):
    path = write_policy(tmp_path, text="- just\n- a list\n")
    message = policy_error(path)
    assert "mapping at the top level" in message


def test_missing_file_names_the_file(tmp_path):
    path = tmp_path / "nowhere" / "policy.yaml"
    message = policy_error(path)
    assert str(path) in message
    assert "cannot read the policy file" in message


def test_parse_policy_reports_the_given_source_name():
    with pytest.raises(PolicyError) as err:
        parse_policy("version: '1'\n", "inline")
    assert str(err.value).splitlines() == [
        "inline: calendars: Field required",
        "inline: targets: Field required",
        "inline: tiers: Field required",
        "inline: statement_of_work: Field required",
    ]


# --- which file is loaded ----------------------------------------------------------------------


def test_policy_file_env_override_is_honoured(tmp_path, monkeypatch):
    def rename(data: dict[str, Any]) -> None:
        data["version"] = "override-test"

    path = write_policy(tmp_path, rename)
    monkeypatch.setenv(POLICY_FILE_ENV, str(path))
    assert policy_path() == path
    assert load_policy().version == "override-test"


def test_policy_file_env_override_to_a_broken_file_reports_that_file(tmp_path, monkeypatch):
    path = tmp_path / "missing.yaml"
    monkeypatch.setenv(POLICY_FILE_ENV, str(path))
    with pytest.raises(PolicyError, match=r"missing\.yaml: cannot read"):
        load_policy()


def test_changed_policy_file_is_reloaded(tmp_path):
    path = write_policy(tmp_path)
    first = load_policy(path)
    assert load_policy(path) is first
    write_policy(tmp_path, version="edited")
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert load_policy(path).version == "edited"


# --- regressions: DST gaps, long spans, non-commercial ladders --------------------------


@pytest.mark.parametrize(
    ("holidays", "field", "problem"),
    [
        ({"country": "XX"}, "holidays.country", "unknown country 'XX'"),
        ({"country": "US", "subdivision": "ZZ"}, "holidays.subdivision", "US has no subdivision"),
        (
            {"country": "US", "categories": ["bank"]},
            "holidays.categories",
            "US has no holiday category 'bank'; use government, half_day, public, unofficial",
        ),
        ({"subdivision": "TX"}, "holidays", "subdivision and categories need a country"),
        ({"country": "US", "observe": True}, "holidays.observe", "Extra inputs"),
        (["2026-13-01"], "holidays.dates.0", "valid date"),
    ],
    ids=["country", "subdivision", "category", "no-country", "typo", "old-form-date"],
)
def test_holiday_settings_are_checked_naming_the_file_and_field(tmp_path, holidays, field, problem):
    def bad(data: dict[str, Any]) -> None:
        data["calendars"]["us-business-hours"]["holidays"] = holidays

    path = write_policy(tmp_path, bad)
    message = policy_error(path)
    assert f"{path}: calendars.us-business-hours.{field}: " in message
    assert problem in message


@pytest.mark.parametrize(
    ("closure", "field", "problem"),
    [
        ({"month": 2, "day": 30}, "closures.2", "day: February has at most 29 days, not 30"),
        ({"month": 11}, "closures.2", "a yearly closure needs day, or weekday and nth"),
        ({"day": 24}, "closures.2", "a closure needs a date or a month"),
        ({"month": 11, "weekday": "thursday", "nth": 4}, "closures.2.weekday", "unknown weekday"),
        ({"month": 11, "weekday": "thu", "nth": 6}, "closures.2.nth", "nth must be 1 to 5"),
        ({"month": 12, "day": 24, "days_after": 10}, "closures.2.days_after", "less than or"),
        ({"date": "2026-12-31", "month": 12}, "closures.2", "a closure on a date takes no month"),
        ("2026-12-32", "closures.2.date", "valid date"),
    ],
    ids=["day", "no-day", "no-month", "weekday", "nth", "days-after", "date-and-rule", "date"],
)
def test_closures_are_checked_naming_the_file_and_item(tmp_path, closure, field, problem):
    def bad(data: dict[str, Any]) -> None:
        data["calendars"]["us-business-hours"]["closures"].append(closure)

    path = write_policy(tmp_path, bad)
    message = policy_error(path)
    assert f"{path}: calendars.us-business-hours.{field}: " in message
    assert problem in message


def test_an_always_open_calendar_with_holidays_is_refused(tmp_path):
    def closed_sometimes(data: dict[str, Any]) -> None:
        data["calendars"]["always"]["holidays"] = {"country": "US"}

    path = write_policy(tmp_path, closed_sometimes)
    assert f"{path}: calendars.always: an always_open (24x7) calendar is never closed" in (
        policy_error(path)
    )


# --- the support policy's promises ------------------------------------------------------------


def test_the_shipped_default_and_every_example_policy_keep_the_promises():
    examples = sorted((ROOT / "examples").glob("*.yaml"))
    assert examples
    for path in [default_policy_path(), *examples]:
        policy = load_policy(path)
        assert policy.tiers[Tier.MISSION_CRITICAL].rule_for(Severity.SEV1)[0] == 15 * MIN, path


def test_mission_critical_slower_than_premium_is_refused_naming_file_and_field(tmp_path):
    def slow_sev1(data: dict[str, Any]) -> None:
        data["tiers"]["mission_critical"]["severities"]["sev1"]["response_target"] = "PT2H"

    path = write_policy(tmp_path, slow_sev1)
    assert policy_error(path) == (
        f"{path}: tiers.mission_critical.severities.sev1.response_target: Mission Critical"
        " is slower than Premium for sev1 (2h vs 1h): a higher tier must never be slower than"
        " a lower one"
    )


def test_a_faster_premium_makes_the_mission_critical_targets_slower_per_severity(tmp_path):
    def fast_premium(data: dict[str, Any]) -> None:
        data["tiers"]["premium"]["response_target"] = "PT10M"

    path = write_policy(tmp_path, fast_premium)
    assert policy_error(path).splitlines() == [
        f"{path}: tiers.mission_critical.severities.sev1.response_target: Mission Critical is"
        " slower than Premium for sev1 (15m vs 10m): a higher tier must never be slower than"
        " a lower one",
        f"{path}: tiers.mission_critical.response_target: Mission Critical is slower than"
        " Premium for sev2 (1h vs 10m), sev3 (1h vs 10m), sev4 (1h vs 10m): a higher tier"
        " must never be slower than a lower one",
    ]


def test_premium_slower_than_standard_for_one_severity_is_refused(tmp_path):
    def slow_sev4(data: dict[str, Any]) -> None:
        data["tiers"]["premium"]["severities"] = {"sev4": {"response_target": "PT5H"}}
        data["tiers"]["mission_critical"]["severities"]["sev4"] = {"response_target": "PT1H"}

    path = write_policy(tmp_path, slow_sev4)
    assert policy_error(path) == (
        f"{path}: tiers.premium.severities.sev4.response_target: Premium is slower than"
        " Standard for sev4 (5h vs 4h): a higher tier must never be slower than a lower one"
    )


def test_a_higher_tier_without_a_commercial_sla_is_refused(tmp_path):
    def premium_without_sla(data: dict[str, Any]) -> None:
        premium = data["tiers"]["premium"]
        premium.update(commercial_sla=False, ladder=premium["ladder"][:1])
        del premium["response_target"]

    message = policy_error(write_policy(tmp_path, premium_without_sla))
    assert "tiers.premium.commercial_sla: Premium is slower than Standard for sev1 (no target" in (
        message
    )
    assert "tiers.mission_critical" not in message, "compared with what Premium promises"


def test_equal_targets_are_allowed(tmp_path):
    def equal(data: dict[str, Any]) -> None:
        data["tiers"]["premium"]["response_target"] = "PT4H"
        data["tiers"]["mission_critical"]["response_target"] = "PT4H"

    assert load_policy(write_policy(tmp_path, equal)).tiers[Tier.PREMIUM].response_target == 4 * H


@pytest.mark.parametrize("tier", COMMERCIAL, ids=lambda t: t.value)
def test_an_idle_close_on_a_commercial_tier_is_refused(tmp_path, tier):
    def idle_close(data: dict[str, Any]) -> None:
        data["tiers"][tier.value]["idle_close_after"] = "P14D"

    path = write_policy(tmp_path, idle_close)
    assert policy_error(path) == (
        f"{path}: tiers.{tier.value}.idle_close_after: a tier with a commercial SLA never"
        " closes a ticket for being idle (only a tier without one, like Community, may)"
    )


@pytest.mark.parametrize(
    ("tier", "name"),
    [(Tier.PREMIUM, "Premium"), (Tier.MISSION_CRITICAL, "Mission Critical")],
    ids=["premium", "mission_critical"],
)
def test_a_24x7_tier_on_business_hours_is_refused(tmp_path, tier, name):
    def business_hours(data: dict[str, Any]) -> None:
        data["tiers"][tier.value]["calendar"] = "us-business-hours"

    path = write_policy(tmp_path, business_hours)
    assert policy_error(path) == (
        f"{path}: tiers.{tier.value}.calendar: {name} is 24x7 in the support policy, but"
        " calendar 'us-business-hours' keeps business hours: use an always_open calendar"
    )


def test_a_24x7_contract_on_a_business_calendar_is_refused(tmp_path):
    def bank_hours(data: dict[str, Any]) -> None:
        data["customers"]["example-bank"]["calendar"] = "us-business-hours"

    path = write_policy(tmp_path, bank_hours)
    assert policy_error(path) == (
        f"{path}: customers.example-bank.calendar: a Mission Critical contract is 24x7 in the"
        " support policy, but calendar 'us-business-hours' keeps business hours (a 24x7 tier"
        " keeps its 24x7 clock, so it would never apply): remove it"
    )
    # calendar_for would keep the tier 24x7 anyway (shown on a policy built without
    # validation): the refusal says so instead of leaving a calendar that never applies.
    default = load_policy(default_policy_path())
    contract = CustomerSpec(tier=Tier.MISSION_CRITICAL, calendar="us-business-hours")
    unchecked = Policy.model_construct(**{**dict(default), "customers": {"bank": contract}})
    name, calendar = unchecked.calendar_for(Tier.MISSION_CRITICAL, "bank")
    assert name == "always" and calendar.always_open


def test_a_24x7_contract_on_an_always_open_calendar_loads(tmp_path):
    def bank_clock(data: dict[str, Any]) -> None:
        data["calendars"]["bank-clock"] = {"time_zone": "Europe/London", "always_open": True}
        data["customers"]["example-bank"]["calendar"] = "bank-clock"

    custom = load_policy(write_policy(tmp_path, bank_clock))
    name, calendar = custom.calendar_for(Tier.MISSION_CRITICAL, "example-bank")
    assert name == "always" and calendar.always_open


def test_every_broken_promise_is_reported_on_its_own_line(tmp_path):
    def three(data: dict[str, Any]) -> None:
        data["tiers"]["standard"]["idle_close_after"] = "P7D"
        data["tiers"]["premium"]["calendar"] = "us-business-hours"
        data["customers"]["example-bank"]["calendar"] = "us-business-hours"

    path = write_policy(tmp_path, three)
    fields = [line.split(": ")[1] for line in policy_error(path).splitlines()]
    assert fields == [
        "tiers.standard.idle_close_after",
        "tiers.premium.calendar",
        "customers.example-bank.calendar",
    ]


def test_non_commercial_step_measured_as_a_share_is_rejected_at_load(tmp_path):
    def share_intake(data: dict[str, Any]) -> None:
        data["tiers"]["community"]["ladder"][0]["at"] = {"share": 0.5}

    message = policy_error(write_policy(tmp_path, share_intake))
    assert "tiers.community" in message


# --- channels, fallbacks and delivery ---------------------------------------------------------


@pytest.mark.parametrize(
    ("channel", "problem"),
    [
        (
            {"type": "sms"},
            "unknown channel type 'sms'; use one of log, webhook, chat, pager, email",
        ),
        ({"type": "chat"}, "a chat channel needs url or url_env"),
        ({"type": "chat", "url": "ftp://x"}, "url 'ftp://x' must start with http:// or https://"),
        ({"type": "pager", "url": "https://e.example"}, "a pager channel needs routing_key"),
        ({"type": "email"}, "an email channel needs to (addresses) or to_env"),
        ({"type": "email", "to": ["not-an-address"]}, "to: 'not-an-address' is not an email"),
        ({"type": "email", "to": ["a@b.example"], "url": "https://x"}, "takes no url"),
        ({"type": "log", "routing_key": "k"}, "a log channel takes no routing_key"),
        ({"type": "chat", "url_env": "lower-case"}, "url_env"),
    ],
)
def test_channel_settings_are_checked_per_type(tmp_path, channel, problem):
    def bad(data: dict[str, Any]) -> None:
        data["targets"]["duty-engineer"]["channels"] = [channel]

    message = policy_error(write_policy(tmp_path, bad))
    assert "targets.duty-engineer.channels.0" in message
    assert problem in message


def test_a_fallback_must_be_a_known_target_and_must_not_loop(tmp_path):
    def unknown(data: dict[str, Any]) -> None:
        data["targets"]["duty-engineer"]["fallback"] = "nobody"

    assert "targets.duty-engineer.fallback: unknown target 'nobody'" in policy_error(
        write_policy(tmp_path, unknown)
    )

    def loop(data: dict[str, Any]) -> None:
        data["targets"]["duty-engineer"]["fallback"] = "support-lead"
        data["targets"]["support-lead"]["fallback"] = "duty-engineer"

    assert "the fallbacks loop (support-lead -> duty-engineer)" in policy_error(
        write_policy(tmp_path, loop)
    )


def test_failover_after_is_bounded(tmp_path):
    def fast(data: dict[str, Any]) -> None:
        data["delivery"] = {"failover_after": "PT1S"}

    assert "delivery.failover_after: failover_after must lie between 10 seconds and 1 hour" in (
        policy_error(write_policy(tmp_path, fast))
    )


def test_recipients_carry_their_time_zone_channels_and_fallback_chain(tmp_path):
    def edit(data: dict[str, Any]) -> None:
        data["targets"]["duty-engineer"] = {
            "time_zone": "Europe/Berlin",
            "channels": [
                {"type": "pager", "routing_key_env": "PD_KEY"},
                {"type": "chat", "url_env": "ENG_CHAT"},
            ],
            "fallback": "support-lead",
        }
        data["targets"]["support-lead"]["fallback"] = "duty-manager"
        data["delivery"] = {"failover_after": "PT90S"}

    policy = load_policy(write_policy(tmp_path, edit))
    plan = resolve_plan(policy, ticket(Tier.PREMIUM), Severity.SEV2, T0)
    engineer = step(plan, "warning").recipients[0]
    assert engineer.time_zone == "Europe/Berlin"
    assert [c.type.value for c in engineer.channels] == ["pager", "chat"]
    assert [r.name for r in engineer.chain()] == ["duty-engineer", "support-lead", "duty-manager"]
    assert engineer.pages()
    assert plan.failover_after == timedelta(seconds=90) == plan.sow.failover_after


def test_the_reporter_is_emailed_about_a_statement_of_work_with_a_log_fallback(policy):
    plan = resolve_plan(
        policy, ticket(Tier.PREMIUM, reporter_email="ops@bank.example"), Severity.SEV3, T0
    )
    reporter = plan.sow.recipients[-1]
    assert [(c.type.value, c.to) for c in reporter.channels] == [
        ("email", ["ops@bank.example"]),
        ("log", []),
    ]


def test_the_production_example_policy_is_valid_and_uses_every_channel():
    path = ROOT / "examples" / "policy.production.yaml"
    policy = load_policy(path)
    kinds = {c.type for t in policy.targets.values() for c in t.channels}
    assert kinds == {"log", "chat", "pager", "email", "webhook"}
    bank = policy.customers["example-bank"]
    assert {c.name for c in bank.contacts} >= {"bank-duty-officer", "bank-ops-channel"}
    assert all(c.at_steps == ["intake", "breach"] for c in bank.contacts)


def test_the_production_example_sets_next_reply_and_resolution_on_every_commercial_tier():
    policy = load_policy(ROOT / "examples" / "policy.production.yaml")
    for tier in (Tier.STANDARD, Tier.PREMIUM, Tier.MISSION_CRITICAL):
        spec = policy.tiers[tier]
        assert spec.next_reply is not None and spec.resolution is not None, tier
    assert policy.tiers[Tier.COMMUNITY].resolution is None
    plan = resolve_plan(policy, ticket(Tier.MISSION_CRITICAL), Severity.SEV1, T0)
    assert [(c.metric.value, c.due_at - T0) for c in plan.clocks] == [
        ("resolution", timedelta(hours=4))
    ]
    assert plan.next_reply_target == timedelta(minutes=30)
    default = load_policy(default_policy_path())
    assert all(t.next_reply is None and t.resolution is None for t in default.tiers.values())


def test_missing_channel_settings_are_listed_for_the_worker_to_warn_about():
    policy = load_policy(ROOT / "examples" / "policy.production.yaml")
    everything = {
        "COMMUNITY_FORUM_WEBHOOK_URL": "https://forum.example/hook",
        "SUPPORT_QUEUE_SLACK_URL": "https://hooks.slack.com/x",
        "SUPPORT_LEADS_SLACK_URL": "https://hooks.slack.com/y",
        "INCIDENTS_SLACK_URL": "https://hooks.slack.com/z",
        "PAGERDUTY_DUTY_ENGINEER_KEY": "k1",
        "PAGERDUTY_DUTY_MANAGER_KEY": "k2",
        "PAGERDUTY_INCIDENT_COMMAND_KEY": "k3",
        "ACCOUNT_TEAM_EMAILS": "am@support.example",
        "EXAMPLE_BANK_OPS_SLACK_URL": "https://hooks.slack.com/bank",
        "SUPPORT_SMTP_HOST": "smtp.support.example",
    }
    assert policy.missing_settings(everything) == []
    without = {
        k: v
        for k, v in everything.items()
        if k not in ("PAGERDUTY_DUTY_MANAGER_KEY", "SUPPORT_SMTP_HOST")
    }
    missing = policy.missing_settings(without)
    assert "PAGERDUTY_DUTY_MANAGER_KEY (targets.duty-manager, pager)" in missing
    assert "SUPPORT_SMTP_HOST (customers.example-bank.bank-duty-officer, email)" in missing
    assert load_policy(default_policy_path()).missing_settings({}) == []


def test_a_customer_is_found_by_the_domain_of_an_address(policy):
    assert policy.customer_for_email("ops@bank.example") == "example-bank"
    assert policy.customer_for_email("Ops@EU.Bank.Example") == "example-bank"
    assert policy.customer_for_email("ops@notbank.example") is None
    assert policy.customer_for_email("ops@bank.example.evil") is None


def test_the_most_specific_contract_domain_wins(tmp_path):
    def edit(data: dict[str, Any]) -> None:
        data["customers"]["bank-eu"] = {"tier": "premium", "email_domains": ["eu.bank.example"]}

    policy = load_policy(write_policy(tmp_path, edit))
    assert policy.customer_for_email("ops@eu.bank.example") == "bank-eu"
    assert policy.customer_for_email("ops@x.eu.bank.example") == "bank-eu"
    assert policy.customer_for_email("ops@us.bank.example") == "example-bank"


def test_the_country_check_knows_every_code_the_holidays_package_lists_without_loading_them():
    assert _holiday_countries() == set(holidays.list_supported_countries(include_aliases=True))
    # In a fresh interpreter, loading the shipped policy imports at most its own country
    # (the package loads a country's module when its dates are first asked for).
    loaded = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from policy.load import load_policy; load_policy();"
            " print(*(m for m in sys.modules if m.startswith('holidays.countries.')))",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert set(loaded.stdout.split()) <= {"holidays.countries.united_states"}

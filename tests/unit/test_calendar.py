"""Unit and property tests of ``policy.calendar.BusinessCalendar``.

Exact expectations are aware UTC instants; the local wall-clock time each one stands for is
given next to it. The calendar under test is built like the default policy's
``us-business-hours`` (America/Chicago, Mon-Fri 08:00-18:00) through ``CalendarSpec``: with
listed holiday dates (the older form), and with US federal holidays from the ``holidays``
package plus yearly closures (the default policy's form).
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from itertools import islice, pairwise
from zoneinfo import ZoneInfo

import holidays as holidays_package
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import policy.calendar as calendar_module
from policy.calendar import WEEKDAYS, BusinessCalendar, CountryHolidays, YearlyClosure
from policy.schema import CalendarSpec

CHICAGO = ZoneInfo("America/Chicago")
WORKDAYS = ("mon", "tue", "wed", "thu", "fri")
H = timedelta(hours=1)
MINUTE = timedelta(minutes=1)
TICK = timedelta(microseconds=1)

# A few of the default policy's holidays: Labor Day (a Monday), Thanksgiving Thu+Fri,
# Christmas.
HOLIDAYS = [date(2026, 9, 7), date(2026, 11, 26), date(2026, 11, 27), date(2026, 12, 25)]


def business_hours(holidays: list[date] | None = None) -> BusinessCalendar:
    return CalendarSpec(
        time_zone="America/Chicago",
        hours={day: ["08:00-18:00"] for day in WORKDAYS},
        holidays=HOLIDAYS if holidays is None else holidays,
    ).build()


CAL = business_hours()
TWENTY_FOUR_SEVEN = BusinessCalendar.twenty_four_seven()


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def chicago(*args: int) -> datetime:
    return datetime(*args, tzinfo=CHICAGO)


# --- add: exact instants -------------------------------------------------------------------


def test_spec_builds_a_business_calendar_with_the_given_zone_hours_and_holidays():
    assert not CAL.always_open
    assert CAL.time_zone == "America/Chicago"
    assert set(CAL.hours) == {0, 1, 2, 3, 4}
    assert all(len(intervals) == 1 for intervals in CAL.hours.values())
    assert CAL.holidays == frozenset(HOLIDAYS)


def test_four_business_hours_from_tuesday_morning_end_the_same_afternoon():
    # Tue 2026-03-10 09:00 CDT -> 13:00 CDT
    assert CAL.add(utc(2026, 3, 10, 14), 4 * H) == utc(2026, 3, 10, 18)


def test_result_is_returned_in_utc_whatever_the_input_zone():
    result = CAL.add(chicago(2026, 3, 10, 9), 4 * H)
    assert result == utc(2026, 3, 10, 18)
    assert result.utcoffset() == timedelta(0)


def test_friday_afternoon_rolls_the_remainder_to_monday_morning():
    # Fri 2026-03-13 16:00 CDT: 2 h left on Friday, 2 h on Monday -> Mon 10:00 CDT
    assert CAL.add(utc(2026, 3, 13, 21), 4 * H) == utc(2026, 3, 16, 15)


def test_ticket_opened_on_saturday_starts_counting_at_monday_opening():
    # Sat 2026-03-14 11:00 CDT -> Mon 2026-03-16 12:00 CDT
    assert CAL.add(utc(2026, 3, 14, 16), 4 * H) == utc(2026, 3, 16, 17)


def test_ticket_opened_before_opening_time_starts_counting_at_opening():
    # Tue 2026-03-10 06:30 CDT -> 08:00 + 4 h = 12:00 CDT
    assert CAL.add(utc(2026, 3, 10, 11, 30), 4 * H) == utc(2026, 3, 10, 17)


def test_ticket_opened_after_closing_starts_counting_next_morning():
    # Tue 2026-03-10 19:00 CDT (Wed 00:00 UTC) -> Wed 12:00 CDT
    assert CAL.add(utc(2026, 3, 11, 0), 4 * H) == utc(2026, 3, 11, 17)


def test_ticket_opened_exactly_at_closing_time_starts_counting_next_morning():
    # Tue 2026-03-10 18:00 CDT -> Wed 12:00 CDT
    assert CAL.add(utc(2026, 3, 10, 23), 4 * H) == utc(2026, 3, 11, 17)


def test_amount_that_exactly_fills_the_day_ends_at_closing_time_not_next_morning():
    # Fri 2026-03-13 16:00 CDT + 2 h = Fri 18:00 CDT
    assert CAL.add(utc(2026, 3, 13, 21), 2 * H) == utc(2026, 3, 13, 23)


def test_holiday_monday_pushes_the_deadline_to_tuesday():
    # Fri 2026-09-04 16:00 CDT, Mon 2026-09-07 is Labor Day -> Tue 2026-09-08 10:00 CDT
    assert CAL.add(utc(2026, 9, 4, 21), 4 * H) == utc(2026, 9, 8, 15)
    # Without the holiday the same ticket is due Monday 10:00 CDT.
    assert business_hours(holidays=[]).add(utc(2026, 9, 4, 21), 4 * H) == utc(2026, 9, 7, 15)


def test_ticket_opened_on_a_holiday_starts_counting_the_next_business_day():
    # Mon 2026-09-07 10:00 CDT (Labor Day) -> Tue 12:00 CDT
    assert CAL.add(utc(2026, 9, 7, 15), 4 * H) == utc(2026, 9, 8, 17)


def test_consecutive_holidays_before_a_weekend_are_skipped_together():
    # Wed 2026-11-25 16:00 CST; Thanksgiving Thu+Fri and the weekend -> Mon 11-30 10:00 CST
    assert CAL.add(utc(2026, 11, 25, 22), 4 * H) == utc(2026, 11, 30, 16)


@pytest.mark.parametrize(
    ("friday", "utc_hour", "monday", "due_utc_hour", "real_hours"),
    [
        # Fri 2026-10-30 16:00 CDT (21:00 UTC); DST ends Sun 2026-11-01
        # -> Mon 2026-11-02 10:00 CST = 16:00 UTC: the weekend one real hour longer.
        ((2026, 10, 30), 21, (2026, 11, 2), 16, 67),
        # Fri 2027-03-12 16:00 CST (22:00 UTC); DST starts Sun 2027-03-14
        # -> Mon 2027-03-15 10:00 CDT = 15:00 UTC: the weekend one real hour shorter.
        ((2027, 3, 12), 22, (2027, 3, 15), 15, 65),
    ],
    ids=["autumn-dst-end-due-monday-10-cst", "spring-dst-start-due-monday-10-cdt"],
)
def test_friday_ticket_across_a_dst_change_is_due_monday_10_local(
    friday: tuple[int, int, int],
    utc_hour: int,
    monday: tuple[int, int, int],
    due_utc_hour: int,
    real_hours: int,
) -> None:
    opened = utc(*friday, utc_hour)
    assert opened == chicago(*friday, 16)
    due = CAL.add(opened, 4 * H)
    assert due == utc(*monday, due_utc_hour)
    assert due == chicago(*monday, 10)
    assert due - opened == timedelta(hours=real_hours)


def test_business_day_after_dst_change_keeps_local_opening_hours():
    # Mon 2027-03-15 08:00 CDT is 13:00 UTC (the Friday before, 08:00 CST was 14:00 UTC).
    assert CAL.add(utc(2027, 3, 13, 12), 10 * H) == utc(2027, 3, 15, 23)
    assert CAL.add(utc(2027, 3, 12, 12), 10 * H) == utc(2027, 3, 13, 0)


def test_whole_day_interval_on_dst_days_counts_real_hours():
    sundays = CalendarSpec(time_zone="America/Chicago", hours={"sun": ["00:00-24:00"]}).build()
    spring, autumn = chicago(2027, 3, 14, 0), chicago(2026, 11, 1, 0)
    # Spring-forward Sunday has 23 real hours, fall-back Sunday has 25.
    assert sundays.open_time_between(spring, chicago(2027, 3, 15, 0)) == 23 * H
    assert sundays.open_time_between(autumn, chicago(2026, 11, 2, 0)) == 25 * H
    # 23 h from 2027-03-14 00:00 CST (06:00 UTC) is midnight CDT (05:00 UTC on the 15th).
    assert sundays.add(spring, 23 * H) == utc(2027, 3, 15, 5)
    # One more minute spills over to the next Sunday, 2027-03-21 00:01 CDT.
    assert sundays.add(spring, 23 * H + MINUTE) == utc(2027, 3, 21, 5, 1)
    assert sundays.add(autumn, 25 * H) == utc(2026, 11, 2, 6)


def test_interval_closing_at_24_00_runs_to_midnight_and_joins_the_next_day():
    night = CalendarSpec(
        time_zone="America/Chicago", hours={"wed": ["18:00-24:00"], "thu": ["00:00-02:00"]}
    ).build()
    wed = chicago(2026, 3, 11, 22)  # Wed 22:00 CDT = Thu 03:00 UTC
    begin, end = next(iter(night.open_intervals(wed)))
    assert (begin, end) == (utc(2026, 3, 11, 23), utc(2026, 3, 12, 5))
    # Exactly to midnight: Thu 00:00 CDT.
    assert night.add(wed, 2 * H) == utc(2026, 3, 12, 5)
    # Across midnight into Thursday's interval: Thu 01:00 CDT.
    assert night.add(wed, 3 * H) == utc(2026, 3, 12, 6)
    # Past Thursday's close to next Wednesday 18:30 CDT.
    assert night.add(wed, 4 * H + 30 * MINUTE) == utc(2026, 3, 18, 23, 30)
    assert night.is_open(chicago(2026, 3, 11, 23, 59, 59))
    assert night.is_open(chicago(2026, 3, 12, 0))
    assert not night.is_open(chicago(2026, 3, 12, 2))


def test_interval_closing_at_24_00_before_a_holiday_still_closes_at_midnight():
    night = CalendarSpec(
        time_zone="America/Chicago",
        hours={"wed": ["18:00-24:00"], "thu": ["00:00-02:00"]},
        holidays=[date(2026, 3, 12)],
    ).build()
    wed = chicago(2026, 3, 11, 22)
    assert night.add(wed, 2 * H) == chicago(2026, 3, 12, 0)
    assert not night.is_open(chicago(2026, 3, 12, 0))
    # Thursday is a holiday: the next minute is next Wednesday 18:01 CDT.
    assert night.add(wed, 2 * H + MINUTE) == chicago(2026, 3, 18, 18, 1)


def test_always_open_calendar_adds_wall_clock_time():
    always = BusinessCalendar.twenty_four_seven("America/Chicago")
    # Saturday before the autumn DST end + 48 h: plain elapsed time, weekend and DST ignored.
    start = utc(2026, 10, 31, 12)
    assert always.add(start, 48 * H) == utc(2026, 11, 2, 12)
    assert always.add(chicago(2026, 11, 26, 3), 90 * MINUTE) == utc(2026, 11, 26, 10, 30)
    assert always.open_time_between(start, utc(2026, 11, 2, 12)) == 48 * H
    assert always.is_open(utc(2026, 12, 25, 3))


def test_always_open_spec_builds_a_twenty_four_seven_calendar():
    always = CalendarSpec(time_zone="UTC", always_open=True).build()
    assert always == BusinessCalendar.twenty_four_seven("UTC")
    assert always.add(utc(2026, 3, 14, 23, 59), 2 * MINUTE) == utc(2026, 3, 15, 0, 1)


def test_zero_amount_returns_the_start_even_when_closed():
    saturday = utc(2026, 3, 14, 16, 0, 0, 123)
    assert CAL.add(saturday, timedelta(0)) == saturday


def test_sub_second_amounts_are_kept_exactly():
    assert CAL.add(utc(2026, 3, 13, 22, 59, 59), 1500 * TICK) == utc(2026, 3, 13, 22, 59, 59, 1500)
    # 2 s from Fri 17:59:59 CDT: 1 s on Friday, 1 s after Monday opening.
    assert CAL.add(utc(2026, 3, 13, 22, 59, 59), 2 * timedelta(seconds=1)) == utc(
        2026, 3, 16, 13, 0, 1
    )


def test_calendar_without_opening_hours_raises_instead_of_looping():
    with pytest.raises(ValueError, match="no open hours"):
        BusinessCalendar(time_zone="UTC").add(utc(2026, 1, 1), H)


# --- open_time_between and is_open ----------------------------------------------------------


def test_open_time_between_counts_only_business_hours():
    # Fri 16:00 CDT -> Mon 10:00 CDT
    assert CAL.open_time_between(utc(2026, 3, 13, 21), utc(2026, 3, 16, 15)) == 4 * H
    # A whole ordinary week: 5 x 10 h.
    assert CAL.open_time_between(chicago(2026, 3, 9), chicago(2026, 3, 16)) == 50 * H
    # Labor Day week: 4 x 10 h.
    assert CAL.open_time_between(chicago(2026, 9, 7), chicago(2026, 9, 14)) == 40 * H
    # Partial interval on both ends: Tue 17:00 -> Wed 09:30 CDT.
    assert CAL.open_time_between(chicago(2026, 3, 10, 17), chicago(2026, 3, 11, 9, 30)) == (
        2 * H + 30 * MINUTE
    )


def test_open_time_between_is_zero_for_empty_reversed_or_closed_spans():
    t = utc(2026, 3, 10, 15)
    assert CAL.open_time_between(t, t) == timedelta(0)
    assert CAL.open_time_between(t + H, t) == timedelta(0)
    # Saturday 00:00 -> Monday 08:00 CDT: the whole weekend is closed.
    assert CAL.open_time_between(chicago(2026, 3, 14), chicago(2026, 3, 16, 8)) == timedelta(0)


def test_is_open_is_inclusive_at_opening_and_exclusive_at_closing():
    assert CAL.is_open(chicago(2026, 3, 10, 8))
    assert not CAL.is_open(chicago(2026, 3, 10, 8) - TICK)
    assert CAL.is_open(chicago(2026, 3, 10, 18) - TICK)
    assert not CAL.is_open(chicago(2026, 3, 10, 18))
    assert CAL.is_open(utc(2026, 3, 10, 13))  # 08:00 CDT given in UTC


def test_is_open_is_false_on_weekends_holidays_and_at_night():
    assert not CAL.is_open(chicago(2026, 3, 14, 12))  # Saturday
    assert not CAL.is_open(chicago(2026, 3, 15, 12))  # Sunday
    assert not CAL.is_open(chicago(2026, 9, 7, 12))  # Labor Day
    assert not CAL.is_open(chicago(2026, 3, 10, 3))  # Tuesday night
    assert CAL.is_open(chicago(2026, 9, 8, 12))  # the Tuesday after Labor Day


# --- invalid input -------------------------------------------------------------------------


@pytest.mark.parametrize("calendar", [CAL, TWENTY_FOUR_SEVEN], ids=["business", "24x7"])
def test_naive_start_is_rejected(calendar: BusinessCalendar):
    with pytest.raises(ValueError, match="timezone-aware"):
        calendar.add(datetime(2026, 3, 10, 9), H)


@pytest.mark.parametrize("calendar", [CAL, TWENTY_FOUR_SEVEN], ids=["business", "24x7"])
def test_negative_amount_is_rejected(calendar: BusinessCalendar):
    with pytest.raises(ValueError, match="negative"):
        calendar.add(utc(2026, 3, 10, 14), -MINUTE)


# --- regressions: DST gaps, long spans, non-commercial ladders --------------------------


def test_intervals_bounded_by_a_nonexistent_local_time_do_not_overlap():
    cal = CalendarSpec(
        time_zone="America/Chicago", hours={"sun": ["00:00-02:30", "03:00-24:00"]}
    ).build()
    start = chicago(2027, 3, 14, 0)  # spring-forward Sunday: 02:00 CST -> 03:00 CDT
    first, second = islice(cal.open_intervals(start), 2)
    # The day has 23 real hours; open time can never exceed that (actual: 23:30).
    assert cal.open_time_between(start, chicago(2027, 3, 15, 0)) <= 23 * H
    # Monotonic in the amount (actual: +2h30 -> 08:30 UTC, +2h45 -> 08:15 UTC).
    assert cal.add(start, 2 * H + 45 * MINUTE) > cal.add(start, 2 * H + 30 * MINUTE)
    assert first[1] <= second[0]


def test_spans_longer_than_three_years_are_computed():
    cal = business_hours(holidays=[])
    start, end = chicago(2026, 1, 5, 8), chicago(2030, 1, 5, 0)  # Mon -> Sat
    days = (end.date() - start.date()).days
    weekdays = sum(1 for i in range(days) if (start.date() + timedelta(days=i)).weekday() < 5)
    assert cal.open_time_between(start, end) == weekdays * 10 * H
    assert cal.add(start, weekdays * 10 * H) == chicago(2030, 1, 4, 18)


# --- properties ----------------------------------------------------------------------------

ZONES = ("America/Chicago", "Europe/Berlin", "Australia/Sydney")
# Opening-hour shapes: an office day, a split day with a Saturday morning, a night shift
# through midnight ("24:00" closes joined to "00:00" opens), and round-the-clock weekends
# (all three zones change DST on a Sunday, so those days are 23 or 25 hours long).
TEMPLATES: dict[str, dict[str, list[str]]] = {
    "office": {day: ["08:00-18:00"] for day in WORKDAYS},
    "split": {
        **{day: ["09:00-12:00", "13:00-17:30"] for day in WORKDAYS},
        "sat": ["10:00-14:00"],
    },
    "night": {
        **{day: ["20:00-24:00"] for day in WORKDAYS},
        **{day: ["00:00-06:00"] for day in ("tue", "wed", "thu", "fri", "sat")},
    },
    "weekends": {"fri": ["16:00-24:00"], "sat": ["00:00-24:00"], "sun": ["00:00-24:00"]},
    # Boundaries inside the spring-forward gap of all three zones (02:00-03:00 local on
    # their change Sundays): such a time does not exist that day and must not make
    # intervals overlap or grow.
    "gap": {"sun": ["00:00-02:30", "02:45-05:00"], "mon": ["02:30-04:00"]},
}


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[BusinessCalendar, datetime]:
    """A calendar in one of the zones with holidays scattered around a start instant."""
    zone = draw(st.sampled_from(ZONES))
    hours = TEMPLATES[draw(st.sampled_from(sorted(TEMPLATES)))]
    start = draw(
        st.datetimes(
            min_value=datetime(2026, 1, 1),
            max_value=datetime(2028, 12, 31, 23, 59, 59),
            timezones=st.just(UTC),
        )
    )
    local = start.astimezone(ZoneInfo(zone)).date()
    offsets = draw(st.sets(st.integers(min_value=-1, max_value=45), max_size=15))
    holidays = sorted(local + timedelta(days=n) for n in offsets)
    calendar = CalendarSpec(time_zone=zone, hours=hours, holidays=holidays).build()
    return calendar, start


amounts = st.integers(min_value=0, max_value=200 * 60).map(lambda m: timedelta(minutes=m))

PROPERTY = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def open_day(calendar: BusinessCalendar, instant: datetime) -> bool:
    local = instant.astimezone(calendar.zone).date()
    return not calendar.is_holiday(local) and bool(calendar.hours.get(local.weekday()))


@PROPERTY
@given(scenarios(), amounts)
def test_property_result_never_precedes_start_nor_undercounts(scenario, amount):
    calendar, start = scenario
    result = calendar.add(start, amount)
    assert result >= start
    assert result - start >= amount
    assert result.utcoffset() == timedelta(0)


@PROPERTY
@given(scenarios(), amounts)
def test_property_open_time_up_to_the_result_equals_the_amount(scenario, amount):
    calendar, start = scenario
    assert calendar.open_time_between(start, calendar.add(start, amount)) == amount


@PROPERTY
@given(scenarios(), amounts, amounts)
def test_property_adding_in_two_steps_equals_adding_the_sum(scenario, a, b):
    calendar, start = scenario
    assert calendar.add(calendar.add(start, a), b) == calendar.add(start, a + b)


@PROPERTY
@given(scenarios(), amounts, amounts)
def test_property_result_grows_strictly_with_the_amount(scenario, a, b):
    calendar, start = scenario
    small, large = sorted((a, b))
    if small == large:
        assert calendar.add(start, small) == calendar.add(start, large)
    else:
        assert calendar.add(start, small) < calendar.add(start, large)


@PROPERTY
@given(scenarios(), amounts.filter(lambda d: d > timedelta(0)))
def test_property_positive_result_lies_in_an_open_interval_or_at_its_close(scenario, amount):
    calendar, start = scenario
    result = calendar.add(start, amount)
    # The last microsecond before the result was open time.
    assert calendar.is_open(result - TICK)
    if not calendar.is_open(result):
        # Then the result is exactly the close of an interval.
        closes = [end for _, end in islice(calendar.open_intervals(result - H * 48), 40)]
        assert result in closes


@PROPERTY
@given(scenarios(), amounts.filter(lambda d: d > timedelta(0)))
def test_property_result_never_falls_on_a_holiday_or_closed_weekday(scenario, amount):
    calendar, start = scenario
    result = calendar.add(start, amount)
    # Time counted just before the result belongs to an open local day...
    assert open_day(calendar, result - TICK)
    # ...and the result itself is on an open day unless it is exactly at a close
    # (e.g. a "24:00" close before a holiday, handled by the previous property).
    if calendar.is_open(result):
        assert open_day(calendar, result)


@PROPERTY
@given(scenarios())
def test_property_open_intervals_are_ordered_and_disjoint(scenario):
    calendar, start = scenario
    intervals = list(islice(calendar.open_intervals(start), 30))
    for begin, end in intervals:
        assert begin < end
        assert begin.astimezone(calendar.zone).date().weekday() in calendar.hours
    for (_, end), (begin, _) in pairwise(intervals):
        assert end <= begin


def test_templates_use_only_known_weekdays():
    assert all(day in WEEKDAYS for hours in TEMPLATES.values() for day in hours)


# --- holidays from the `holidays` package, yearly closures: any year --------------------------

# The default policy's us-business-hours: US federal holidays (observed) and the vendor's own
# closures every year (the day after Thanksgiving, 24 December).
FEDERAL = CalendarSpec.model_validate(
    {
        "time_zone": "America/Chicago",
        "hours": {day: ["08:00-18:00"] for day in WORKDAYS},
        "holidays": {"country": "US", "subdivision": None, "observed": True},
        "closures": [
            {"name": "Day after Thanksgiving", "month": 11, "weekday": "thu", "nth": 4,
             "days_after": 1},
            {"name": "Christmas Eve", "month": 12, "day": 24},
        ],
    }
).build()  # fmt: skip


def federal(**holidays: object) -> BusinessCalendar:
    return CalendarSpec.model_validate(
        {
            "time_zone": "America/Chicago",
            "hours": {day: ["08:00-18:00"] for day in WORKDAYS},
            "holidays": {"country": "US", **holidays},
        }
    ).build()


def test_spec_builds_country_holidays_and_yearly_closures():
    assert FEDERAL.holidays == frozenset()
    assert FEDERAL.country_holidays == CountryHolidays("US", None, True, ("public",))
    assert FEDERAL.yearly_closures == (
        YearlyClosure(month=11, weekday=3, nth=4, days_after=1, name="Day after Thanksgiving"),
        YearlyClosure(month=12, day=24, name="Christmas Eve"),
    )


def test_the_default_closed_days_of_2026_and_2027_are_the_federal_holidays_and_closures():
    assert sorted(FEDERAL.holidays_in(2026)) == [
        date(2026, 1, 1), date(2026, 1, 19), date(2026, 2, 16), date(2026, 5, 25),
        date(2026, 6, 19),
        date(2026, 7, 3),  # Independence Day (observed): July 4 is a Saturday
        date(2026, 7, 4), date(2026, 9, 7), date(2026, 10, 12), date(2026, 11, 11),
        date(2026, 11, 26),
        date(2026, 11, 27),  # the day after Thanksgiving (closure)
        date(2026, 12, 24),  # Christmas Eve (closure)
        date(2026, 12, 25),
    ]  # fmt: skip
    assert sorted(FEDERAL.holidays_in(2027)) == [
        date(2027, 1, 1), date(2027, 1, 18), date(2027, 2, 15), date(2027, 5, 31),
        date(2027, 6, 18),  # Juneteenth (observed): June 19 is a Saturday
        date(2027, 6, 19), date(2027, 7, 4),
        date(2027, 7, 5),  # Independence Day (observed): July 4 is a Sunday
        date(2027, 9, 6), date(2027, 10, 11), date(2027, 11, 11), date(2027, 11, 25),
        date(2027, 11, 26),
        date(2027, 12, 24),  # Christmas Eve and Christmas (observed): the 25th is a Saturday
        date(2027, 12, 25),
        date(2027, 12, 31),  # New Year's Day 2028 (observed): January 1 is a Saturday
    ]  # fmt: skip


def test_standard_ticket_opened_friday_before_christmas_2028_is_due_tuesday_11_00():
    # Fri 2028-12-22 17:00 CST: one business hour left on Friday (17:00-18:00); Sun 24 and
    # Mon 25 (Christmas) closed; three more from Tue 08:00 -> Tue 2028-12-26 11:00 CST.
    opened = chicago(2028, 12, 22, 17)
    due = FEDERAL.add(opened, 4 * H)
    assert due == utc(2028, 12, 26, 17)
    assert due == chicago(2028, 12, 26, 11)
    assert FEDERAL.is_holiday(date(2028, 12, 25))
    assert FEDERAL.open_time_between(opened, due) == 4 * H


def test_a_holiday_on_a_saturday_closes_the_friday_before_when_observed():
    # July 4 2026 is a Saturday: observed on Friday July 3.
    thursday = chicago(2026, 7, 2, 16)
    assert FEDERAL.add(thursday, 4 * H) == chicago(2026, 7, 6, 10)  # Thu 2 h, Mon 2 h
    assert not FEDERAL.is_open(chicago(2026, 7, 3, 12))
    # Without observed rules only the day itself (a Saturday) is a holiday.
    actual = federal(observed=False)
    assert actual.add(thursday, 4 * H) == chicago(2026, 7, 3, 10)
    assert actual.is_open(chicago(2026, 7, 3, 12))


def test_a_holiday_on_a_sunday_closes_the_monday_after_when_observed():
    # July 4 2027 is a Sunday: observed on Monday July 5.
    friday = chicago(2027, 7, 2, 16)
    assert FEDERAL.add(friday, 4 * H) == chicago(2027, 7, 6, 10)
    assert federal(observed=False).add(friday, 4 * H) == chicago(2027, 7, 5, 10)


def test_new_years_day_on_a_saturday_is_observed_on_the_last_friday_of_the_year_before():
    # 2028-01-01 is a Saturday: Friday 2027-12-31 is closed (a rule of next year's holiday).
    assert FEDERAL.is_holiday(date(2027, 12, 31))
    assert FEDERAL.add(chicago(2027, 12, 30, 16), 4 * H) == chicago(2028, 1, 3, 10)


def test_a_year_far_in_the_future_has_its_holidays_and_closures():
    # 2045: New Year's Day is a Sunday (observed Monday 2 January); Thanksgiving Thursday
    # 23 November; Christmas Eve a Sunday, Christmas a Monday.
    assert {date(2045, 1, 1), date(2045, 1, 2), date(2045, 11, 23), date(2045, 11, 24),
            date(2045, 12, 24), date(2045, 12, 25)} <= FEDERAL.holidays_in(2045)  # fmt: skip
    # Fri 2045-12-22 16:00 CST: 2 h on Friday, Monday 25 closed -> Tue 26 10:00 CST.
    assert FEDERAL.add(chicago(2045, 12, 22, 16), 4 * H) == chicago(2045, 12, 26, 10)
    # Wed 2045-11-22 16:00: Thanksgiving and the day after -> Mon 27 10:00 CST.
    assert FEDERAL.add(chicago(2045, 11, 22, 16), 4 * H) == chicago(2045, 11, 27, 10)
    # Monday 2045-01-02 (observed New Year) is closed: Fri 2044-12-30 16:00 -> Tue 10:00.
    assert FEDERAL.add(chicago(2044, 12, 30, 16), 4 * H) == chicago(2045, 1, 3, 10)
    # DST ends on Sunday 2045-11-05: Fri 16:00 CDT (21:00 UTC) -> Mon 10:00 CST (16:00 UTC).
    assert FEDERAL.add(utc(2045, 11, 3, 21), 4 * H) == utc(2045, 11, 6, 16)


def test_a_subdivision_adds_its_own_holidays():
    # Texas Independence Day, Mon 2026-03-02, is a Texas holiday, not a federal one.
    texas = federal(subdivision="TX")
    assert texas.is_holiday(date(2026, 3, 2))
    assert not FEDERAL.is_holiday(date(2026, 3, 2))
    assert texas.add(chicago(2026, 2, 27, 16), 4 * H) == chicago(2026, 3, 3, 10)


def test_categories_choose_which_of_the_packages_holidays_close_the_calendar():
    # The unofficial category holds Christmas Eve and Good Friday, not the federal holidays.
    unofficial = federal(categories=["unofficial"])
    assert unofficial.is_holiday(date(2026, 12, 24))
    assert unofficial.is_holiday(date(2026, 4, 3))
    assert not unofficial.is_holiday(date(2026, 12, 25))
    assert not FEDERAL.is_holiday(date(2026, 4, 3))
    both = federal(categories=["public", "unofficial"])
    assert both.is_holiday(date(2026, 12, 24)) and both.is_holiday(date(2026, 12, 25))


@pytest.mark.parametrize(
    ("closure", "expected"),
    [
        # The 4th Thursday of November, 1 day after: the day after Thanksgiving.
        (
            YearlyClosure(month=11, weekday=3, nth=4, days_after=1),
            [
                date(2026, 11, 27),
                date(2027, 11, 26),
                date(2028, 11, 24),
                date(2029, 11, 23),
                date(2030, 11, 29),
            ],
        ),
        # A fixed day: 24 December, whatever the weekday.
        (YearlyClosure(month=12, day=24), [date(y, 12, 24) for y in range(2026, 2031)]),
        # The last Monday of May (Memorial Day), 3 days before: the Friday before it.
        (
            YearlyClosure(month=5, weekday=0, nth=-1, days_after=-3),
            [
                date(2026, 5, 22),
                date(2027, 5, 28),
                date(2028, 5, 26),
                date(2029, 5, 25),
                date(2030, 5, 24),
            ],
        ),
        # 29 February exists in leap years only.
        (YearlyClosure(month=2, day=29), [None, None, date(2028, 2, 29), None, None]),
        # The 5th Friday of January exists in some years only.
        (
            YearlyClosure(month=1, weekday=4, nth=5),
            [date(2026, 1, 30), date(2027, 1, 29), None, None, None],
        ),
    ],
    ids=["day-after-thanksgiving", "christmas-eve", "before-memorial-day", "leap-day", "5th"],
)
def test_yearly_closures_fall_on_their_day_every_year(closure, expected):
    assert [closure.date_in(year) for year in range(2026, 2031)] == expected


def test_a_yearly_closure_moved_into_the_next_year_closes_that_year():
    # 31 December, 1 day after: 1 January of the next year, as a closure of that year.
    cal = BusinessCalendar(
        time_zone="UTC",
        hours={day: ((time(8), time(18)),) for day in range(7)},
        yearly_closures=(YearlyClosure(month=12, day=31, days_after=1),),
    )
    assert cal.is_holiday(date(2030, 1, 1))
    assert not cal.is_holiday(date(2030, 12, 31))
    assert cal.holidays_in(2030) == {date(2030, 1, 1)}


def test_holidays_are_computed_once_per_year_and_shared_by_equal_calendars(monkeypatch):
    calls: list[int] = []
    original = CountryHolidays.dates

    def counting(self: CountryHolidays, year: int) -> frozenset[date]:
        calls.append(year)
        return original(self, year)

    monkeypatch.setattr(CountryHolidays, "dates", counting)
    calendar_module._closed_in_year.cache_clear()
    first = federal(subdivision="CA")
    # A year of deadlines, one every business day, each counted day by day.
    for day in range(0, 365, 1):
        first.add(chicago(2031, 1, 1, 9) + timedelta(days=day), 4 * H)
    assert calls == [2031], "the package is asked once for the year"
    second = federal(subdivision="CA")  # a new, equal calendar (as calendar_for builds)
    assert second == first
    second.add(chicago(2031, 7, 2, 16), 40 * H)
    assert calls == [2031]
    second.add(chicago(2031, 12, 31, 16), 4 * H)  # into 2032
    assert calls == [2031, 2032]


# A property against an independent oracle: the `holidays` package asked directly, the day
# after Thanksgiving from the package's Thanksgiving, and 24 December.
def closed_by_the_default(day: date) -> bool:
    us = holidays_package.country_holidays("US", years=[day.year, day.year + 1], observed=True)
    thanksgiving = next(d for d, name in us.items() if name == "Thanksgiving Day" and
                        d.year == day.year)  # fmt: skip
    return day in us or day == thanksgiving + timedelta(days=1) or (day.month, day.day) == (12, 24)


@PROPERTY
@given(
    st.datetimes(
        min_value=datetime(2026, 1, 1),
        max_value=datetime(2060, 12, 31, 23, 59, 59),
        timezones=st.just(UTC),
    ),
    st.integers(min_value=1, max_value=120 * 60).map(lambda m: timedelta(minutes=m)),
)
def test_property_no_deadline_falls_on_a_holiday_or_closure(start, amount):
    due = FEDERAL.add(start, amount)
    # The open time just before the deadline lies on an open local day...
    counted = (due - TICK).astimezone(CHICAGO).date()
    assert not closed_by_the_default(counted), (start, amount, due)
    assert counted.weekday() < 5
    # ...and so does the deadline itself (08:00-18:00 never closes at midnight).
    assert not closed_by_the_default(due.astimezone(CHICAGO).date())
    assert FEDERAL.open_time_between(start, due) == amount

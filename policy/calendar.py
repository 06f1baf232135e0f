"""Business-hours calendar maths: pure, DST-correct, unit-tested on its own.

A calendar is a time zone, opening hours per weekday and the days it is closed all day
(local dates): listed dates, a country's public holidays (from the maintained ``holidays``
package: country, subdivision, observed rules) and yearly closures of its own (the day
after Thanksgiving, 24 December). ``add`` moves an instant forward by an amount of *open*
time: 4 business hours from Friday 16:00 is Monday 10:00 on a 08:00-18:00 calendar.
Opening hours are local wall-clock times, so on a DST change day the interval's real
length is whatever the clock says (a 08:00-18:00 day is 10 real hours on both sides of the
change, because the change happens at night); elapsed open time is always measured in
real seconds.

Holidays are computed per year on first use and cached, so no calendar runs out and the
per-day membership test stays a set lookup. The result depends only on the calendar's
fields (and the installed ``holidays`` package's rules): the same calendar gives the same
instants in every process.
"""

from __future__ import annotations

import calendar as _weeks
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
# No reasonable calendar has a gap this long between open intervals; stop rather than loop.
_MAX_SCAN_DAYS = 3 * 366


@dataclass(frozen=True)
class CountryHolidays:
    """A country's (or subdivision's) holidays from the ``holidays`` package."""

    country: str
    subdivision: str | None = None
    # A holiday on a weekend also closes the weekday it is observed on (US: Saturday ->
    # Friday, Sunday -> Monday).
    observed: bool = True
    categories: tuple[str, ...] = ("public",)

    def dates(self, year: int) -> frozenset[date]:
        """The holiday dates that fall in ``year`` (an observed day of next year's holiday
        included, e.g. Friday 2027-12-31 for New Year's Day 2028)."""
        import holidays

        found = holidays.country_holidays(
            self.country,
            subdiv=self.subdivision,
            years=year,
            observed=self.observed,
            categories=self.categories,
        )
        return frozenset(day for day in found if day.year == year)


@dataclass(frozen=True)
class YearlyClosure:
    """A day closed every year: a fixed ``month``/``day`` (24 December), or the ``nth``
    ``weekday`` of ``month`` (-1: the last one), moved by ``days_after`` days (the day
    after Thanksgiving: the 4th Thursday of November, 1 day after)."""

    month: int
    day: int | None = None
    weekday: int | None = None  # 0 = Monday
    nth: int | None = None  # 1..5, or -1 for the last
    days_after: int = 0
    name: str = ""

    def date_in(self, year: int) -> date | None:
        """The closure's anchor in ``year`` moved by ``days_after`` (None when that year
        has no such day: 29 February, a fifth Monday)."""
        if self.day is not None:
            if self.month == 2 and self.day == 29 and not _weeks.isleap(year):
                return None
            anchor = date(year, self.month, self.day)
        else:
            assert self.weekday is not None and self.nth is not None
            days = [
                week[self.weekday]
                for week in _weeks.Calendar().monthdatescalendar(year, self.month)
                if week[self.weekday].month == self.month
            ]
            if self.nth > len(days):
                return None
            anchor = days[self.nth - 1] if self.nth > 0 else days[self.nth]
        return anchor + timedelta(days=self.days_after)


@lru_cache(maxsize=4096)
def _closed_in_year(
    country: CountryHolidays | None, yearly: tuple[YearlyClosure, ...], year: int
) -> frozenset[date]:
    """Every rule-made closed day of ``year`` (shared by equal calendars)."""
    days: set[date] = set(country.dates(year)) if country is not None else set()
    for closure in yearly:
        # days_after may carry a neighbouring year's closure into this one.
        for anchor_year in (year - 1, year, year + 1):
            day = closure.date_in(anchor_year)
            if day is not None and day.year == year:
                days.add(day)
    return frozenset(days)


@dataclass(frozen=True)
class BusinessCalendar:
    time_zone: str
    # weekday index (0 = Monday) -> sorted, non-overlapping (open, close) local times;
    # a close of 00:00 means midnight at the end of that day ("24:00").
    hours: dict[int, tuple[tuple[time, time], ...]] = field(default_factory=dict)
    # Closed all day: listed local dates, a country's holidays, yearly closures.
    holidays: frozenset[date] = frozenset()
    always_open: bool = False
    country_holidays: CountryHolidays | None = None
    yearly_closures: tuple[YearlyClosure, ...] = ()
    # year -> the rule-made closed days of that year, filled on first use (a memo, not
    # state: equal calendars compute equal sets).
    _years: dict[int, frozenset[date]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    @classmethod
    def twenty_four_seven(cls, time_zone: str = "UTC") -> BusinessCalendar:
        return cls(time_zone=time_zone, always_open=True)

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.time_zone)

    def is_holiday(self, day: date) -> bool:
        """Whether the local ``day`` is closed all day (a listed date, a holiday or a
        closure), whatever its opening hours."""
        if day in self.holidays:
            return True
        if self.country_holidays is None and not self.yearly_closures:
            return False
        closed = self._years.get(day.year)
        if closed is None:
            closed = _closed_in_year(self.country_holidays, self.yearly_closures, day.year)
            self._years[day.year] = closed
        return day in closed

    def holidays_in(self, year: int) -> frozenset[date]:
        """Every day of ``year`` the calendar is closed all day (whatever the weekday)."""
        rules = _closed_in_year(self.country_holidays, self.yearly_closures, year)
        return rules | {day for day in self.holidays if day.year == year}

    def open_intervals(self, start: datetime) -> Iterator[tuple[datetime, datetime]]:
        """Open intervals as aware UTC (begin, end) pairs, in order, from the local day of
        ``start`` on. Intervals may end before ``start``; callers clip."""
        tz = self.zone
        day = start.astimezone(tz).date()
        closed_days = 0
        while closed_days < _MAX_SCAN_DAYS:
            found = False
            if not self.is_holiday(day):
                for opens, closes in self.hours.get(day.weekday(), ()):
                    begin = _local_to_utc(day, opens, tz)
                    close_day = day + timedelta(days=1) if closes == time(0) else day
                    end = _local_to_utc(close_day, closes, tz)
                    if end > begin:
                        found = True
                        yield begin, end
            closed_days = 0 if found else closed_days + 1
            day += timedelta(days=1)
        raise ValueError(
            f"calendar {self.time_zone} has no open hours within {_MAX_SCAN_DAYS} days"
        )

    def add(self, start: datetime, amount: timedelta) -> datetime:
        """The instant at which ``amount`` of open time has elapsed since ``start``."""
        _require_aware(start, "start")
        if amount < timedelta(0):
            raise ValueError("amount must not be negative")
        start = start.astimezone(UTC)
        if self.always_open or amount == timedelta(0):
            return start + amount
        remaining = amount
        for begin, end in self.open_intervals(start):
            cursor = max(start, begin)
            if cursor >= end:
                continue
            available = end - cursor
            if remaining <= available:
                return cursor + remaining
            remaining -= available
        raise AssertionError("unreachable")  # open_intervals raises first

    def open_time_between(self, start: datetime, end: datetime) -> timedelta:
        """How much open time lies in [start, end)."""
        _require_aware(start, "start")
        _require_aware(end, "end")
        start, end = start.astimezone(UTC), end.astimezone(UTC)
        if end <= start:
            return timedelta(0)
        if self.always_open:
            return end - start
        total = timedelta(0)
        for begin, close in self.open_intervals(start):
            if begin >= end:
                break
            lo, hi = max(begin, start), min(close, end)
            if hi > lo:
                total += hi - lo
        return total

    def is_open(self, instant: datetime) -> bool:
        _require_aware(instant, "instant")
        if self.always_open:
            return True
        instant = instant.astimezone(UTC)
        for begin, end in self.open_intervals(instant - timedelta(days=1)):
            if begin > instant:
                return False
            if begin <= instant < end:
                return True
        return False


def _require_aware(value: datetime, name: str) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware")


def _local_to_utc(day: date, wall: time, tz: ZoneInfo) -> datetime:
    """A local wall-clock time as a UTC instant. A time that does not exist (skipped by a
    spring-forward change) is taken as the moment the clocks jump, so intervals that start
    or end inside the gap neither overlap nor grow."""
    local = datetime.combine(day, wall, tzinfo=tz)
    instant = local.astimezone(UTC)
    if instant.astimezone(tz).replace(tzinfo=None) == local.replace(tzinfo=None):
        return instant
    # In the gap: the change lies between the two readings of the wall time; find the
    # first instant whose local reading is at or after the wall time (to the second).
    low = local.replace(fold=1).astimezone(UTC)
    high = instant
    if low > high:
        low, high = high, low
    naive = local.replace(tzinfo=None)
    while high - low > timedelta(seconds=1):
        middle = low + (high - low) / 2
        if middle.astimezone(tz).replace(tzinfo=None) >= naive:
            high = middle
        else:
            low = middle
    return high.replace(microsecond=0) if high.microsecond else high

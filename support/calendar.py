"""Business-hours calendar maths: pure, DST-correct, unit-tested on its own.

A calendar is a time zone, opening hours per weekday and a set of holiday dates (local
dates). ``add`` moves an instant forward by an amount of *open* time: 4 business hours from
Friday 16:00 is Monday 10:00 on a 08:00-18:00 calendar. Opening hours are local wall-clock
times, so on a DST change day the interval's real length is whatever the clock says (a
08:00-18:00 day is 10 real hours on both sides of the change, because the change happens
at night); elapsed open time is always measured in real seconds.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
# No reasonable calendar has a gap this long between open intervals; stop rather than loop.
_MAX_SCAN_DAYS = 3 * 366


@dataclass(frozen=True)
class BusinessCalendar:
    time_zone: str
    # weekday index (0 = Monday) -> sorted, non-overlapping (open, close) local times;
    # a close of 00:00 means midnight at the end of that day ("24:00").
    hours: dict[int, tuple[tuple[time, time], ...]] = field(default_factory=dict)
    holidays: frozenset[date] = frozenset()
    always_open: bool = False

    @classmethod
    def twenty_four_seven(cls, time_zone: str = "UTC") -> BusinessCalendar:
        return cls(time_zone=time_zone, always_open=True)

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.time_zone)

    def open_intervals(self, start: datetime) -> Iterator[tuple[datetime, datetime]]:
        """Open intervals as aware UTC (begin, end) pairs, in order, from the local day of
        ``start`` on. Intervals may end before ``start``; callers clip."""
        tz = self.zone
        day = start.astimezone(tz).date()
        for _ in range(_MAX_SCAN_DAYS):
            if day not in self.holidays:
                for opens, closes in self.hours.get(day.weekday(), ()):
                    begin = datetime.combine(day, opens, tzinfo=tz).astimezone(UTC)
                    close_day = day + timedelta(days=1) if closes == time(0) else day
                    end = datetime.combine(close_day, closes, tzinfo=tz).astimezone(UTC)
                    if end > begin:
                        yield begin, end
            day += timedelta(days=1)
        raise ValueError(f"calendar {self.time_zone} has no open hours within {_MAX_SCAN_DAYS} days")

    def add(self, start: datetime, amount: timedelta) -> datetime:
        """The instant at which ``amount`` of open time has elapsed since ``start``."""
        if start.tzinfo is None:
            raise ValueError("start must be timezone-aware")
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
        if self.always_open:
            return True
        instant = instant.astimezone(UTC)
        for begin, end in self.open_intervals(instant - timedelta(days=1)):
            if begin > instant:
                return False
            if begin <= instant < end:
                return True
        return False

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
        closed_days = 0
        while closed_days < _MAX_SCAN_DAYS:
            found = False
            if day not in self.holidays:
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

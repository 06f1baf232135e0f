"""The support policy file's schema: every section and rule the validator checks.

The file (YAML) is the contract the software enforces. ``load_policy`` validates it with
pydantic and reports errors as ``<file>: <field path>: <problem>``. ``resolve_plan`` is a
pure function from (policy, ticket, severity, open time) to a ``TicketPlan`` with every
escalation instant already computed on the ticket's clock; the workflow runs it through an
activity so the plan is pinned in history and replay never depends on the file or on the
worker's time-zone database.
"""

from __future__ import annotations

import calendar as _weeks
import re
from collections.abc import Mapping
from datetime import date, time, timedelta
from functools import lru_cache
from typing import Annotated, Any, Literal, Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from contract.labels import TIER_LABELS
from contract.models import (
    Channel,
    ChannelKind,
    Recipient,
    Severity,
    StepKind,
    Tier,
)
from contract.text import span
from policy.calendar import WEEKDAYS, BusinessCalendar, CountryHolidays, YearlyClosure

POLICY_FILE_ENV = "SUPPORT_POLICY_FILE"
# Repeats after breach are expanded this many at a time; the workflow asks for the next
# window when they have all fired, so an unacknowledged ticket escalates indefinitely.
REPEAT_WINDOW = 24


class PolicyError(ValueError):
    """The policy file is missing, unreadable or invalid; the message names file and field."""


def _zone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError) as err:
        raise ValueError(f"unknown time zone {value!r}") from err
    return value


TimeZoneName = Annotated[str, AfterValidator(_zone)]
_HOURS = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-4]):([0-5]\d)$")


class Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


_Date = date  # a field below is called ``date``


@lru_cache(maxsize=1)
def _holiday_countries() -> frozenset[str]:
    """The country codes and aliases the ``holidays`` package knows, from its registry:
    ``holidays.list_supported_countries`` imports every one of its 250 country modules
    to list them, about 7 MB in every worker and service process; a policy's calendars
    load only their own countries."""
    from holidays.registry import EntityLoader

    return frozenset(EntityLoader.get_country_codes(include_aliases=True))


def _holiday_country(code: str) -> Any:
    """The ``holidays`` package's class for a country code (its subdivisions, categories)."""
    import holidays as package

    if code not in _holiday_countries():
        raise ValueError(
            f"unknown country {code!r}: give an ISO 3166-1 code the holidays package knows,"
            " such as US, CA, GB, DE"
        )
    return getattr(package, code)


class HolidaysSpec(Spec):
    """Public holidays of a ``country`` (and ``subdivision``) from the maintained
    ``holidays`` package, for any year; ``observed``: a holiday on a weekend also closes
    the weekday it is observed on; ``categories``: the package's holiday categories
    (default: public). ``dates`` lists further holiday dates; the older form of the field,
    a plain list of dates, means exactly that (and no country)."""

    country: str | None = None
    subdivision: str | None = None
    observed: bool = True
    categories: list[str] | None = Field(default=None, min_length=1)
    dates: list[_Date] = Field(default_factory=list)

    @field_validator("country")
    @classmethod
    def _known_country(cls, value: str | None) -> str | None:
        if value is not None:
            _holiday_country(value)
        return value

    @field_validator("subdivision")
    @classmethod
    def _known_subdivision(cls, value: str | None, info: ValidationInfo) -> str | None:
        country = info.data.get("country")
        if value is None or country is None:
            return value
        rules = _holiday_country(country)
        known = tuple(rules.subdivisions)
        if value not in known and value not in getattr(rules, "subdivisions_aliases", {}):
            listed = ", ".join(known) if known else "none"
            raise ValueError(f"{country} has no subdivision {value!r}; it has: {listed}")
        return value

    @field_validator("categories")
    @classmethod
    def _known_categories(cls, value: list[str] | None, info: ValidationInfo) -> list[str] | None:
        country = info.data.get("country")
        if value is None or country is None:
            return value
        known = tuple(_holiday_country(country).supported_categories)
        for category in value:
            if category not in known:
                raise ValueError(
                    f"{country} has no holiday category {category!r}; use {', '.join(known)}"
                )
        return value

    @model_validator(mode="after")
    def _country_for_rules(self) -> Self:
        if self.country is None and (self.subdivision is not None or self.categories):
            raise ValueError("subdivision and categories need a country")
        return self

    def rules(self) -> CountryHolidays | None:
        if self.country is None:
            return None
        return CountryHolidays(
            country=self.country,
            subdivision=self.subdivision,
            observed=self.observed,
            categories=tuple(self.categories) if self.categories else ("public",),
        )


class ClosureSpec(Spec):
    """A day the calendar is closed besides its holidays: a one-off ``date``, or every
    year on ``month`` + ``day`` (24 December), or on the ``nth`` (1-5, or ``last``)
    ``weekday`` of ``month``, moved by ``days_after`` days (the day after Thanksgiving:
    the 4th Thursday of November, 1 day after). A plain date is short for ``{date: ...}``."""

    name: str | None = Field(default=None, min_length=1, max_length=80)
    date: _Date | None = None
    month: int | None = Field(default=None, ge=1, le=12)
    day: int | None = Field(default=None, ge=1, le=31)
    weekday: str | None = None
    nth: int | Literal["last"] | None = None
    days_after: int = Field(default=0, ge=-7, le=7)

    @field_validator("weekday")
    @classmethod
    def _known_weekday(cls, value: str | None) -> str | None:
        if value is not None and value not in WEEKDAYS:
            raise ValueError(f"unknown weekday {value!r}; use one of {', '.join(WEEKDAYS)}")
        return value

    @field_validator("nth")
    @classmethod
    def _nth(cls, value: int | str | None) -> int | str | None:
        if isinstance(value, int) and not 1 <= value <= 5:
            raise ValueError("nth must be 1 to 5, or last")
        return value

    @model_validator(mode="after")
    def _one_form(self) -> Self:
        yearly = {
            key for key in ("month", "day", "weekday", "nth") if getattr(self, key) is not None
        }
        if self.date is not None:
            if yearly or self.days_after:
                raise ValueError(
                    f"a closure on a date takes no {', '.join(sorted(yearly) or ['days_after'])}"
                    " (those describe a yearly closure)"
                )
            return self
        forms = "give a date, or month with day, or month with weekday and nth"
        if self.month is None:
            raise ValueError(f"a closure needs a date or a month: {forms}")
        if self.day is not None:
            if self.weekday is not None or self.nth is not None:
                raise ValueError(f"day and weekday/nth exclude each other: {forms}")
            longest = _weeks.monthrange(2024, self.month)[1]  # 2024: a leap year
            if self.day > longest:
                name = _weeks.month_name[self.month]
                raise ValueError(f"day: {name} has at most {longest} days, not {self.day}")
        elif self.weekday is None or self.nth is None:
            raise ValueError(f"a yearly closure needs day, or weekday and nth: {forms}")
        return self

    def rule(self) -> YearlyClosure:
        assert self.month is not None
        return YearlyClosure(
            month=self.month,
            day=self.day,
            weekday=WEEKDAYS.index(self.weekday) if self.weekday is not None else None,
            nth=-1 if self.nth == "last" else self.nth if isinstance(self.nth, int) else None,
            days_after=self.days_after,
            name=self.name or "",
        )


class CalendarSpec(Spec):
    time_zone: TimeZoneName
    always_open: bool = False
    # weekday -> list of "HH:MM-HH:MM" local intervals ("24:00" closes at midnight)
    hours: dict[str, list[str]] = Field(default_factory=dict)
    # Closed all day: a country's holidays (or, the older form, a list of dates) ...
    holidays: HolidaysSpec | None = None
    # ... and the policy's own closures: one-off dates and yearly rules.
    closures: list[ClosureSpec] = Field(default_factory=list)

    @field_validator("holidays", mode="before")
    @classmethod
    def _dates_only(cls, value: Any) -> Any:
        return {"dates": value} if isinstance(value, list | tuple) else value

    @field_validator("closures", mode="before")
    @classmethod
    def _plain_dates(cls, value: Any) -> Any:
        if not isinstance(value, list | tuple):
            return value
        return [{"date": item} if isinstance(item, date | str) else item for item in value]

    @field_validator("hours")
    @classmethod
    def _check_hours(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for day, intervals in value.items():
            if day not in WEEKDAYS:
                raise ValueError(f"unknown weekday {day!r}; use one of {', '.join(WEEKDAYS)}")
            previous_close: time | None = None
            for text in intervals:
                opens, closes = _parse_interval(text, day)
                if previous_close is not None and opens < previous_close:
                    raise ValueError(f"{day}: intervals overlap or are out of order at {text!r}")
                previous_close = closes if closes != time(0) else time.max
        return value

    @model_validator(mode="after")
    def _has_hours(self) -> Self:
        if not self.always_open and not any(self.hours.values()):
            raise ValueError("a calendar needs opening hours unless always_open is true")
        if self.always_open and (
            self.closures or (self.holidays and (self.holidays.country or self.holidays.dates))
        ):
            raise ValueError(
                "an always_open (24x7) calendar is never closed: remove its holidays and closures"
            )
        return self

    def build(self) -> BusinessCalendar:
        if self.always_open:
            return BusinessCalendar.twenty_four_seven(self.time_zone)
        dates = set(self.holidays.dates) if self.holidays else set()
        dates |= {c.date for c in self.closures if c.date is not None}
        return BusinessCalendar(
            time_zone=self.time_zone,
            hours={
                WEEKDAYS.index(day): tuple(_parse_interval(text, day) for text in intervals)
                for day, intervals in self.hours.items()
            },
            holidays=frozenset(dates),
            country_holidays=self.holidays.rules() if self.holidays else None,
            yearly_closures=tuple(c.rule() for c in self.closures if c.date is None),
        )


def _parse_interval(text: str, day: str) -> tuple[time, time]:
    match = _HOURS.match(text)
    if not match:
        raise ValueError(f"{day}: {text!r} is not an interval like '08:00-18:00'")
    oh, om, ch, cm = (int(g) for g in match.groups())
    if ch == 24 and cm != 0:
        raise ValueError(f"{day}: {text!r} closes after 24:00")
    opens = time(oh, om)
    closes = time(0) if ch == 24 else time(ch, cm)
    if closes != time(0) and closes <= opens:
        raise ValueError(f"{day}: {text!r} closes before it opens")
    return opens, closes


_ENV_NAME = r"^[A-Z_][A-Z0-9_]*$"
_EMAIL = re.compile(r"^[^@\s<>]+@[^@\s<>]+\.[^@\s<>]+$")


class ChannelSpec(Spec):
    """``log``; ``webhook`` / ``chat`` (url or url_env); ``pager`` (routing_key or
    routing_key_env, url defaults to PagerDuty's Events API v2); ``email`` (to or to_env,
    the SMTP server from the worker's environment)."""

    type: str
    url: str | None = None
    url_env: str | None = Field(default=None, pattern=_ENV_NAME)
    to: list[str] = Field(default_factory=list)
    to_env: str | None = Field(default=None, pattern=_ENV_NAME)
    routing_key: str | None = Field(default=None, min_length=1)
    routing_key_env: str | None = Field(default=None, pattern=_ENV_NAME)

    @model_validator(mode="after")
    def _check(self) -> Self:
        kinds = [k.value for k in ChannelKind]
        if self.type not in kinds:
            raise ValueError(f"unknown channel type {self.type!r}; use one of {', '.join(kinds)}")
        given = {
            name
            for name in ("url", "url_env", "to", "to_env", "routing_key", "routing_key_env")
            if getattr(self, name)
        }
        allowed = {
            "log": set(),
            "webhook": {"url", "url_env"},
            "chat": {"url", "url_env"},
            "pager": {"url", "url_env", "routing_key", "routing_key_env"},
            "email": {"to", "to_env"},
        }[self.type]
        if given - allowed:
            raise ValueError(f"a {self.type} channel takes no {', '.join(sorted(given - allowed))}")
        if self.type in ("webhook", "chat") and not (self.url or self.url_env):
            raise ValueError(f"a {self.type} channel needs url or url_env")
        if self.type == "pager" and not (self.routing_key or self.routing_key_env):
            raise ValueError("a pager channel needs routing_key or routing_key_env")
        if self.type == "email" and not (self.to or self.to_env):
            raise ValueError("an email channel needs to (addresses) or to_env")
        for address in self.to:
            if not _EMAIL.match(address):
                raise ValueError(f"to: {address!r} is not an email address")
        if self.url and not re.match(r"^https?://", self.url):
            raise ValueError(f"url {self.url!r} must start with http:// or https://")
        return self

    def to_channel(self) -> Channel:
        return Channel.model_validate(self.model_dump())


class TargetSpec(Spec):
    """Someone to notify: channels tried in order (the next when one fails for longer
    than ``delivery.failover_after``), then the ``fallback`` target."""

    description: str = ""
    channels: list[ChannelSpec] = Field(min_length=1)
    time_zone: TimeZoneName | None = None
    fallback: str | None = None


class StepAt(Spec):
    """When a step falls due: a fixed ``offset`` of the ticket's clock after opening, or a
    ``share`` of the response target (0.75 = three quarters of the way to breach)."""

    offset: timedelta | None = None
    share: float | None = Field(default=None, ge=0, le=10)

    @model_validator(mode="after")
    def _one_of(self) -> Self:
        if (self.offset is None) == (self.share is None):
            raise ValueError("give exactly one of offset or share")
        if self.offset is not None and self.offset < timedelta(0):
            raise ValueError("offset must not be negative")
        return self

    def amount(self, target: timedelta | None) -> timedelta:
        if self.offset is not None:
            return self.offset
        if target is None:
            raise ValueError("a share of the target needs a response target")
        assert self.share is not None
        return target * self.share


# The targets beyond the first response, as the policy names them; a clock's planned steps
# are named ``<metric>-<cycle>-<step>`` (policy.plan).
CLOCK_METRICS = ("next_reply", "resolution")
_CYCLE_STEP = re.compile(rf"^(?P<metric>{'|'.join(CLOCK_METRICS)})-[1-9][0-9]*-(?P<step>.+)$")


class StepSpec(Spec):
    name: str = Field(pattern=r"^[a-z][a-z0-9-]{0,31}$")
    kind: StepKind
    at: StepAt
    targets: list[str] = Field(min_length=1)
    # Only on repeat steps: fire every ``repeat_every`` after ``at`` until acknowledged.
    repeat_every: timedelta | None = None
    max_repeats: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _repeat(self) -> Self:
        if self.kind is StepKind.REPEAT:
            if self.repeat_every is None or self.repeat_every < timedelta(minutes=1):
                raise ValueError("a repeat step needs repeat_every of at least one minute")
        elif self.repeat_every is not None or self.max_repeats is not None:
            raise ValueError("repeat_every and max_repeats belong to repeat steps only")
        return self


class SeverityRule(Spec):
    """Per-severity differences from the tier: a faster target or a different ladder."""

    response_target: timedelta | None = None
    ladder: list[StepSpec] | None = None


class ClockSpec(Spec):
    """A target beyond the first response (``next_reply``, ``resolution``): due ``target``
    after its clock starts, on the tier's calendar, with a ladder of its own (warning,
    breach at share 1.0, repeats; shares are of this target). ``severities`` gives a
    severity its own target. A ``pausable`` clock stops while the ticket waits on the
    customer and its deadline moves by the time paused (docs/policy.md#more-targets)."""

    target: timedelta = Field(gt=timedelta(0))
    severities: dict[Severity, timedelta] = Field(default_factory=dict)
    pausable: bool = True
    ladder: list[StepSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _check(self) -> Self:
        _check_ladder(self.ladder, "ladder")
        for severity, target in self.severities.items():
            if target <= timedelta(0):
                raise ValueError(f"severities.{severity.value}: a target must be positive")
        return self

    def target_for(self, severity: Severity) -> timedelta:
        return self.severities.get(severity, self.target)


class TierSpec(Spec):
    commercial_sla: bool = True
    calendar: str | None = None
    response_target: timedelta | None = None
    ladder: list[StepSpec] = Field(min_length=1)
    severities: dict[Severity, SeverityRule] = Field(default_factory=dict)
    # Community: close a ticket nobody touched for this long.
    idle_close_after: timedelta | None = None
    # More targets (the first response is never paused): after each customer reply, the
    # next agent reply is due within ``next_reply``; the ticket is resolved within
    # ``resolution``.
    next_reply: ClockSpec | None = None
    resolution: ClockSpec | None = None

    def clock(self, metric: str) -> ClockSpec | None:
        return {"next_reply": self.next_reply, "resolution": self.resolution}.get(metric)

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.commercial_sla:
            if self.response_target is None or self.calendar is None:
                raise ValueError("a tier with a commercial SLA needs response_target and calendar")
            _check_ladder(self.ladder, "ladder")
            for severity, rule in self.severities.items():
                if rule.ladder is not None:
                    _check_ladder(rule.ladder, f"severities.{severity.value}.ladder")
        else:
            if self.response_target is not None:
                raise ValueError("a tier without a commercial SLA has no response_target")
            if self.next_reply is not None or self.resolution is not None:
                raise ValueError(
                    "a tier without a commercial SLA has no next_reply or resolution target"
                )
            for i, step in enumerate(self.ladder):
                if step.kind is not StepKind.INTAKE or step.at.offset is None:
                    raise ValueError(
                        f"ladder.{i}: a tier without a commercial SLA has only intake steps"
                        " at an offset (there is no target to take a share of)"
                    )
        return self

    def step_names(self) -> set[str]:
        """The steps a contract contact's ``at_steps`` may name: the response ladders'
        (``breach``) and each target clock's as ``<metric>-<step>``, every cycle
        (``resolution-breach``); ``names_step`` also takes one cycle's."""
        names = {step.name for step in self.ladder}
        for rule in self.severities.values():
            names |= {step.name for step in rule.ladder or []}
        for metric in CLOCK_METRICS:
            clock = self.clock(metric)
            names |= {f"{metric}-{step.name}" for step in clock.ladder} if clock else set()
        return names

    def names_step(self, name: str) -> bool:
        """Whether a contact's ``at_steps`` entry names a step of this tier: one of
        ``step_names()``, or a target clock's step of one cycle as the plan names it,
        ``<metric>-<cycle>-<step>`` (``resolution-1-breach``)."""
        if name in self.step_names():
            return True
        cycle = _CYCLE_STEP.match(name)
        return cycle is not None and f"{cycle['metric']}-{cycle['step']}" in self.step_names()

    def rule_for(self, severity: Severity) -> tuple[timedelta | None, list[StepSpec]]:
        rule = self.severities.get(severity)
        target = rule.response_target if rule and rule.response_target else self.response_target
        ladder = rule.ladder if rule and rule.ladder else self.ladder
        return target, ladder


def _check_ladder(ladder: list[StepSpec], where: str) -> None:
    kinds = [step.kind for step in ladder]
    names = [step.name for step in ladder]
    if len(set(names)) != len(names):
        raise ValueError(f"{where}: step names must be unique")
    for needed in (StepKind.WARNING, StepKind.BREACH, StepKind.REPEAT):
        if needed not in kinds:
            raise ValueError(f"{where}: needs a {needed.value} step")
    breach = next(step for step in ladder if step.kind is StepKind.BREACH)
    if breach.at.share != 1.0:
        raise ValueError(f"{where}: the breach step must be at share 1.0 (the response target)")
    for step in ladder:
        if step.kind is StepKind.WARNING and not (
            (step.at.share is not None and step.at.share < 1.0) or step.at.offset is not None
        ):
            raise ValueError(f"{where}: warning step {step.name!r} must fall before the breach")


class ContactSpec(Spec):
    """A customer's named contact or direct operational channel, notified at given steps."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")
    channels: list[ChannelSpec] = Field(min_length=1)
    at_steps: list[str] = Field(default_factory=lambda: ["intake", "breach"])
    time_zone: TimeZoneName | None = None
    fallback: str | None = None


class CustomerSpec(Spec):
    tier: Tier
    # Business-hours tiers use this calendar instead of the tier's (the customer's own
    # time zone and holidays); 24x7 tiers stay 24x7.
    calendar: str | None = None
    contacts: list[ContactSpec] = Field(default_factory=list)
    email_domains: list[str] = Field(default_factory=list)
    intake_channels: list[str] = Field(default_factory=list)


class StatementOfWorkSpec(Spec):
    targets: list[str] = Field(min_length=1)
    remind_after: timedelta
    expire_after: timedelta

    @model_validator(mode="after")
    def _order(self) -> Self:
        if not timedelta(0) < self.remind_after < self.expire_after:
            raise ValueError("remind_after must be positive and shorter than expire_after")
        return self


class DeliverySpec(Spec):
    # A channel that keeps failing (5xx, timeouts) is retried with backoff this long, then
    # the next channel of the target is tried, then its fallback target.
    failover_after: timedelta = Field(default=timedelta(minutes=2))

    @field_validator("failover_after")
    @classmethod
    def _bounds(cls, value: timedelta) -> timedelta:
        if not timedelta(seconds=10) <= value <= timedelta(hours=1):
            raise ValueError("failover_after must lie between 10 seconds and 1 hour")
        return value


class LimitsSpec(Spec):
    # A ticket that escalates for days continues as new (same id, fresh history) past
    # this many events, well below Temporal's 50,000-event limit.
    continue_as_new_after_events: int = Field(default=5000, ge=50, le=40_000)


# The support policy's order of tiers: each (faster, slower) pair, compared per severity.
_FASTER_THAN = ((Tier.MISSION_CRITICAL, Tier.PREMIUM), (Tier.PREMIUM, Tier.STANDARD))
# The tiers the support policy promises round the clock.
_TWENTY_FOUR_SEVEN = (Tier.PREMIUM, Tier.MISSION_CRITICAL)


class Policy(Spec):
    version: str = Field(min_length=1)
    limits: LimitsSpec = Field(default_factory=LimitsSpec)
    delivery: DeliverySpec = Field(default_factory=DeliverySpec)
    default_severity: Severity = Severity.SEV3
    calendars: dict[str, CalendarSpec]
    targets: dict[str, TargetSpec]
    tiers: dict[Tier, TierSpec]
    out_of_scope_categories: dict[str, str] = Field(default_factory=dict)
    statement_of_work: StatementOfWorkSpec
    customers: dict[str, CustomerSpec] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _references(self) -> Self:
        missing_tiers = set(Tier) - set(self.tiers)
        if missing_tiers:
            raise ValueError(f"tiers: missing {sorted(t.value for t in missing_tiers)}")
        for tier, spec in self.tiers.items():
            if spec.calendar is not None and spec.calendar not in self.calendars:
                raise ValueError(f"tiers.{tier.value}.calendar: unknown calendar {spec.calendar!r}")
            ladders = [("ladder", spec.ladder)] + [
                (f"severities.{sev.value}.ladder", rule.ladder)
                for sev, rule in spec.severities.items()
                if rule.ladder
            ]
            ladders += [
                (f"{metric}.ladder", clock.ladder)
                for metric, clock in (
                    ("next_reply", spec.next_reply),
                    ("resolution", spec.resolution),
                )
                if clock is not None
            ]
            for where, ladder in ladders:
                for i, step in enumerate(ladder):
                    for target in step.targets:
                        if target not in self.targets:
                            raise ValueError(
                                f"tiers.{tier.value}.{where}.{i}.targets: unknown target {target!r}"
                            )
        for target_name, target_spec in self.targets.items():
            _check_fallbacks(self.targets, f"targets.{target_name}", target_spec.fallback)
        for target in self.statement_of_work.targets:
            if target not in self.targets and target != "reporter":
                raise ValueError(f"statement_of_work.targets: unknown target {target!r}")
        for name, customer in self.customers.items():
            if customer.calendar is not None and customer.calendar not in self.calendars:
                raise ValueError(
                    f"customers.{name}.calendar: unknown calendar {customer.calendar!r}"
                )
            tier_spec = self.tiers[customer.tier]
            known = ", ".join(sorted(tier_spec.step_names()))
            if tier_spec.next_reply or tier_spec.resolution:
                known += "; a target's step of one cycle as <metric>-<cycle>-<step>"
            for i, contact in enumerate(customer.contacts):
                _check_fallbacks(self.targets, f"customers.{name}.contacts.{i}", contact.fallback)
                for step_name in contact.at_steps:
                    if not tier_spec.names_step(step_name):
                        raise ValueError(
                            f"customers.{name}.contacts.{i}.at_steps: {step_name!r} is not a step"
                            f" of the {customer.tier.value} ladders ({known})"
                        )
        return self

    @model_validator(mode="after")
    def _keeps_the_support_policy(self) -> Self:
        """The support policy's promises (support-policy.md): a higher tier is never slower
        than a lower one for any severity (Mission Critical <= Premium <= Standard), only a
        tier without a commercial SLA closes idle tickets, and Premium and Mission Critical
        run 24x7, whatever a contract's calendar says."""
        problems: list[tuple[tuple[str, ...], str]] = []
        for faster, slower in _FASTER_THAN:
            problems += self._slower_targets(faster, slower)
        for tier, spec in self.tiers.items():
            if spec.commercial_sla and spec.idle_close_after is not None:
                problems.append(
                    (
                        ("tiers", tier.value, "idle_close_after"),
                        "a tier with a commercial SLA never closes a ticket for being idle"
                        " (only a tier without one, like Community, may)",
                    )
                )
        for tier in _TWENTY_FOUR_SEVEN:
            name = self.tiers[tier].calendar
            spec_of = self.calendars.get(name) if name is not None else None
            if spec_of is not None and not spec_of.always_open:
                problems.append(
                    (
                        ("tiers", tier.value, "calendar"),
                        f"{TIER_LABELS[tier]} is 24x7 in the support policy, but calendar"
                        f" {name!r} keeps business hours: use an always_open calendar",
                    )
                )
        for customer_name, customer in self.customers.items():
            contract_calendar = (
                self.calendars.get(customer.calendar) if customer.calendar is not None else None
            )
            if (
                customer.tier in _TWENTY_FOUR_SEVEN
                and contract_calendar is not None
                and not contract_calendar.always_open
            ):
                problems.append(
                    (
                        ("customers", customer_name, "calendar"),
                        f"a {TIER_LABELS[customer.tier]} contract is 24x7 in the support"
                        f" policy, but calendar {customer.calendar!r} keeps business hours (a"
                        " 24x7 tier keeps its 24x7 clock, so it would never apply): remove it",
                    )
                )
        if problems:
            raise ValidationError.from_exception_data(
                "Policy",
                [
                    InitErrorDetails(
                        type=PydanticCustomError("support_policy", "{problem}", {"problem": text}),
                        loc=loc,
                        input=None,
                    )
                    for loc, text in problems
                ],
            )
        return self

    def _slower_targets(self, faster: Tier, slower: Tier) -> list[tuple[tuple[str, ...], str]]:
        """Where ``faster``'s response targets are slower than ``slower``'s, per severity
        (grouped by the field that sets the target)."""
        fast_spec, slow_spec = self.tiers[faster], self.tiers[slower]
        if not slow_spec.commercial_sla:
            return []
        found: dict[tuple[str, ...], list[str]] = {}
        for severity in Severity:
            promised = slow_spec.rule_for(severity)[0]
            if promised is None:
                continue
            target = fast_spec.rule_for(severity)[0] if fast_spec.commercial_sla else None
            if target is not None and target <= promised:
                continue
            rule = fast_spec.severities.get(severity)
            if not fast_spec.commercial_sla:
                loc: tuple[str, ...] = ("tiers", faster.value, "commercial_sla")
            elif rule is not None and rule.response_target is not None:
                loc = ("tiers", faster.value, "severities", severity.value, "response_target")
            else:
                loc = ("tiers", faster.value, "response_target")
            got = "no target" if target is None else span(target)
            found.setdefault(loc, []).append(f"{severity.value} ({got} vs {span(promised)})")
        return [
            (
                loc,
                f"{TIER_LABELS[faster]} is slower than {TIER_LABELS[slower]} for"
                f" {', '.join(where)}: a higher tier must never be slower than a lower one",
            )
            for loc, where in found.items()
        ]

    def calendar_for(self, tier: Tier, customer_id: str) -> tuple[str | None, BusinessCalendar]:
        spec = self.tiers[tier]
        name = spec.calendar
        customer = self.customers.get(customer_id)
        if name is not None and customer and customer.calendar:
            if not self.calendars[name].always_open:
                name = customer.calendar
        if name is None:
            return None, BusinessCalendar.twenty_four_seven()
        return name, self.calendars[name].build()

    def customer_for_email(self, address: str) -> str | None:
        """The customer whose contract lists the address's domain (or a parent domain);
        the most specific domain wins when several contracts match."""
        domain = address.rpartition("@")[2].strip().lower()
        best: tuple[int, str] | None = None
        for name, customer in self.customers.items():
            for known in customer.email_domains:
                known = known.lower().strip(".")
                if (domain == known or domain.endswith("." + known)) and (
                    best is None or len(known) > best[0]
                ):
                    best = (len(known), name)
        return best[1] if best else None

    def missing_settings(self, environ: Mapping[str, str]) -> list[str]:
        """Environment variables the policy's channels need that are not set (the worker
        warns at start; a delivery on such a channel falls over to the next one)."""
        channels = [
            (f"targets.{name}", c) for name, t in self.targets.items() for c in t.channels
        ] + [
            (f"customers.{name}.{contact.name}", c)
            for name, customer in self.customers.items()
            for contact in customer.contacts
            for c in contact.channels
        ]
        missing: list[str] = []
        for where, channel in channels:
            for variable in (channel.url_env, channel.to_env, channel.routing_key_env):
                if variable and not environ.get(variable):
                    missing.append(f"{variable} ({where}, {channel.type})")
            if channel.type == "email" and not environ.get("SUPPORT_SMTP_HOST"):
                missing.append(f"SUPPORT_SMTP_HOST ({where}, email)")
        return missing

    def recipients(self, names: list[str]) -> list[Recipient]:
        return [self.recipient(n) for n in names]

    def recipient(self, name: str) -> Recipient:
        target = self.targets[name]
        return Recipient(
            name=name,
            channels=[c.to_channel() for c in target.channels],
            time_zone=target.time_zone,
            fallback=self.recipient(target.fallback) if target.fallback else None,
        )

    def contact(self, contact: ContactSpec) -> Recipient:
        return Recipient(
            name=contact.name,
            role="customer",
            channels=[c.to_channel() for c in contact.channels],
            time_zone=contact.time_zone,
            fallback=self.recipient(contact.fallback) if contact.fallback else None,
        )


def _check_fallbacks(targets: dict[str, TargetSpec], where: str, first: str | None) -> None:
    seen: list[str] = []
    current = first
    while current is not None:
        if current not in targets:
            raise ValueError(f"{where}.fallback: unknown target {current!r}")
        if current in seen:
            raise ValueError(f"{where}.fallback: the fallbacks loop ({' -> '.join(seen)})")
        seen.append(current)
        current = targets[current].fallback

"""Every message of the public contract, one pydantic model each.

Workflows import this module inside ``workflow.unsafe.imports_passed_through()``; it holds
no I/O and no clock, so it is safe on both sides. Field names are the wire format that
clients in other languages use: snake_case JSON, aware UTC timestamps in ISO 8601.
"""

from __future__ import annotations

import re
import unicodedata
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)

TICKET_ID_PATTERN = r"^[A-Za-z0-9._-]{1,64}$"
TICKET_WORKFLOW_PREFIX = "ticket-"
SOW_WORKFLOW_PREFIX = "sow-"

# A retroactive open time may lie at most this far in the future (clock skew between the
# intake system and us) and at most this far in the past (an email found in a backlog).
OPENED_AT_MAX_FUTURE_SKEW = timedelta(minutes=5)
OPENED_AT_MAX_AGE = timedelta(days=30)

# Text limits, so that one ticket cannot bloat histories, messages and reports.
MAX_SUBJECT = 200
MAX_DESCRIPTION = 20_000
MAX_NAME = 128
MAX_NOTE = 2_000


class Tier(StrEnum):
    COMMUNITY = "community"
    STANDARD = "standard"
    PREMIUM = "premium"
    MISSION_CRITICAL = "mission_critical"


class Severity(StrEnum):
    SEV1 = "sev1"
    SEV2 = "sev2"
    SEV3 = "sev3"
    SEV4 = "sev4"


class TicketState(StrEnum):
    OPEN = "open"
    ACKNOWLEDGED = "acknowledged"
    RESOLVED = "resolved"
    ROUTED_TO_SOW = "routed_to_sow"
    CLOSED = "closed"


class SowOutcome(StrEnum):
    PENDING = "pending"
    ACCEPTED = "accepted"
    DECLINED = "declined"
    EXPIRED = "expired"
    # The statement-of-work child itself failed (not a decision, not a time-out).
    FAILED = "failed"


# Never meant in text: C0 controls other than tab, line feed and carriage return, DEL, C1
# controls, and the bidirectional overrides and isolates that make text display in another
# order than it is stored (a customer id that reads differently on the board). Intake
# refuses them; the mailbox strips them from what it reads.
CONTROL_CHARACTERS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
LINE_BREAKS = re.compile(r"[\n\r\u2028\u2029]")


def _no_control_chars(value: str) -> str:
    if CONTROL_CHARACTERS.search(value):
        raise ValueError("must not contain control characters")
    return value


def _no_invisible_chars(value: str) -> str:
    # Identifiers are compared and shown as they are: "acme\u200b" would be another
    # customer that reads as "acme" on the board and in reports.
    for char in value:
        if unicodedata.category(char) == "Cf":
            code = f"U+{ord(char):04X}"
            raise ValueError(f"must not contain invisible formatting characters ({code})")
    return value


def _aware_utc(value: datetime) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("must be an aware timestamp with a UTC offset, e.g. 2026-11-26T09:30:00Z")
    try:
        return value.astimezone(UTC)
    except OverflowError:  # e.g. 9999-12-31T23:59:59-01:00 is in the year 10000 in UTC
        raise ValueError("lies outside the years 1 to 9999 in UTC") from None


def _single_line(value: str) -> str:
    if LINE_BREAKS.search(value):
        raise ValueError("must be a single line")
    return value


def _no_encoded_word(value: str) -> str:
    # Mail software decodes "=?charset?q?...?=" in headers, into a line break or another
    # address: an address is only ever meant literally.
    if "=?" in value:
        raise ValueError("must not contain an RFC 2047 encoded word ('=?')")
    return value


Name = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_NAME),
    AfterValidator(_no_control_chars),
    AfterValidator(_single_line),
]
Note = Annotated[str, StringConstraints(max_length=MAX_NOTE), AfterValidator(_no_control_chars)]
UtcDatetime = Annotated[datetime, AfterValidator(_aware_utc)]
TicketId = Annotated[str, StringConstraints(pattern=TICKET_ID_PATTERN)]
IntegrationName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")]
# A surface's id for one agent action (``Action.request_id``).
RequestId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,99}$")]
# The local part excludes RFC 5322's specials: "a:b@x.example" is a group that mails b,
# "[a](http://x)@x.example" no address at all.
EmailAddress = Annotated[
    str,
    StringConstraints(
        strip_whitespace=True,
        max_length=254,
        pattern=r"^[^@\s<>()\[\]:;\\\"',]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$",
    ),
    AfterValidator(_no_encoded_word),
]


class Message(BaseModel):
    """Base of every contract message: unknown fields are refused, not silently dropped."""

    model_config = ConfigDict(extra="forbid", frozen=False)


class TicketInput(Message):
    """Workflow input of ``SupportTicket``.

    ``tier`` is what the caller claims: a customer with a contract runs at its contracted
    tier whatever is claimed (the ticket records a correction), and may omit it. Without
    ``severity`` the policy's ``default_severity`` applies."""

    ticket_id: TicketId
    customer_id: Name
    tier: Tier | None = None
    severity: Severity | None = None
    subject: Annotated[
        str, StringConstraints(max_length=MAX_SUBJECT), AfterValidator(_no_control_chars)
    ] = ""
    description: Annotated[
        str, StringConstraints(max_length=MAX_DESCRIPTION), AfterValidator(_no_control_chars)
    ] = ""
    category: Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,63}$")] = "incident"
    reporter_email: EmailAddress | None = None
    intake_channel: Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,31}$")] = "api"
    opened_at: UtcDatetime | None = None
    # The intake integration (API token) that opened the ticket; None for raw starts.
    integration: IntegrationName | None = None
    # Internal: set only by the workflow itself when a long-lived ticket continues as new
    # (same workflow id, fresh history). Intake clients never send it.
    continued: TicketCarry | None = None

    @property
    def workflow_id(self) -> str:
        return ticket_workflow_id(self.ticket_id)


def ticket_workflow_id(ticket_id: str) -> str:
    return f"{TICKET_WORKFLOW_PREFIX}{ticket_id}"


def sow_workflow_id(ticket_id: str) -> str:
    return f"{SOW_WORKFLOW_PREFIX}{ticket_id}"


def describe_validation_error(err: ValidationError, top: str = "(ticket)") -> list[str]:
    """``field.path: what is wrong`` for each problem pydantic found."""
    problems = []
    for error in err.errors():
        field = ".".join(str(part) for part in error["loc"]) or top
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown field"
        problems.append(f"{field}: {message}")
    return problems


def new_address_problem(address: str) -> str | None:
    """What intake refuses in an address beyond the contract's type: control characters
    (pydantic's pattern engine does not count U+001C-U+001F as whitespace) and invisible
    formatting characters."""
    for check in (_no_control_chars, _no_invisible_chars):
        try:
            check(address)
        except ValueError as err:
            return str(err)
    return None


def intake_problems(ticket: TicketInput) -> list[str]:
    """Rules for new tickets, checked by every intake path but not by the contract's
    types, which also decode live tickets' histories on replay: a ticket opened before a
    rule existed must keep running (docs/versioning.md). Identifiers hold no
    invisible formatting characters ("acme\u200b" would be another customer that reads as
    "acme"), and the reporter's address no control characters either."""
    problems = []
    try:
        _no_invisible_chars(ticket.customer_id)
    except ValueError as err:
        problems.append(f"customer_id: {err}")
    if ticket.reporter_email is not None:
        problem = new_address_problem(ticket.reporter_email)
        if problem:
            problems.append(f"reporter_email: {problem}")
    return problems


def opened_at_problem(opened_at: datetime, now: datetime) -> str | None:
    """Why a retroactive ``opened_at`` is unacceptable at ``now``, or None if it is fine."""
    if opened_at > now + OPENED_AT_MAX_FUTURE_SKEW:
        return f"opened_at: {opened_at.isoformat()} lies in the future"
    if opened_at < now - OPENED_AT_MAX_AGE:
        days = OPENED_AT_MAX_AGE.days
        return f"opened_at: {opened_at.isoformat()} is more than {days} days in the past"
    return None


# --- signals ---------------------------------------------------------------------------


class Action(Message):
    """An agent action (the signals and updates of the same names). ``request_id``: the
    surface's id for this one action. The ticket applies an id once, whichever of its update
    and its signal arrives first (a surface whose update found no worker sends the signal
    too), and an update repeated with an applied id answers with the status without acting
    again. Without it every message acts (and none is written: the payload is what the
    previous release sent)."""

    request_id: RequestId | None = Field(default=None, exclude_if=lambda v: v is None)


class Acknowledge(Action):
    """``at``: when the agent acted, stamped by the surface that received it. The ticket
    counts the acknowledgement at that instant (never later than its own clock, never
    before it opened) and records when it processed it; without ``at`` it counts when
    processed."""

    agent: Name
    note: Note | None = None
    at: UtcDatetime | None = None


class AgentReply(Action):
    """An agent answered the customer (publicly). ``at`` as for ``Acknowledge``: when the
    agent acted, stamped by the surface."""

    agent: Name
    summary: Note | None = None
    at: UtcDatetime | None = None


class AwaitCustomer(Action):
    """The ticket waits on the customer (an answer, logs, a test): the clocks the policy
    marks pausable stop until the customer replies. ``at`` as for ``Acknowledge``."""

    by: Name
    reason: Annotated[Note, StringConstraints(min_length=1)]
    at: UtcDatetime | None = None


class ChangeSeverity(Action):
    severity: Severity
    by: Name
    reason: Note | None = None


class MarkOutOfScope(Action):
    by: Name
    reason: Annotated[Note, StringConstraints(min_length=1)]


class Resolve(Action):
    by: Name
    summary: Note | None = None
    # As for Acknowledge: resolving an open ticket is also its first response.
    at: UtcDatetime | None = None


class AdoptPolicy(Action):
    """Move a ticket to another policy version (an explicit, recorded operation; see
    ``support-ops policy adopt``): its deadlines and ladder are recomputed under that
    version from the original open time."""

    version: Annotated[str, StringConstraints(min_length=1, max_length=MAX_NAME)]
    by: Name
    reason: Note | None = None


# The customer of a ticket whose requester is not (yet) verified at a contracted domain.
UNVERIFIED_CUSTOMER = "community"


class VerifyRequester(Action):
    """The requester of an unverified Community ticket (customer ``community``) proved
    ``address`` is theirs (the confirmation link mailed to it): the ticket takes the
    contract of ``customer_id`` under the policy in force, its deadlines planned again from
    when it opened (the clock starts at submission). ``at``: when the requester confirmed.
    Sent by intake only (docs/security.md#verified-requesters)."""

    customer_id: Name
    address: EmailAddress
    by: Name = "intake"
    at: UtcDatetime | None = None


class CustomerReply(Message):
    """The customer wrote again about an open ticket (e.g. a reply to the support mailbox):
    recorded on the ticket, never a new ticket. ``reference`` identifies the message (its
    Message-ID) so a redelivered reply is recorded once."""

    received_at: UtcDatetime
    subject: Annotated[Note, StringConstraints(max_length=300)] = ""
    reference: Annotated[str, StringConstraints(min_length=1, max_length=300)]
    via: Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,31}$")] = "email"


class RejectedSignal(Message):
    """A signal whose payload did not validate: recorded on the ticket, never applied."""

    signal: str
    problems: list[str]


class SowDecision(Message):
    decision: Literal["accepted", "declined"]
    by: Name
    reference: (
        Annotated[str, StringConstraints(max_length=MAX_NAME), AfterValidator(_no_control_chars)]
        | None
    ) = None


# --- resolved policy for one ticket (produced by an activity, pinned in history) --------


class ChannelKind(StrEnum):
    LOG = "log"  # a structured log line (always works; the last resort)
    WEBHOOK = "webhook"  # generic JSON POST with the step's fields
    CHAT = "chat"  # Slack-compatible incoming webhook (text + blocks)
    PAGER = "pager"  # PagerDuty Events API v2
    EMAIL = "email"  # SMTP


class Channel(Message):
    """One way of reaching a target. The ``*_env`` fields name environment variables read
    by the worker at delivery time, so secrets (webhook URLs, routing keys, addresses
    that should not sit in history) stay out of the policy file and of Temporal."""

    type: ChannelKind
    url: str | None = None
    url_env: str | None = None
    # email: addresses, or a variable holding a comma-separated list
    to: list[str] = Field(default_factory=list)
    to_env: str | None = None
    # pager: the PagerDuty integration's routing key, or a variable holding it
    routing_key: str | None = None
    routing_key_env: str | None = None


class Recipient(Message):
    name: str
    channels: list[Channel]
    # ``responder``: the vendor's own people, who may acknowledge (they get acknowledge
    # links); ``customer``: a customer's contact, told of the ticket and its deadline only.
    role: Literal["responder", "customer"] = "responder"
    # Deadlines in messages are shown in this zone (and in UTC); default the ticket's.
    time_zone: str | None = None
    # Who takes over when none of this recipient's channels delivers in time.
    fallback: Recipient | None = None

    def chain(self) -> list[Recipient]:
        """This recipient and its fallbacks, in order."""
        found: list[Recipient] = []
        current: Recipient | None = self
        while current is not None and current not in found:
            found.append(current)
            current = current.fallback
        return found

    def pages(self) -> bool:
        return any(c.type is ChannelKind.PAGER for r in self.chain() for c in r.channels)


class Metric(StrEnum):
    """An SLA target: the first response (``response_*`` fields), the next reply after
    each customer reply, and the resolution."""

    FIRST_RESPONSE = "first_response"
    NEXT_REPLY = "next_reply"
    RESOLUTION = "resolution"


class TargetStatus(Message):
    """One SLA target of the ticket, on the ticket's clock. ``due_at`` includes the time
    paused so far; while ``paused_since`` is set the clock is stopped (nothing escalates)
    and the deadline moves on resume. ``breached_at`` is the deadline in force when the
    breach happened."""

    metric: Metric
    target: timedelta
    # The n-th clock of this metric (next reply: one per customer reply answered).
    cycle: int = 1
    started_at: UtcDatetime
    due_at: UtcDatetime | None = None
    met_at: UtcDatetime | None = None
    breached: bool = False
    breached_at: UtcDatetime | None = None
    pausable: bool = False
    # Wall-clock time the clock has been stopped, and since when it is stopped now.
    paused: timedelta = timedelta(0)
    paused_since: UtcDatetime | None = None
    # Business time paused, for business-hours tiers (what moves the deadline).
    paused_business: timedelta = timedelta(0)
    # The customer answered at this instant but the policy could not plan the moved
    # deadline then: the clock stays stopped, its pause ending here, until a plan does.
    resumed_at: UtcDatetime | None = Field(default=None, exclude_if=lambda v: v is None)

    @property
    def running(self) -> bool:
        return self.met_at is None and self.paused_since is None


class StepKind(StrEnum):
    INTAKE = "intake"
    WARNING = "warning"
    BREACH = "breach"
    REPEAT = "repeat"


class PlannedStep(Message):
    """One escalation step with its instant already computed on the ticket's clock."""

    name: str
    kind: StepKind
    due_at: UtcDatetime
    recipients: list[Recipient]


class ClockRequest(Message):
    """A target clock to plan: its start and the time it has been paused (on the ticket's
    clock); ``repeats_after`` as for the response ladder."""

    metric: Metric
    cycle: int = 1
    started_at: UtcDatetime
    # Time paused so far on the ticket's clock, and a pause that just ended (its open time
    # on the calendar is added to it).
    paused_business: timedelta = timedelta(0)
    pause_from: UtcDatetime | None = None
    pause_to: UtcDatetime | None = None
    repeats_after: UtcDatetime | None = None


class PlannedClock(Message):
    """A target beyond the first response, planned: its deadline and its own ladder (step
    names ``<metric>-<cycle>-<step>``), the paused time already added."""

    metric: Metric
    cycle: int = 1
    target: timedelta
    pausable: bool
    started_at: UtcDatetime
    due_at: UtcDatetime
    steps: list[PlannedStep]
    more_steps: bool = False
    # The time paused on the ticket's clock, every pause so far included.
    paused_business: timedelta = timedelta(0)


class SowTerms(Message):
    recipients: list[Recipient]
    remind_after: timedelta
    expire_after: timedelta
    failover_after: timedelta = timedelta(minutes=2)


class TicketPlan(Message):
    policy_version: str
    # The tier the ticket runs at: the contracted tier for a customer with a contract,
    # otherwise the claimed one (Community when none was claimed).
    tier: Tier
    severity: Severity
    # Why the tier differs from the claim, e.g. "contract example-bank" (None: as claimed).
    entitlement: str | None = None
    commercial_sla: bool
    calendar: str | None
    time_zone: str
    response_target: timedelta | None
    response_due_at: UtcDatetime | None
    steps: list[PlannedStep]
    # True when the ladder repeats beyond the expanded steps: ask for the next window
    # once they have all fired.
    more_steps: bool = False
    out_of_scope_reason: str | None = None
    idle_close_after: timedelta | None = None
    sow: SowTerms
    # Start a fresh run (continue-as-new, same workflow id) past this many history events.
    history_limit: int = 5000
    # A channel that keeps failing is retried this long before the next one is tried.
    failover_after: timedelta = timedelta(minutes=2)
    # The targets beyond the first response (docs/policy.md#more-targets): those the
    # request named, or at intake the ones that start with the ticket (resolution).
    clocks: list[PlannedClock] = Field(default_factory=list)
    # Whether the tier has a next-reply target (its clock starts at a customer reply).
    next_reply_target: timedelta | None = None

    @model_validator(mode="after")
    def _share_equal_recipients(self) -> TicketPlan:
        """One object for each distinct recipient in the plan. A ladder names the same few
        recipients in every step (a Premium plan under the default policy: 31 in 28 steps,
        33 objects with the fallbacks, 4 of them distinct), and each decoded copy with its
        channels cost a cached ticket about 2 KB: 57 of its about 230 KiB
        (docs/performance.md#worker-settings). The plan's JSON is unchanged; recipients
        are never changed in place."""
        shared: dict[str, list[Recipient]] = {}
        for step in self.all_steps():
            step.recipients = [_shared(shared.setdefault(r.name, []), r) for r in step.recipients]
        return self

    def all_steps(self) -> list[PlannedStep]:
        """The steps of the first-response ladder and of every planned clock."""
        return [*self.steps, *(step for clock in self.clocks for step in clock.steps)]


def _shared(same_name: list[Recipient], recipient: Recipient) -> Recipient:
    """The recipient in ``same_name`` equal to ``recipient``, else ``recipient`` (added)."""
    for known in same_name:
        if known == recipient:
            return known
    same_name.append(recipient)
    return recipient


class PlanRequest(Message):
    ticket: TicketInput
    # None: the policy's default severity.
    severity: Severity | None
    opened_at: UtcDatetime
    # Expand repeats falling due after this instant (the last repeat already sent).
    repeats_after: UtcDatetime | None = None
    # The version the ticket pinned: the plan is resolved under that version's rules
    # (kept in the policy archive), whatever file is loaded now. None at intake.
    pinned_version: str | None = None
    # The tier the ticket runs at (after the entitlement check at intake); None at intake.
    tier: Tier | None = None
    # The target clocks to plan; None: the ones that start at intake (a new ticket, or one
    # planned before targets existed).
    clocks: list[ClockRequest] | None = None


# --- notifications and the ledger --------------------------------------------------------


class StepDelivery(Message):
    """Deliver one step to its recipients; each delivery is keyed
    ``<workflow id>/<step>/<recipient>`` so a retried activity never sends twice."""

    workflow_id: str
    ticket_id: str
    customer_id: str
    tier: Tier
    severity: Severity
    step: str
    kind: str
    due_at: UtcDatetime
    response_due_at: UtcDatetime | None
    subject: str
    recipients: list[Recipient]
    message: str | None = None
    # The target whose ladder the step belongs to (None: the first response's, or no
    # ladder's); its deadline is in ``message``.
    metric: Metric | None = None
    # What a customer's contact (``Recipient.role == "customer"``) is told instead of
    # ``message``, which may carry the vendor's own instructions; None: ``message``.
    customer_message: str | None = None
    time_zone: str = "UTC"
    failover_after: timedelta = timedelta(minutes=2)
    # Ledger rows written with the delivery: events the ticket recorded just before the
    # step (e.g. "opened" with the intake step), the step's SLA event and the ticket's row.
    earlier_events: list[SlaEvent] = Field(default_factory=list)
    event: SlaEvent | None = None
    summary: TicketOutcome | None = None


class DeliveryFailure(Message):
    recipient: str
    channel: str
    error: str
    # The fallback recipient that took over, if any.
    fell_over_to: str | None = None


class DeliveryFailureDetails(Message):
    """The details of a ``deliver_step`` failure (``ApplicationError.details[0]``): who did
    get the message, and, when only the ledger was behind (``LedgerUnavailable``), the
    activity's own outcome."""

    delivered: list[str] = Field(default_factory=list)
    failed: list[DeliveryFailure] | None = None
    channels: dict[str, str] | None = None

    @classmethod
    def of(cls, cause: BaseException | None) -> DeliveryFailureDetails:
        """The details a failed ``deliver_step`` carries on its cause (an
        ``ApplicationError``'s first detail); none for a timeout or a cancellation."""
        details = getattr(cause, "details", None)
        if details and isinstance(details[0], dict):
            return cls.model_validate(details[0])
        return cls()

    def undelivered(self, recipients: list[Recipient], error: str) -> list[DeliveryFailure]:
        """The step's failures: the activity's own outcome when only the ledger was behind,
        else every recipient not reported delivered, with ``error``."""
        if self.failed is not None:
            return self.failed
        return [
            DeliveryFailure(recipient=r.name, channel="all", error=error)
            for r in recipients
            if r.name not in self.delivered
        ]


class StepDeliveryResult(Message):
    delivered: list[str]
    failed: list[DeliveryFailure] = Field(default_factory=list)
    # recipient -> the channel that delivered
    channels: dict[str, str] = Field(default_factory=dict)


class PageUpdate(Message):
    """Acknowledge or resolve the ticket's page (PagerDuty ``dedup_key`` = workflow id) on
    the pager channels of everyone paged, so an ack here also clears the page there."""

    workflow_id: str
    ticket_id: str
    action: Literal["acknowledge", "resolve"]
    by: str
    recipients: list[Recipient]


class SlaEvent(Message):
    """One append-only ledger row; ``key`` makes the write idempotent."""

    key: str
    ticket_id: str
    kind: str
    at: UtcDatetime
    source: str
    detail: dict[str, object] = Field(default_factory=dict)


class SlaEvents(Message):
    events: list[SlaEvent]
    # The ticket's summary row as it stands after these events.
    summary: TicketOutcome | None = None


class TicketFacts(Message):
    """What the ticket's status and its ledger row both say (one declaration for both)."""

    ticket_id: str
    customer_id: str
    tier: Tier
    severity: Severity
    category: str
    state: TicketState
    opened_at: UtcDatetime
    response_due_at: UtcDatetime | None = None
    # False for tickets without an SLA clock (Community, out of scope at intake).
    commercial_sla: bool = True
    acknowledged_at: UtcDatetime | None = None
    acknowledged_by: str | None = None
    response_breached: bool = False
    # The deadline in force when the breach happened (a later re-triage may move
    # ``response_due_at``; the overrun counts from this one).
    breached_at: UtcDatetime | None = None
    out_of_scope: bool = False
    resolved_at: UtcDatetime | None = None
    closed_at: UtcDatetime | None = None
    policy_version: str | None = None
    # Entitlement: the tier the caller claimed when the ticket runs at another one.
    claimed_tier: Tier | None = None
    # The intake integration that opened the ticket (None: a raw start).
    integration: str | None = None
    # Every SLA target beyond the first response (docs/ticket-life.md#targets), and how
    # long the ticket waited on the customer in all.
    targets: list[TargetStatus] = Field(default_factory=list)
    customer_wait: timedelta = timedelta(0)


class TicketOutcome(TicketFacts):
    """The ledger's one row per ticket (``TicketStatus.outcome``). ``revision`` grows with
    every change so a late write never overwrites a newer one."""

    workflow_id: str
    revision: int
    overrun: timedelta | None = None
    escalations_fired: int = 0
    sow_outcome: SowOutcome | None = None


# --- query result ------------------------------------------------------------------------


class EscalationRecord(Message):
    step: str
    kind: StepKind
    due_at: UtcDatetime
    fired_at: UtcDatetime
    targets: list[str]
    failed: list[DeliveryFailure] = Field(default_factory=list)
    # Set when an acknowledgement cancelled the delivery before it was sent.
    superseded_at: UtcDatetime | None = None


class HistoryEntry(Message):
    at: UtcDatetime
    kind: str
    by: str | None = None
    detail: str | None = None


class SowStatus(Message):
    workflow_id: str
    reason: str
    outcome: SowOutcome = SowOutcome.PENDING
    decided_by: str | None = None
    decided_at: UtcDatetime | None = None
    reference: str | None = None


class TicketStatus(TicketFacts):
    """The ``status`` query's answer: the facts, plus the plan in force, the ladder's
    progress and the ticket's history."""

    response_target: timedelta | None = None
    time_zone: str = "UTC"
    escalations: list[EscalationRecord] = Field(default_factory=list)
    next_step: str | None = None
    next_step_due_at: UtcDatetime | None = None
    sow: SowStatus | None = None
    resolved_by: str | None = None
    history: list[HistoryEntry] = Field(default_factory=list)
    # Why the ticket runs at another tier than the one claimed (``claimed_tier``).
    entitlement: str | None = None
    # When the ticket processed its acknowledgement (``acknowledged_at`` is when the agent
    # acted, as stamped by the surface).
    acknowledged_received_at: UtcDatetime | None = None
    # The last time the ticket could not resolve its policy (it keeps its last good plan).
    policy_problem: str | None = None
    # Set while the ticket waits on the customer (``await_customer``), with why.
    awaiting_customer_since: UtcDatetime | None = None
    awaiting_customer_reason: str | None = None

    def overrun(self, now: datetime) -> timedelta | None:
        """How far past the deadline the first response came (or is, until ``now``)."""
        if not self.response_breached or self.breached_at is None:
            return None
        end = self.acknowledged_at or now
        return max(timedelta(0), end - self.breached_at)

    def outcome(self, workflow_id: str, revision: int, now: datetime) -> TicketOutcome:
        """The ledger's row for this ticket: every field the two share, taken from the
        status, plus what the row alone has."""
        overrun = self.overrun(now)
        return TicketOutcome(
            **{name: getattr(self, name) for name in TicketFacts.model_fields},
            workflow_id=workflow_id,
            revision=revision,
            overrun=overrun or None,
            escalations_fired=len(self.escalations),
            sow_outcome=self.sow.outcome if self.sow else None,
        )


# --- statement of work -------------------------------------------------------------------


class SowInput(Message):
    ticket_id: str
    customer_id: str
    tier: Tier
    severity: Severity
    subject: str
    reporter_email: str | None
    reason: str
    terms: SowTerms


class SowResult(Message):
    outcome: SowOutcome
    decided_by: str | None = None
    decided_at: UtcDatetime | None = None
    reference: str | None = None
    reminded_at: UtcDatetime | None = None
    # Decisions that did not validate, with what was wrong; never applied.
    rejected: list[str] = Field(default_factory=list)
    # Notifications of the statement of work that did not reach someone
    # (``<step>: <recipient>: <error>``), recorded on the ticket and in the ledger.
    failed_notifications: list[str] = Field(default_factory=list)


class TicketCarry(Message):
    """A ticket's state carried into its next run by continue-as-new."""

    status: TicketStatus
    plan: TicketPlan
    fired: list[str]
    repeat_horizon: UtcDatetime | None = None
    repeats_sent: int = 0
    revision: int
    counters: dict[str, int]
    # Recipients with a pager channel that the ticket has paged (to ack/resolve the page).
    paged: list[Recipient] = Field(default_factory=list)
    # Names of everyone a step has been sent to (re-triage tells only those who have not).
    notified: list[str] = Field(default_factory=list)
    # Whether the ticket keeps target clocks (the sla-targets patch branch).
    clocks_on: bool = False
    # The request ids of the latest agent actions applied (``Action.request_id``).
    requests: list[str] = Field(default_factory=list)


# Finish every model whose annotations name a class defined after it (StepDelivery names
# SlaEvent): built lazily, pydantic would resolve those names through ``sys.modules`` on
# first use, and inside the workflow sandbox that lookup can miss this module.
for _model in list(globals().values()):
    if isinstance(_model, type) and issubclass(_model, Message):
        _model.model_rebuild()
del _model

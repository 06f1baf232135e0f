"""Notify an escalation step's recipients on their channels, exactly once per key.

Each delivery is keyed ``<workflow id>/<step>/<recipient>``. Before sending, the attempt's
progress (heartbeat details), the keys this worker delivered lately and the ledger's
delivery log are checked. When every recipient is reached, the keys go into the delivery
log in the same transaction as the step's events and the ticket's row (one commit per
step); an attempt that fails writes the keys it did deliver before it raises (into the
heartbeat too: heartbeats are billed Actions, so only then). Every
message carries the key (``Idempotency-Key`` header, email ``Message-ID``) so a sink can
drop the duplicate that a crash between "accepted" and "stored" would otherwise cause.

Channels (``channels.py`` renders and sends): ``log``, ``webhook`` (generic JSON),
``chat`` (Slack-compatible), ``pager`` (PagerDuty Events v2), ``email`` (SMTP).

Failure handling, per recipient:
- a configuration error (4xx, missing setting) is permanent for that channel: logged
  loudly, recorded, and the next channel is tried at once;
- a transient error (5xx, timeout, connection) is retried by Temporal with backoff; once
  the channel has been failing for ``failover_after`` (server time since the activity was
  first scheduled), the next channel gets its turn, and after the last one the recipient's
  ``fallback`` target. A recipient with nothing left is reported failed, never skipped.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta

import structlog
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.channels import (
    ChannelConfigError,
    ChannelSender,
    Notification,
    TransientDeliveryError,
)
from contract.models import (
    ChannelKind,
    DeliveryFailure,
    DeliveryFailureDetails,
    PageUpdate,
    Recipient,
    SlaEvent,
    StepDelivery,
    StepDeliveryResult,
)
from ledger.store import SlaLedger

log = structlog.get_logger("support.notify")
# How many recently delivered keys a worker remembers (a few seconds' worth in a burst).
RECENT_KEYS = 10_000


class RecipientUnreachable(Exception):
    """None of the recipient's channels is left to try (misconfigured or out of time)."""


@dataclass
class Progress:
    """What earlier attempts of this activity achieved (kept in heartbeat details)."""

    delivered: dict[str, str] = field(default_factory=dict)  # key -> channel
    errors: dict[str, str] = field(default_factory=dict)  # key -> last error
    tried: dict[str, int] = field(default_factory=dict)  # key -> last channel index tried

    @classmethod
    def restore(cls) -> Progress:
        details = activity.info().heartbeat_details
        if details and isinstance(details[0], dict):
            return cls(
                dict(details[0].get("delivered", {})),
                dict(details[0].get("errors", {})),
                dict(details[0].get("tried", {})),
            )
        return cls()

    def save(self) -> None:
        if activity.info().is_local:
            # A ticket's local first attempt (``local-first-attempts``) cannot heartbeat:
            # its retry is a new server activity, which finds what it delivered in the
            # ledger's delivery log (or this worker's recent keys).
            return
        activity.heartbeat(
            {"delivered": self.delivered, "errors": self.errors, "tried": self.tried}
        )


# A local first attempt stops sending this long before it would be cut, to write whom it
# reached into the delivery log (``_remember``) and fail so that the server retries it.
LOCAL_MARGIN = timedelta(seconds=2)


def local_budget(info: activity.Info) -> float | None:
    """Seconds a local attempt may spend sending (None: a server activity, bounded by its
    own timeouts and heartbeat-less retries as before)."""
    if not info.is_local or info.start_to_close_timeout is None:
        return None
    return max(info.start_to_close_timeout - LOCAL_MARGIN, LOCAL_MARGIN).total_seconds()


@dataclass
class Outcome:
    name: str
    delivered_by: str | None = None  # the recipient (this one or a fallback) and channel
    channel: str | None = None
    failures: list[DeliveryFailure] = field(default_factory=list)
    pending: str | None = None  # a transient error: retry


def step_events(
    request: StepDelivery,
    delivered: list[str],
    failures: list[DeliveryFailure],
    channels: dict[str, str],
) -> list[SlaEvent]:
    """The ledger events a delivered step writes: the events carried from earlier steps,
    then the step's own, with who got it, on which channel, and who could not be reached."""
    events = list(request.earlier_events)
    if request.event is not None:
        detail = {
            **request.event.detail,
            "delivered": delivered,
            "channels": channels,
            "failed": [f.model_dump(exclude_none=True) for f in failures],
        }
        events.append(request.event.model_copy(update={"detail": detail}))
    return events


class NotifyActivities:
    def __init__(self, ledger: SlaLedger, sender: ChannelSender) -> None:
        self.ledger = ledger
        self.sender = sender
        # Keys being sent in this worker, and how many attempts want each.
        self._sending: dict[str, tuple[asyncio.Lock, int]] = {}
        # Keys this worker delivered lately (-> channel), oldest first: an attempt that
        # outlived its timeout and the retry that waited for it (``_exclusive``) meet here
        # before the first one's ledger write has landed.
        self._recent: OrderedDict[str, str] = OrderedDict()

    @asynccontextmanager
    async def _exclusive(self, key: str) -> AsyncIterator[None]:
        """One send per delivery key at a time in this worker. An attempt that outlived its
        start-to-close timeout on a busy worker is still running when Temporal starts the
        retry; the retry waits for it and then finds its delivery in the log, instead of
        sending the same message again."""
        lock, users = self._sending.get(key, (asyncio.Lock(), 0))
        self._sending[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._sending[key]
            if users == 1:
                del self._sending[key]
            else:
                self._sending[key] = (lock, users - 1)

    @activity.defn(name="deliver_step")
    async def deliver_step(self, request: StepDelivery) -> StepDeliveryResult:
        info = activity.info()
        elapsed = info.current_attempt_scheduled_time - info.scheduled_time
        progress = Progress.restore()
        try:
            async with asyncio.timeout(local_budget(info)):
                outcomes = await asyncio.gather(
                    *(
                        self._deliver_chain(recipient, request, elapsed, progress)
                        for recipient in request.recipients
                    )
                )
        except TimeoutError:
            # A ticket's local first attempt about to be cut: whom it reached goes into the
            # delivery log first, so the server's activity that retries it skips them.
            await self._remember(request, progress)
            reached = sorted(key.rsplit("/", 1)[-1] for key in progress.delivered)
            raise ApplicationError(
                "delivery's local first attempt ran out of time; the server's activity retries it",
                DeliveryFailureDetails(delivered=reached).model_dump(
                    mode="json", exclude_none=True
                ),
                type="TransientDeliveryError",
            ) from None
        delivered = [o.name for o in outcomes if o.delivered_by is not None]
        pending = [o.pending for o in outcomes if o.pending]
        if pending:
            await self._remember(request, progress)
            # Raised after trying everyone (concurrently, so one hanging sink cannot eat the
            # others' time); the retry skips those already delivered. The details tell the
            # workflow who did get the message if the attempts run out.
            raise ApplicationError(
                "delivery failed for " + "; ".join(pending),
                DeliveryFailureDetails(delivered=delivered).model_dump(
                    mode="json", exclude_none=True
                ),
                type="TransientDeliveryError",
            )
        failures = [f for o in outcomes for f in o.failures]
        channels = {o.name: o.channel for o in outcomes if o.channel}
        try:
            await self._record(request, progress, delivered, failures, channels)
        except Exception as err:
            # Everyone who could be reached was; only the ledger is behind. Not retried:
            # the workflow writes the step's events itself (its ledger writes retry until
            # the ledger is back), so nothing waiting on this delivery, such as a page's
            # acknowledgement, waits for the ledger.
            raise ApplicationError(
                f"SLA ledger unavailable: {err}",
                DeliveryFailureDetails(
                    delivered=delivered, failed=failures, channels=channels
                ).model_dump(mode="json"),
                type="LedgerUnavailable",
                non_retryable=True,
            ) from err
        return StepDeliveryResult(delivered=delivered, failed=failures, channels=channels)

    async def _record(
        self,
        request: StepDelivery,
        progress: Progress,
        delivered: list[str],
        failures: list[DeliveryFailure],
        channels: dict[str, str],
    ) -> None:
        marks = [(key, request.ticket_id, ch) for key, ch in progress.delivered.items()]
        events = step_events(request, delivered, failures, channels)
        if marks or events or request.summary is not None:
            await self.ledger.record_delivery(marks, events, request.summary)

    async def _deliver_chain(
        self,
        first: Recipient,
        request: StepDelivery,
        elapsed: timedelta,
        progress: Progress,
    ) -> Outcome:
        """Deliver to ``first``, or to its fallbacks once its channels have had their time."""
        outcome = Outcome(name=first.name)
        budget = request.failover_after
        for recipient in first.chain():
            key = f"{request.workflow_id}/{request.step}/{recipient.name}"
            try:
                async with self._exclusive(key):
                    channel = await self._deliver_one(recipient, key, request, elapsed, progress)
            except TransientDeliveryError as err:
                progress.errors[key] = str(err)
                outcome.pending = f"{recipient.name}: {err}"
                return outcome
            except RecipientUnreachable as err:
                error = str(err)
                failure = DeliveryFailure(
                    recipient=recipient.name,
                    channel="all",
                    error=error,
                    fell_over_to=recipient.fallback.name if recipient.fallback else None,
                )
                outcome.failures.append(failure)
                log.error(
                    "recipient not reached" + (", falling over" if recipient.fallback else ""),
                    ticket_id=request.ticket_id,
                    step=request.step,
                    recipient=recipient.name,
                    fallback=failure.fell_over_to,
                    error=error,
                )
                # The fallback starts its own channels' clock where this one's ran out.
                elapsed = max(timedelta(0), elapsed - budget * len(recipient.channels))
                continue
            outcome.delivered_by, outcome.channel = recipient.name, channel
            return outcome
        return outcome

    async def _remember(self, request: StepDelivery, progress: Progress) -> None:
        """Before a failed attempt raises: what it delivered into the ledger's delivery
        log (so no later attempt, on any worker, sends it again) and the attempt's progress
        into the heartbeat (which also tells the retry which channels were tried)."""
        marks = [(key, request.ticket_id, ch) for key, ch in progress.delivered.items()]
        try:
            if marks:
                await self.ledger.record_delivery(marks, [], None)
        except Exception as err:
            log.warning(
                "delivery log unavailable, keeping progress in the heartbeat", error=str(err)
            )
        progress.save()

    def _sent(self, key: str, channel: str) -> None:
        self._recent[key] = channel
        if len(self._recent) > RECENT_KEYS:
            self._recent.popitem(last=False)

    async def _deliver_one(
        self,
        recipient: Recipient,
        key: str,
        request: StepDelivery,
        elapsed: timedelta,
        progress: Progress,
    ) -> str:
        """Send to one recipient on the channel whose turn it is; returns the channel.
        The caller holds ``_exclusive(key)``."""
        if key in progress.delivered:
            return progress.delivered[key]
        if key in self._recent:
            progress.delivered[key] = self._recent[key]
            return self._recent[key]
        if await self._was_delivered(key):
            return "earlier attempt"
        # A channel's turn comes from the time spent on the step, but a channel whose time
        # ran out while an attempt hung or backed off still gets one try: never skip a
        # channel that was not tried.
        turn = min(int(elapsed / request.failover_after), progress.tried.get(key, -1) + 1)
        message = Notification.of(request, recipient, key)
        config_errors: list[str] = []
        for index, channel in enumerate(recipient.channels):
            if index < turn:
                continue  # this channel had its time
            progress.tried[key] = max(index, progress.tried.get(key, -1))
            try:
                await self.sender.send(channel, message)
            except ChannelConfigError as err:
                log.error(
                    "channel misconfigured, trying the next one",
                    ticket_id=request.ticket_id,
                    step=request.step,
                    recipient=recipient.name,
                    channel=channel.type.value,
                    error=str(err),
                )
                config_errors.append(f"{channel.type.value}: {err}")
                continue
            except TransientDeliveryError as err:
                raise TransientDeliveryError(f"{channel.type.value}: {err}") from err
            progress.delivered[key] = channel.type.value
            self._sent(key, channel.type.value)
            return channel.type.value
        budget = request.failover_after * len(recipient.channels)
        problems = config_errors or [
            f"no channel delivered within {budget}; last error: "
            + progress.errors.get(key, "unknown")
        ]
        raise RecipientUnreachable("; ".join(problems))

    async def _was_delivered(self, key: str) -> bool:
        """The ledger's delivery log; when the ledger is down, escalating on time wins over
        the rare duplicate (which the sink can still drop by the message's key)."""
        try:
            return await self.ledger.was_delivered(key)
        except Exception as err:
            log.warning("delivery log unavailable, sending anyway", key=key, error=str(err))
            return False

    @activity.defn(name="update_pages")
    async def update_pages(self, update: PageUpdate) -> list[str]:
        """Acknowledge or resolve the ticket's page on every pager channel that was paged;
        keyed ``<workflow id>/page-<action>/<recipient>``. Returns who was updated."""
        done: list[str] = []
        errors: list[str] = []
        for recipient in update.recipients:
            for target in recipient.chain():
                key = f"{update.workflow_id}/page-{update.action}/{target.name}"
                pagers = [c for c in target.channels if c.type is ChannelKind.PAGER]
                if not pagers or await self._was_delivered(key):
                    continue
                try:
                    for channel in pagers:
                        await self.sender.update_page(channel, update, key)
                except ChannelConfigError as err:
                    log.error(
                        "page not updated: channel misconfigured",
                        ticket_id=update.ticket_id,
                        recipient=target.name,
                        action=update.action,
                        error=str(err),
                    )
                    continue
                except TransientDeliveryError as err:
                    errors.append(f"{target.name}: {err}")
                    continue
                await self.ledger.mark_delivered(key, update.ticket_id, "pager")
                done.append(target.name)
        if errors:
            raise ApplicationError("page update failed for " + "; ".join(errors))
        return done

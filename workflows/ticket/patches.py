"""Patch ids of the ticket workflow's command changes (``workflow.patched``).

Each has committed histories of both branches (tests/histories/); docs/versioning.md says
when a branch may go."""

# Workflow changes that alter commands, by patch id (docs/versioning.md). Tickets that
# started before a change keep its old branch for the rest of their run; remove a branch
# only once no open ticket's history lacks the marker.
BATCHED_LEDGER_WRITES = "ledger-writes-batched-per-activation"
# An acknowledgement cancels the warnings, breaches and repeats not yet delivered.
ACK_SUPERSEDES_DELIVERIES = "ack-supersedes-pending-deliveries"
# Raising the severity tells the new severity's first responders who have not heard yet.
RETRIAGE_NOTIFIES = "retriage-notifies-new-responders"
# Raising the severity of an acknowledged ticket tells them too: the new severity's plan is
# resolved for its first responders (the ticket keeps its deadlines).
RETRIAGE_AFTER_ACK = "retriage-after-ack-notifies"
# A customer reply on an acknowledged ticket is sent to whoever acknowledged it.
REPLY_NOTIFIES = "customer-reply-notifies"
# Targets beyond the first response (next reply, resolution), agent replies and the pause
# while the ticket waits on the customer.
SLA_TARGETS = "sla-targets-next-reply-resolution-pause"
# The wake-up timer is kept across turns of the loop while the next wake does not move,
# instead of one timer started (and one cancelled) per turn: a step then costs its timer
# and its delivery activity, the two Actions an escalation step cannot do without.
KEEP_WAKE_TIMER = "keep-wake-timer"
# A customer reply whose moved deadlines the policy could not plan keeps the paused clocks
# stopped (and the next reply it starts unplanned) until a plan comes, retried every
# POLICY_RETRY_AFTER; before, the pause was dropped and the clocks ran on their old
# deadlines.
RESUME_AWAITS_PLAN = "resume-awaits-plan"
# A delivery an acknowledgement cancelled while its attempt was failing is recorded as
# superseded (moot), as one cancelled between attempts is; before, as a failed delivery.
CANCELLED_ATTEMPT_SUPERSEDED = "cancelled-attempt-superseded"
# The requester of a Community ticket confirms their address: the same ticket takes the
# contract (before: the signal had no handler; intake opened a second ticket).
VERIFY_IN_PLACE = "verify-requester-in-place"
# An activity's first attempt runs in the workflow task that asks for it (a local
# activity: no activity task, no workflow task for its result); only a first attempt that
# fails and may be retried goes to the server as an activity with its retries (the plan,
# a step's delivery, a ledger write). Before, every call was a server activity.
LOCAL_FIRST_ATTEMPTS = "local-first-attempts"

# One marker for every change above: a ticket whose run begins on this release records
# this id once, in its first workflow task, and has every change in ROLLED_UP without a
# marker (and a TemporalChangeVersion upsert) of its own; a run that began before it has
# no such marker, and asks each change as it did (Outbox._patched). A new ticket's history
# was 3 markers and 3 upserts of versioning on its hot path, a quarter of its events. A
# change after this one takes its own patch id again (and a later roll-up may name it).
CHANGES_SO_FAR = "changes-through-local-first-attempts"
ROLLED_UP = (
    BATCHED_LEDGER_WRITES,
    ACK_SUPERSEDES_DELIVERIES,
    RETRIAGE_NOTIFIES,
    RETRIAGE_AFTER_ACK,
    REPLY_NOTIFIES,
    SLA_TARGETS,
    KEEP_WAKE_TIMER,
    RESUME_AWAITS_PLAN,
    CANCELLED_ATTEMPT_SUPERSEDED,
    VERIFY_IN_PLACE,
    LOCAL_FIRST_ATTEMPTS,
)


def lacking(patch_id: str) -> str:
    """The visibility-query clause for ticket runs without ``patch_id``'s change: neither
    its id nor, for a rolled-up change, ``CHANGES_SO_FAR`` in ``TemporalChangeVersion``
    (docs/versioning.md, retiring a branch)."""
    ids = [patch_id, CHANGES_SO_FAR] if patch_id in ROLLED_UP else [patch_id]
    without = " AND ".join(f"TemporalChangeVersion != '{i}'" for i in ids)
    return f"(TemporalChangeVersion IS NULL OR ({without}))"

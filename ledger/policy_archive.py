"""The policy archive: every policy version in use, kept by version, so that a ticket keeps
the rules it was pinned to after the file changes or breaks (docs/policy-versions.md).

``PolicyArchive`` sits over a ``PolicyStore`` (the SLA ledger's ``policy_versions`` table in
production, ``MemoryPolicyStore`` for a worker without one) and hands out parsed policies:
``current()`` is the policy file as it is now, archived as it loads, and refused when its
version is already archived with other text (tickets are pinned to the archived rules, so
an edit needs a new version); ``version(v)`` is an archived version. Parsed policies are
cached per version for the life of the archive object: an archived version never changes.

``plan_under`` and ``plan_changes`` are the pure half of ``support-ops policy diff``: a
running ticket's plan under a policy, and what would change between two plans.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

from contract.models import PlannedStep, Recipient, StepKind, TicketInput, TicketPlan, TicketStatus
from contract.text import span
from policy.load import parse_policy, policy_path
from policy.plan import resolve_plan
from policy.schema import Policy, PolicyError

# The ledger's columns hold a version of at most this many characters (tickets.policy_version).
MAX_VERSION = 64
# Distinct file texts whose parse is kept (an edited file is parsed once, not per ticket).
FILE_CACHE = 8


class PolicyVersionConflict(PolicyError):
    """The file's version is archived with other text: the edit needs a new version."""


class PolicyVersionUnavailable(PolicyError):
    """A pinned version is neither in the archive nor the loaded policy file's."""


@dataclass(frozen=True)
class ArchivedPolicy:
    """One row of the archive's listing (the document itself: ``policy_document``)."""

    version: str
    digest: str
    recorded_at: datetime
    source: str


class PolicyStore(Protocol):
    """Where archived versions are kept; every row is written once and never changed."""

    async def archive_policy(
        self, version: str, digest: str, document: str, source: str = ""
    ) -> str | None:
        """Store ``document`` under ``version`` unless that version is there already;
        return the archived digest when it differs from ``digest``, else None."""
        ...

    async def policy_document(self, version: str) -> str | None: ...

    async def policy_versions(self) -> list[ArchivedPolicy]: ...


def document_digest(text: str) -> str:
    """sha256 of the policy file's text (UTF-8), hex: the identity of a version's rules."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def worker_source(path: Path) -> str:
    return f"{socket.gethostname()}:{path}"


class MemoryPolicyStore:
    """A ``PolicyStore`` in this process only: for a worker without a ledger and for tests."""

    def __init__(self) -> None:
        self._rows: dict[str, tuple[ArchivedPolicy, str]] = {}

    async def archive_policy(
        self, version: str, digest: str, document: str, source: str = ""
    ) -> str | None:
        found = self._rows.get(version)
        if found is None:
            row = ArchivedPolicy(version, digest, datetime.now(UTC), source)
            self._rows[version] = (row, document)
            return None
        return found[0].digest if found[0].digest != digest else None

    async def policy_document(self, version: str) -> str | None:
        found = self._rows.get(version)
        return found[1] if found else None

    async def policy_versions(self) -> list[ArchivedPolicy]:
        return sorted((row for row, _ in self._rows.values()), key=lambda r: r.recorded_at)


class PolicyArchive:
    """Policies by version, from ``store``; ``path`` is the policy file (default
    ``SUPPORT_POLICY_FILE``, else the shipped one, read at each ``current()``)."""

    def __init__(self, store: PolicyStore, path: Path | None = None) -> None:
        self.store = store
        self._path = path
        # version -> its archived rules, parsed; version -> the archived text's digest
        self._policies: dict[str, Policy] = {}
        self._digests: dict[str, str] = {}
        # digest of a file text seen -> its parse (the file is read at every call)
        self._files: dict[str, Policy] = {}

    def path(self) -> Path:
        return self._path or policy_path()

    async def current(self) -> Policy:
        """The policy file as it is now, archived. PolicyError when it cannot be read or is
        invalid (the message names file and field), PolicyVersionConflict when its version
        is archived with other text."""
        path = self.path()
        try:
            text = await asyncio.to_thread(path.read_text, encoding="utf-8")
        except OSError as err:
            raise PolicyError(f"{path}: cannot read the policy file: {err.strerror}") from err
        except UnicodeDecodeError as err:
            raise PolicyError(f"{path}: not UTF-8 text: {err.reason}") from err
        return await self.archive_text(text, str(path), worker_source(path))

    async def archive_text(self, text: str, where: str, source: str) -> Policy:
        """Parse a policy document (``where`` names it in errors) and archive it under its
        version; the same text again is a no-op. Database errors propagate (retry them)."""
        digest = document_digest(text)
        policy = self._files.get(digest)
        if policy is None:
            policy = parse_policy(text, where)
            if len(policy.version) > MAX_VERSION:
                raise PolicyError(
                    f"{where}: version: at most {MAX_VERSION} characters"
                    f" (got {len(policy.version)})"
                )
            if len(self._files) >= FILE_CACHE:
                self._files.clear()
            self._files[digest] = policy
        version = policy.version
        archived = self._digests.get(version)
        if archived is None:
            archived = await self.store.archive_policy(version, digest, text, source) or digest
        if archived != digest:
            raise PolicyVersionConflict(
                f"{where}: version: {version!r} is already archived with other rules"
                f" (sha256 {archived[:12]}, this file {digest[:12]}); tickets are pinned to"
                " the archived rules, so a changed file needs a new version"
            )
        self._digests[version] = digest
        self._policies.setdefault(version, policy)
        return policy

    async def version(self, version: str) -> Policy | None:
        """The archived rules of ``version``, or None when it is not archived. PolicyError
        when the archived document does not load with this release."""
        cached = self._policies.get(version)
        if cached is not None:
            return cached
        document = await self.store.policy_document(version)
        if document is None:
            return None
        policy = parse_policy(document, f"archived policy {version}")
        if policy.version != version:
            raise PolicyError(
                f"archived policy {version}: version: the document says {policy.version!r}"
            )
        self._policies[version] = policy
        self._digests[version] = document_digest(document)
        return policy

    async def pinned(self, version: str) -> Policy:
        """The rules a ticket pinned: the archived version, else the policy file when it
        has that version (archived on the way). PolicyVersionUnavailable otherwise."""
        try:
            found = await self.version(version)
        except PolicyError as err:
            raise PolicyVersionUnavailable(
                f"policy {version}: the archived rules do not load with this release: {err}"
            ) from err
        if found is not None:
            return found
        try:
            current = await self.current()
        except PolicyError as err:
            raise PolicyVersionUnavailable(
                f"policy {version} is not in the policy archive and the policy file cannot"
                f" stand in for it: {err}"
            ) from err
        if current.version != version:
            raise PolicyVersionUnavailable(
                f"policy {version} is not in the policy archive (the policy file"
                f" {self.path()} is version {current.version})"
            )
        return current

    async def preload(self) -> list[str]:
        """Parse every archived version into this object (for ``policy_for_version``);
        returns the versions that do not load with this release."""
        failed = []
        for entry in await self.store.policy_versions():
            try:
                await self.version(entry.version)
            except PolicyError:
                failed.append(entry.version)
        return failed

    def policy_for_version(self, version: str | None) -> Policy | None:
        """A report's resolver (``ledger.report.build_report(policy_for_version=...)``):
        the rules of ``version`` once loaded here (``preload``), else None."""
        return self._policies.get(version) if version is not None else None


# --- what moving a ticket to another version changes ---------------------------------------


def plan_under(policy: Policy, status: TicketStatus) -> TicketPlan:
    """A running ticket's plan under ``policy``: at its tier and severity, from its
    original open time, the first window of repeats (the same basis for any two policies)."""
    ticket = TicketInput(
        ticket_id=status.ticket_id,
        customer_id=status.customer_id,
        tier=status.tier,
        severity=status.severity,
        category=status.category,
        opened_at=status.opened_at,
    )
    return resolve_plan(policy, ticket, status.severity, status.opened_at, tier=status.tier)


@dataclass(frozen=True)
class PlanChange:
    """One difference between two plans: ``what`` (``response due``, ``breach due``,
    ``warning recipients``, ``repeat every``, ...), before and after as text."""

    what: str
    before: str
    after: str


def _instant(value: datetime | None) -> str:
    return "none" if value is None else value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _span(value: timedelta | None) -> str:
    # Whole seconds, a fraction cut off (not rounded, as span does).
    return "none" if value is None else span(timedelta(seconds=int(value.total_seconds())))


def _names(recipients: list[Recipient]) -> str:
    return ", ".join(r.name for r in recipients) or "nobody"


def _channels(recipients: list[Recipient]) -> str:
    return "; ".join(
        f"{r.name}: "
        + " > ".join(f"{x.name}({'+'.join(c.type.value for c in x.channels)})" for x in r.chain())
        for r in recipients
    )


def _recipient_changes(
    what: str, before: list[Recipient], after: list[Recipient]
) -> list[PlanChange]:
    if before == after:
        return []
    if _names(before) != _names(after):
        return [PlanChange(f"{what} recipients", _names(before), _names(after))]
    return [PlanChange(f"{what} channels", _channels(before), _channels(after))]


def _family(step: PlannedStep) -> str:
    return step.name.rsplit("-", 1)[0] if step.kind is StepKind.REPEAT else step.name


def _ladder(plan: TicketPlan) -> dict[str, list[PlannedStep]]:
    found: dict[str, list[PlannedStep]] = {}
    for step in plan.steps:
        found.setdefault(_family(step), []).append(step)
    return found


def _describe(steps: list[PlannedStep]) -> str:
    first = steps[0]
    text = f"due {_instant(first.due_at)} to {_names(first.recipients)}"
    if first.kind is StepKind.REPEAT:
        every = steps[1].due_at - first.due_at if len(steps) > 1 else None
        text += f", every {_span(every)}" if every else ""
    return text


def plan_changes(before: TicketPlan, after: TicketPlan) -> list[PlanChange]:
    """What differs between two plans of one ticket: the response deadline, and per step
    of the ladder its due instant and recipients (a repeating step by its first instant,
    its cadence, its recipients and how often it repeats). Empty when nothing would."""
    changes = []
    if before.response_due_at != after.response_due_at:
        changes.append(
            PlanChange(
                "response due", _instant(before.response_due_at), _instant(after.response_due_at)
            )
        )
    old, new = _ladder(before), _ladder(after)
    for name in [*old, *(n for n in new if n not in old)]:
        was, will = old.get(name), new.get(name)
        if was is None or will is None:
            changes.append(
                PlanChange(
                    name,
                    _describe(was) if was else "none",
                    _describe(will) if will else "none",
                )
            )
            continue
        first, then = was[0], will[0]
        repeating = first.kind is StepKind.REPEAT or then.kind is StepKind.REPEAT
        label = f"{name} first" if repeating else name
        if first.due_at != then.due_at:
            changes.append(
                PlanChange(f"{label} due", _instant(first.due_at), _instant(then.due_at))
            )
        changes += _recipient_changes(name, first.recipients, then.recipients)
        if not repeating:
            continue
        every = [s[1].due_at - s[0].due_at if len(s) > 1 else None for s in (was, will)]
        if every[0] != every[1]:
            changes.append(PlanChange(f"{name} every", _span(every[0]), _span(every[1])))
        counts = [
            "until acknowledged" if more else str(len(steps))
            for steps, more in ((was, before.more_steps), (will, after.more_steps))
        ]
        if counts[0] != counts[1]:
            changes.append(PlanChange(f"{name} repeats", counts[0], counts[1]))
    return changes

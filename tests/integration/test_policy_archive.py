"""The policy archive: the ledger's ``policy_versions`` table on SQLite and PostgreSQL (the
same version with the same text is a no-op, with other text is refused, documents come back
exactly, rows never change), and ``PolicyArchive`` over it (the file archived as it loads,
an edit without a new version refused, archived versions parsed once, reports' resolver)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from harness.policy import write_policy
from ledger.policy_archive import (
    MemoryPolicyStore,
    PolicyArchive,
    PolicyStore,
    PolicyVersionConflict,
    PolicyVersionUnavailable,
    document_digest,
)
from ledger.store import SqlLedger, head_revision
from policy.load import default_policy_path
from policy.schema import PolicyError
from tests.integration.conftest import assert_refused

DEFAULT_TEXT = default_policy_path().read_text(encoding="utf-8")
# Text the database must hand back byte for byte: non-ASCII, quotes, CRLF, trailing blanks.
ODD_TEXT = "version: 'x'\r\n# naïve ≠ “quoted” \\ 'single' \"double\"  \n\t\n"


def versioned(tmp_path: Path, version: str, name: str = "policy.yaml", **premium: Any) -> Path:
    """The shipped policy at ``version``; ``premium`` overrides keys of the premium tier."""
    return write_policy(
        tmp_path, lambda data: data["tiers"]["premium"].update(premium), version=version, name=name
    )


# --- the ledger's table, both backends ------------------------------------------------------


def test_the_archive_is_part_of_the_head_revision() -> None:
    assert head_revision() >= "0002"


async def test_a_version_is_archived_once_and_its_document_round_trips(
    any_ledger: SqlLedger,
) -> None:
    digest = document_digest(ODD_TEXT)
    assert await any_ledger.policy_document("x") is None
    assert await any_ledger.archive_policy("x", digest, ODD_TEXT, "host:/etc/policy.yaml") is None
    # The same version with the same text again: a no-op.
    assert await any_ledger.archive_policy("x", digest, ODD_TEXT, "elsewhere") is None
    assert await any_ledger.policy_document("x") == ODD_TEXT
    [row] = await any_ledger.policy_versions()
    assert (row.version, row.digest, row.source) == ("x", digest, "host:/etc/policy.yaml")
    assert row.recorded_at.tzinfo is not None


async def test_the_same_version_with_other_text_is_refused_and_the_first_text_kept(
    any_ledger: SqlLedger,
) -> None:
    first, edited = DEFAULT_TEXT, DEFAULT_TEXT + "# edited\n"
    assert await any_ledger.archive_policy("v1", document_digest(first), first) is None
    assert await any_ledger.archive_policy(
        "v1", document_digest(edited), edited
    ) == document_digest(first)
    assert await any_ledger.policy_document("v1") == first
    assert await any_ledger.archive_policy("v2", document_digest(edited), edited) is None
    assert [r.version for r in await any_ledger.policy_versions()] == ["v1", "v2"]


async def test_concurrent_first_archives_of_one_version_keep_one_text(
    any_ledger: SqlLedger,
) -> None:
    texts = [f"version: v\n# writer {i}\n" for i in range(6)]
    answers = await asyncio.gather(
        *(any_ledger.archive_policy("v", document_digest(t), t) for t in texts)
    )
    kept = await any_ledger.policy_document("v")
    assert kept in texts
    # Every writer but the one whose text was kept is told the archived digest.
    assert answers == [None if t == kept else document_digest(kept) for t in texts]


async def test_archived_versions_cannot_be_changed_in_the_database_itself(
    any_ledger: SqlLedger,
) -> None:
    await any_ledger.archive_policy("v1", document_digest("a"), "a")
    await assert_refused(
        any_ledger,
        "insert-only",
        "UPDATE policy_versions SET document = 'forged'",
        "DELETE FROM policy_versions",
    )
    assert await any_ledger.policy_document("v1") == "a"


# --- PolicyArchive ------------------------------------------------------------------------


@pytest_asyncio.fixture(params=["memory", "sqlite"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    if request.param == "memory":
        yield MemoryPolicyStore()
        return
    ledger = SqlLedger.from_url(f"sqlite:///{tmp_path / 'ledger.sqlite3'}")
    await ledger.migrate()
    yield ledger
    await ledger.close()


async def test_the_current_file_is_archived_as_it_loads(store: PolicyStore, tmp_path: Path) -> None:
    path = versioned(tmp_path, "2027.1.1")
    archive = PolicyArchive(store, path)
    policy = await archive.current()
    assert policy.version == "2027.1.1"
    assert await store.policy_document("2027.1.1") == path.read_text(encoding="utf-8")
    [row] = await store.policy_versions()
    assert row.source.endswith(f":{path}")
    assert await archive.current() is policy, "the same text is parsed once"
    # Another archive object (another worker) over the same store: the same rules.
    again = await PolicyArchive(store).version("2027.1.1")
    assert again is not None and again.model_dump() == policy.model_dump()


async def test_an_edit_without_a_new_version_is_refused_naming_file_and_field(
    store: PolicyStore, tmp_path: Path
) -> None:
    path = versioned(tmp_path, "2027.1.1")
    await PolicyArchive(store, path).current()
    path.write_text(path.read_text(encoding="utf-8").replace("PT1H", "PT2H", 1))
    for archive in (PolicyArchive(store, path), PolicyArchive(store, path)):
        with pytest.raises(PolicyVersionConflict) as refused:
            await archive.current()
        message = str(refused.value)
        assert message.startswith(f"{path}: version: '2027.1.1' is already archived with other")
        assert "a changed file needs a new version" in message
    # The archived rules are still the first text's.
    kept = await PolicyArchive(store).version("2027.1.1")
    assert kept is not None
    assert kept.tiers["premium"].response_target.total_seconds() == 3600  # type: ignore[union-attr]
    # With a new version the edited file is archived beside the old one.
    path.write_text(path.read_text(encoding="utf-8").replace("2027.1.1", "2027.1.2", 1))
    assert (await PolicyArchive(store, path).current()).version == "2027.1.2"
    assert [r.version for r in await store.policy_versions()] == ["2027.1.1", "2027.1.2"]


async def test_a_broken_or_missing_file_is_a_policy_error_naming_file_and_field(
    store: PolicyStore, tmp_path: Path
) -> None:
    broken = versioned(tmp_path, "2027.1.1", response_target="soon")
    with pytest.raises(PolicyError, match=rf"^{broken}: tiers\.premium\.response_target: "):
        await PolicyArchive(store, broken).current()
    missing = tmp_path / "nope.yaml"
    with pytest.raises(PolicyError, match=rf"^{missing}: cannot read the policy file"):
        await PolicyArchive(store, missing).current()
    long = versioned(tmp_path, "v" * 65, name="long.yaml")
    with pytest.raises(PolicyError, match=rf"^{long}: version: at most 64 characters"):
        await PolicyArchive(store, long).current()
    assert await store.policy_versions() == []


async def test_a_pinned_version_comes_from_the_archive_else_from_the_file_of_that_version(
    store: PolicyStore, tmp_path: Path
) -> None:
    old = versioned(tmp_path, "old", name="old.yaml")
    new = versioned(tmp_path, "new", name="new.yaml", response_target="PT2H")
    await PolicyArchive(store, old).current()
    archive = PolicyArchive(store, new)
    pinned = await archive.pinned("old")
    assert pinned.version == "old" and archive.policy_for_version("old") is pinned
    # "new" is not archived yet: the file has that version, so it stands in (and is archived).
    assert (await archive.pinned("new")).version == "new"
    assert await store.policy_document("new") is not None
    with pytest.raises(
        PolicyVersionUnavailable, match=r"^policy gone is not in the policy archive"
    ):
        await archive.pinned("gone")
    new.write_text("version: [")
    with pytest.raises(PolicyVersionUnavailable, match=r"cannot stand in for it: .*not valid YAML"):
        await PolicyArchive(store, new).pinned("gone")
    # An archived version does not need the file at all.
    assert (await PolicyArchive(store, new).pinned("old")).version == "old"


async def test_reports_resolve_every_archived_version_after_a_preload(
    store: PolicyStore, tmp_path: Path
) -> None:
    for version in ("a", "b"):
        await PolicyArchive(store, versioned(tmp_path, version, name=f"{version}.yaml")).current()
    await store.archive_policy("unloadable", document_digest("version: [x"), "version: [x")
    archive = PolicyArchive(store)
    assert archive.policy_for_version("a") is None, "nothing is read before the preload"
    assert await archive.preload() == ["unloadable"]
    assert [archive.policy_for_version(v) is not None for v in ("a", "b", "c", None)] == [
        True,
        True,
        False,
        False,
    ]

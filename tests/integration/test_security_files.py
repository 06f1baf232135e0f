"""Files and supply chain (issue 15, part 8), each attack performed and refused.

- Another local user reading ``.data/service.env``, the SQLite ledger or the dev server's
  database: the directory is 0700 and the files 0600 from their creation, under the usual
  umask 022, with no chmod afterwards (``chmod`` is made to fail during creation, so a
  write-then-chmod would show). Run as root, the read is also tried for real, by a child
  that drops to the ``nobody`` user.
- Installing the image's requirements with a file that is not the one locked: pip, in the
  Dockerfile's ``--require-hashes`` mode, refuses a wrong hash and a line without one; the
  lock script's offline ``--check`` names an unhashed pin.
- A dependency below its security floor: the installed package's metadata (what pip
  resolves against) refuses the vulnerable releases, aiosmtpd 1.4.5 among them.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path
from types import ModuleType

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from harness.temporal import DevServer
from ledger.store import SqlLedger
from tests.conftest import ROOT
from tests.integration.test_deploy_files import LOCK, lock_entries, pip_dry_run

NOBODY = 65534


def load_script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask_022() -> Iterator[None]:
    """The common default umask, under which a plain ``open`` makes 0644 files."""
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


@pytest.fixture
def no_chmod(monkeypatch: pytest.MonkeyPatch) -> Callable[[], None]:
    """While active, any chmod fails: a mode must come from the file's creation. Returns
    the function that lifts it (for the parts of a test that may chmod)."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"chmod{args}: the mode must be set when the file is created")

    monkeypatch.setattr(os, "chmod", refuse)
    monkeypatch.setattr(os, "fchmod", refuse)
    monkeypatch.setattr(Path, "chmod", refuse)
    return monkeypatch.undo


@pytest.fixture
def shared_parent() -> Iterator[Path]:
    """A directory any local user may enter (0755, like a home or a checkout), so that
    only the modes under test stand between another user and the files."""
    parent = Path(tempfile.mkdtemp(prefix="support-files-"))
    parent.chmod(0o755)
    try:
        yield parent
    finally:
        shutil.rmtree(parent, ignore_errors=True)


def read_as_nobody(path: Path) -> str:
    """Try to open ``path`` for reading as the ``nobody`` user: a forked child drops root
    and opens it (what another local user would get). Skipped when this process cannot
    change user."""
    if os.geteuid() != 0:
        pytest.skip("reading as another user needs root to drop to it; the modes are checked")
    pid = os.fork()
    if pid == 0:  # the child: system calls only, then _exit
        code = 2
        try:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            os.close(os.open(path, os.O_RDONLY))
            code = 0
        except PermissionError:
            code = 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return {0: "read", 1: "refused"}.get(os.waitstatus_to_exitcode(status), "error")


# --- .data and service.env (make run) -----------------------------------------------------


def test_service_env_and_data_are_the_owners_only_from_creation(
    shared_parent: Path,
    umask_022: None,
    no_chmod: Callable[[], None],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    run_local = load_script("run_local")
    data = shared_parent / ".data"
    monkeypatch.setattr(run_local, "DATA", data)
    for key in ("SUPPORT_INTAKE_TOKENS", "SUPPORT_AGENT_TOKENS", "SUPPORT_LINK_SECRET"):
        monkeypatch.delenv(key, raising=False)
    run_local.private_data_dir()
    settings = run_local.service_settings()
    no_chmod()
    assert mode(data) == 0o700
    secrets_file = data / "service.env"
    assert mode(secrets_file) == 0o600
    assert settings["SUPPORT_LINK_SECRET"] in secrets_file.read_text(encoding="utf-8")
    # The attack: another local user reads the secrets.
    assert read_as_nobody(secrets_file) == "refused"


def test_an_older_world_readable_data_directory_is_closed(
    shared_parent: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_local = load_script("run_local")
    data = shared_parent / ".data"
    data.mkdir(mode=0o755)
    data.chmod(0o755)  # what a checkout from before this change has
    monkeypatch.setattr(run_local, "DATA", data)
    run_local.private_data_dir()
    assert mode(data) == 0o700


def test_service_env_is_never_overwritten(
    shared_parent: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """O_EXCL: the file is made once; a second make run reads it, keeps its secrets."""
    run_local = load_script("run_local")
    monkeypatch.setattr(run_local, "DATA", shared_parent)
    first = run_local.service_settings()["SUPPORT_LINK_SECRET"]
    assert run_local.service_settings()["SUPPORT_LINK_SECRET"] == first
    with pytest.raises(FileExistsError):
        run_local.write_private(shared_parent / "service.env", "SUPPORT_LINK_SECRET=x\n")


def test_the_images_data_directory_is_the_service_users_only() -> None:
    """In the image, the directory the embedded defaults write to is made 0700 for the
    non-root user the roles run as (the Dockerfile's USER)."""
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    assert "RUN install -d -m 0700 -o 10001 -g 10001 /app/.data\n" in dockerfile
    assert "\nUSER 10001:10001\n" in dockerfile


# --- the SQLite ledger --------------------------------------------------------------------


async def test_the_sqlite_ledger_is_the_owners_only_from_creation(
    shared_parent: Path, umask_022: None, no_chmod: Callable[[], None]
) -> None:
    database = shared_parent / "new-dir" / "sla-ledger.sqlite3"
    ledger = SqlLedger.from_url(f"sqlite:///{database}")
    try:
        await ledger.migrate()
        # While the ledger is open: the journal files SQLite made take the file's mode.
        journals = [p for p in database.parent.iterdir() if p != database]
        for path in [database, *journals]:
            assert mode(path) == 0o600, (path.name, oct(mode(path)))
        assert mode(database.parent) == 0o700
    finally:
        await ledger.close()
    no_chmod()
    assert read_as_nobody(database) == "refused"


async def test_an_existing_ledger_file_is_left_as_it_is(shared_parent: Path) -> None:
    """Only a file the ledger creates is made private: an operator's own file and mode
    (a group that backs it up, say) stay theirs."""
    database = shared_parent / "operators.sqlite3"
    database.touch(mode=0o640)
    database.chmod(0o640)
    ledger = SqlLedger.from_url(f"sqlite:///{database}")
    try:
        await ledger.migrate()
    finally:
        await ledger.close()
    assert mode(database) == 0o640


def test_alembic_run_directly_makes_a_new_sqlite_ledger_the_owners_only(
    shared_parent: Path, umask_022: None
) -> None:
    """``alembic -c ledger/alembic.ini upgrade head`` by hand (not ``python -m ledger
    migrate``), under umask 022, on a ledger file that does not exist yet."""
    database = shared_parent / "sla-ledger.sqlite3"
    config = str(ROOT / "ledger" / "alembic.ini")
    done = subprocess.run(
        [sys.executable, "-m", "alembic", "-c", config, "upgrade", "head"],
        cwd=shared_parent,
        env={**os.environ, "SUPPORT_LEDGER_URL": f"sqlite:///{database}"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert mode(database) == 0o600, oct(mode(database))
    assert read_as_nobody(database) == "refused"


# --- the dev server's database (make run) ---------------------------------------------------


def test_the_dev_servers_database_is_the_owners_only_from_creation(
    shared_parent: Path, umask_022: None
) -> None:
    server = DevServer(shared_parent, search_attributes=False, startup_seconds=60)
    try:
        server.start_blocking()
        assert server.database is not None and server.database.exists()
        assert mode(server.database) == 0o600
        files = [p for p in shared_parent.iterdir() if p.name.startswith("temporal.sqlite")]
        assert files and all(mode(p) == 0o600 for p in files), [
            (p.name, oct(mode(p))) for p in files
        ]
        assert read_as_nobody(server.database) == "refused"
    finally:
        server.stop()
    # The launcher set the umask only around the fork.
    assert os.umask(0o022) == 0o022


# --- the image's lock -----------------------------------------------------------------------


def lock_entry(name: str) -> tuple[str, list[str]]:
    """``name==version`` and its hashes, from deploy/requirements.lock."""
    for pin, options in lock_entries().items():
        if pin.startswith(f"{name}=="):
            return pin, [option.removeprefix("--hash=") for option in options]
    raise AssertionError(f"{name} is not in {LOCK}")


def pip_install_dry_run(lock: Path) -> subprocess.CompletedProcess[str]:
    """The Dockerfile's install of a lock, without installing: pip still fetches each file
    from the index and checks it against the lock's hash."""
    return pip_dry_run(
        "--no-deps",
        "--require-hashes",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "-r",
        str(lock),
        timeout=180,
    )


def test_a_file_that_is_not_the_one_locked_is_refused(tmp_path: Path) -> None:
    """The attack: the index serves a package whose hash is not the locked one (a tampered
    mirror or upload; here the lock names a hash no file has). pip refuses to install."""
    pin, digests = lock_entry("six")
    genuine = tmp_path / "genuine.lock"
    genuine.write_text(f"{pin} " + " ".join(f"--hash={d}" for d in digests) + "\n")
    accepted = pip_install_dry_run(genuine)
    assert accepted.returncode == 0, accepted.stderr[-2000:]

    tampered = tmp_path / "tampered.lock"
    tampered.write_text(f"{pin} --hash=sha256:{'0' * 64}\n")
    refused = pip_install_dry_run(tampered)
    assert refused.returncode != 0
    assert "DO NOT MATCH THE HASHES" in refused.stderr

    unhashed = tmp_path / "unhashed.lock"
    unhashed.write_text(genuine.read_text() + "idna==3.10\n")
    refused = pip_install_dry_run(unhashed)
    assert refused.returncode != 0
    assert "Hashes are required in --require-hashes mode" in refused.stderr


def test_the_lock_checker_names_an_unhashed_pin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``make lock``'s offline ``--check``: the committed lock pins every runtime
    dependency, each hashed; a lock with a pin stripped of its hashes is named. Versions
    are compared by name only here: a fresh environment installs the newest releases
    PyPI has that day, and a release after the last ``make lock`` must not fail the
    build (``make lock`` then brings the lock up to it; the image builds from the lock)."""
    script = load_script("lock_image_requirements")
    pinned = script.pins()
    locked = {pin.split("==")[0]: pin.split("==")[1] for pin in script.read_lock(LOCK.read_text())}
    assert sorted(locked) == sorted(pinned)
    pinned = locked  # what the check compares against: the lock's own versions
    assert script.check(pinned) == []
    lines = LOCK.read_text(encoding="utf-8").replace("\\\n", " ").splitlines()
    stripped = [line.split()[0] if line.startswith("aiosmtpd==") else line for line in lines]
    broken = tmp_path / "requirements.lock"
    broken.write_text("\n".join(stripped) + "\n", encoding="utf-8")
    monkeypatch.setattr(script, "LOCK", broken)
    [problem] = script.check(pinned)
    assert problem.startswith(f"aiosmtpd=={pinned['aiosmtpd']}: every pin needs --hash=sha256")


# --- dependency floors ----------------------------------------------------------------------

# Package -> (the last release with a published advisory, the first fixed release).
FLOORS = {
    "aiosmtpd": ("1.4.5", "1.4.6"),  # CVE-2024-27305 (< 1.4.5), CVE-2024-34083 (< 1.4.6)
    "aiosmtplib": ("5.1.2", "5.1.3"),  # CVE-2026-53533 (< 5.1.1) and its 5.1.3 follow-up
    "jinja2": ("3.1.5", "3.1.6"),  # CVE-2025-27516 (< 3.1.6) and the earlier 3.1.x ones
    "python-multipart": ("0.0.29", "0.0.30"),  # CVE-2026-53538 (< 0.0.30) and earlier
    "cryptography": ("46.0.6", "46.0.7"),  # CVE-2026-39892 (< 46.0.7), -34073, -26007
    "starlette": ("1.3.0", "1.3.1"),  # CVE-2026-54283 (< 1.3.1), -54282, -48817/8, -48710
    "h11": ("0.15.0", "0.16.0"),  # CVE-2025-43859
    "tqdm": ("4.66.2", "4.66.3"),  # CVE-2024-34062
}


def installed_requirements() -> dict[str, Requirement]:
    """The project's runtime requirements as the installed distribution's metadata states
    them (what pip checks an environment against)."""
    found: dict[str, Requirement] = {}
    for line in metadata.requires("support-sla") or []:
        requirement = Requirement(line)
        if requirement.marker is None:
            found[canonicalize_name(requirement.name)] = requirement
    return found


def test_a_release_below_a_security_floor_is_refused() -> None:
    declared = {
        canonicalize_name(Requirement(line).name): Requirement(line)
        for line in tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"][
            "dependencies"
        ]
    }
    installed = installed_requirements()
    for name, (vulnerable, fixed) in FLOORS.items():
        for requirement in (declared[name], installed.get(name)):
            assert requirement is not None, f"{name}: not in the installed metadata (reinstall)"
            assert not requirement.specifier.contains(vulnerable, prereleases=True), (
                f"{requirement} admits {name} {vulnerable}, which has a published advisory"
            )
            assert requirement.specifier.contains(fixed, prereleases=True), requirement
        # What is installed (and locked for the image) is at or above the floor.
        assert declared[name].specifier.contains(metadata.version(name), prereleases=True)


def test_the_other_user_does_read_a_world_readable_file(shared_parent: Path) -> None:
    """The control for the attacks above: the same reader opens a 0644 file there."""
    public = shared_parent / "public.txt"
    public.write_text("anyone\n")
    public.chmod(0o644)
    assert read_as_nobody(public) == "read"


# --- what the compose stacks publish ----------------------------------------------------------


def published(compose: Path) -> dict[str, list[str]]:
    """Each service's published ports as compose reads them with no variable set (the
    ``${VAR:-default}`` defaults)."""
    services = yaml.safe_load(compose.read_text())["services"]
    default = re.compile(r"\$\{[A-Z_]+:-([^}]*)\}")
    return {
        name: [default.sub(r"\1", str(port)) for port in service.get("ports", [])]
        for name, service in services.items()
    }


@pytest.mark.parametrize("stack", ["docker-compose.yml", "docker-compose.remote.yml"])
def test_the_compose_stacks_publish_only_the_service_beyond_loopback(stack: str) -> None:
    """The attack: reaching Temporal's frontend (a trusted boundary: any client may start
    tickets at any tier), its UI, Prometheus or the mailbox from another host. By default
    only the HTTP service listens beyond loopback (docs/security.md)."""
    ports = published(ROOT / stack)
    public = {
        f"{name} {port}"
        for name, mappings in ports.items()
        for port in mappings
        if not port.startswith("127.0.0.1:")
    }
    assert {entry.split(" ")[1] for entry in public} == {"8000:8000"}, public
    if stack == "docker-compose.yml":
        loopback = {port.split(":")[-1] for mappings in ports.values() for port in mappings}
        assert {"7233", "8080", "9090", "2525"} <= loopback

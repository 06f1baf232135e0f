"""Where the SLA ledger lives: ``SUPPORT_LEDGER_URL``, else the embedded SQLite file."""

from __future__ import annotations

import os
from pathlib import Path

LEDGER_URL_ENV = "SUPPORT_LEDGER_URL"
DEFAULT_LEDGER_FILE = Path(".data") / "sla-ledger.sqlite3"
# The embedded ledger holds every ticket's requester and history: its directory and file
# are the owner's only, from the moment they exist (no window while another local user
# could open them before a chmod).
PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600


def ledger_url(url: str | None = None) -> str:
    """The async SQLAlchemy URL: plain ``postgresql://`` and ``sqlite:///`` URLs are given
    their async drivers (asyncpg, aiosqlite); the default is ``.data/sla-ledger.sqlite3``."""
    url = url or os.environ.get(LEDGER_URL_ENV) or f"sqlite:///{DEFAULT_LEDGER_FILE}"
    for plain, driver in (
        ("postgresql://", "postgresql+asyncpg://"),
        ("postgres://", "postgresql+asyncpg://"),
        ("sqlite://", "sqlite+aiosqlite://"),
    ):
        if url.startswith(plain):
            return driver + url.removeprefix(plain)
    if not url.startswith(("postgresql+asyncpg://", "sqlite+aiosqlite://")):
        raise ValueError(
            f"{LEDGER_URL_ENV}: {url.split('://')[0]!r} is not supported;"
            " use postgresql://... or sqlite:///path"
        )
    return url


def create_private_sqlite_file(database: str) -> bool:
    """Make the SQLite file ``database`` before SQLAlchemy connects, so it is created
    owner-only: mode 0600 whatever the umask (``os.open`` with ``O_EXCL`` and that mode;
    SQLite gives its ``-wal`` and ``-shm`` files the database file's mode). A directory it
    has to make is 0700. An existing file is left as it is; True when the file was made."""
    if not database or database == ":memory:" or database.startswith("file:"):
        return False  # in memory, or a URI the caller spelled out in full
    path = Path(database)
    path.parent.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE)
    except FileExistsError:
        return False
    os.close(descriptor)
    return True


def redacted(url: str) -> str:
    """The URL without its password, for logs."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)

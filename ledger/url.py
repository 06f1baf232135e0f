"""Where the SLA ledger lives: ``SUPPORT_LEDGER_URL``, else the embedded SQLite file."""

from __future__ import annotations

import os
from pathlib import Path

LEDGER_URL_ENV = "SUPPORT_LEDGER_URL"
DEFAULT_LEDGER_FILE = Path(".data") / "sla-ledger.sqlite3"


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


def redacted(url: str) -> str:
    """The URL without its password, for logs."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)

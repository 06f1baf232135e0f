"""A remote cluster over mutual TLS, configured purely by Temporal's environment
configuration: nginx's ``stream`` module (Debian's nginx-light + libnginx-mod-stream)
terminates TLS in front of the dev server and requires a client certificate from the CA
made in the test; the real worker, intake CLI and ops CLI run as processes with nothing
but ``TEMPORAL_*`` variables (or a TOML profile) and drive a ticket through it."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from subprocess import PIPE

import pytest
import pytest_asyncio
from temporalio.testing import WorkflowEnvironment

from tests.certs import Authority, Issued
from tests.sinks import free_port

ROOT = Path(__file__).resolve().parent.parent
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
STREAM_MODULE = Path("/usr/lib/nginx/modules/ngx_stream_module.so")
REQUIRED = os.environ.get("SUPPORT_REQUIRE_TLS_PROXY") == "1"


@dataclass
class TlsFront:
    address: str
    ca: Path
    client: Issued
    rogue: Issued
    access_log: Path


NGINX_CONF = """
load_module {module};
daemon off;
master_process off;
pid {dir}/nginx.pid;
error_log {dir}/error.log notice;
events {{ worker_connections 256; }}
stream {{
    log_format tls '$remote_addr client="$ssl_client_s_dn" verify=$ssl_client_verify';
    access_log {dir}/access.log tls;
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {server.cert};
        ssl_certificate_key {server.key};
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_client_certificate {ca};
        ssl_verify_client on;
        ssl_alpn h2;
        proxy_pass {upstream};
    }}
}}
"""


@pytest.fixture
def tls_front(dev_server: WorkflowEnvironment, tmp_path: Path) -> Iterator[TlsFront]:
    if not (Path(NGINX).exists() and STREAM_MODULE.exists()):
        message = (
            "nginx with the stream module is not installed (apt: nginx-light libnginx-mod-stream)"
        )
        if REQUIRED:
            pytest.fail(message)
        pytest.skip(message)
    authority = Authority(tmp_path)
    server = authority.issue("server", "localhost", server=True)
    client = authority.issue("client", "support-worker", server=False)
    rogue = Authority(tmp_path, "Someone else CA").issue("rogue", "intruder", server=False)
    port = free_port()
    upstream = dev_server.client.service_client.config.target_host.replace("localhost", "127.0.0.1")
    conf = tmp_path / "nginx.conf"
    conf.write_text(
        NGINX_CONF.format(
            module=STREAM_MODULE,
            dir=tmp_path,
            port=port,
            server=server,
            ca=authority.pem,
            upstream=upstream,
        )
    )
    process = subprocess.Popen(
        [NGINX, "-p", str(tmp_path), "-c", str(conf), "-e", str(tmp_path / "error.log")],
        stderr=PIPE,
    )
    try:
        wait_for_port(port, process)
        yield TlsFront(f"localhost:{port}", authority.pem, client, rogue, tmp_path / "access.log")
    finally:
        process.send_signal(signal.SIGQUIT)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


def wait_for_port(port: int, process: subprocess.Popen[bytes]) -> None:
    for _ in range(100):
        if process.poll() is not None:
            raise AssertionError(
                f"nginx exited: {process.stderr.read().decode() if process.stderr else ''}"
            )
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError("nginx did not listen")


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any Temporal or codec settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TEMPORAL_", "SUPPORT_CODEC"))}
    return {**env, **extra}


def mtls_env(front: TlsFront, client: Issued | None, **extra: str) -> dict[str, str]:
    settings = {
        "TEMPORAL_ADDRESS": front.address,
        "TEMPORAL_NAMESPACE": "default",
        "TEMPORAL_TLS": "true",
        "TEMPORAL_TLS_SERVER_CA_CERT_PATH": str(front.ca),
        "TEMPORAL_TLS_SERVER_NAME": "localhost",
    }
    if client is not None:
        settings["TEMPORAL_TLS_CLIENT_CERT_PATH"] = str(client.cert)
        settings["TEMPORAL_TLS_CLIENT_KEY_PATH"] = str(client.key)
    return clean_env(**settings, **extra)


async def run(args: list[str], env: dict[str, str]) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, *args, cwd=ROOT, env=env, stdout=PIPE, stderr=PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


@pytest_asyncio.fixture(loop_scope="session")
async def worker_over_mtls(tls_front: TlsFront, tmp_path: Path) -> AsyncIterator[dict[str, str]]:
    """``worker.py`` as a process, connected through the TLS front; yields the env the
    CLIs share with it (same task queue)."""
    env = mtls_env(
        tls_front,
        tls_front.client,
        SUPPORT_TASK_QUEUE=f"tls-{uuid.uuid4()}",
        SUPPORT_LEDGER_URL=f"sqlite:///{tmp_path / 'ledger.sqlite3'}",
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "worker.py",
        cwd=ROOT,
        env=env,
        stdout=PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        yield env
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), 20)
        except TimeoutError:
            process.kill()


async def show(ticket_id: str, env: dict[str, str]) -> dict[str, object]:
    code, out, err = await run(["ops.py", "show", ticket_id, "--json"], env)
    assert code == 0, err
    status: dict[str, object] = json.loads(out)
    return status


async def test_a_ticket_runs_through_mutual_tls_from_environment_configuration(
    tls_front: TlsFront, worker_over_mtls: dict[str, str], tmp_path: Path
) -> None:
    env = worker_over_mtls
    ticket_id = f"TLS-{uuid.uuid4().hex[:8]}"
    code, _, err = await run(
        [
            "starter.py",
            "open",
            "--ticket-id",
            ticket_id,
            "--customer-id",
            "acme",
            "--tier",
            "premium",
            "--severity",
            "sev2",
            "--subject",
            "API down",
        ],
        env,
    )
    assert code == 0, err
    for _ in range(100):  # the worker (over mTLS) resolves the policy and sets the deadline
        status = await show(ticket_id, env)
        if status.get("response_due_at"):
            break
        await asyncio.sleep(0.1)
    assert status["state"] == "open" and status["policy_version"] == "2026.11.1"

    code, _, err = await run(["ops.py", "ack", ticket_id, "--agent", "ana"], env)
    assert code == 0, err
    for _ in range(100):
        status = await show(ticket_id, env)
        if status["state"] == "acknowledged":
            break
        await asyncio.sleep(0.1)
    assert status["state"] == "acknowledged" and status["acknowledged_by"] == "ana"

    # The same settings as a TOML profile (TEMPORAL_CONFIG_FILE + TEMPORAL_PROFILE).
    profile = tmp_path / "temporal.toml"
    profile.write_text(
        "[profile.cluster]\n"
        f'address = "{tls_front.address}"\n'
        'namespace = "default"\n'
        "[profile.cluster.tls]\n"
        f'client_cert_path = "{tls_front.client.cert}"\n'
        f'client_key_path = "{tls_front.client.key}"\n'
        f'server_ca_cert_path = "{tls_front.ca}"\n'
        'server_name = "localhost"\n'
    )
    from_profile = clean_env(TEMPORAL_CONFIG_FILE=str(profile), TEMPORAL_PROFILE="cluster")
    assert (await show(ticket_id, from_profile))["acknowledged_by"] == "ana"

    # Every connection went through TLS with the client certificate verified.
    # (The first line is the fixture's readiness probe: a bare TCP connect.)
    probe, *connections = tls_front.access_log.read_text().splitlines()
    assert probe.endswith('client="-" verify=NONE')
    assert len(connections) >= 6, connections  # worker, starter, four ops commands
    assert all(line.endswith('client="CN=support-worker" verify=SUCCESS') for line in connections)


@pytest.mark.parametrize("case", ["no client certificate", "another CA's certificate", "plaintext"])
async def test_the_front_refuses_clients_without_a_trusted_certificate(
    tls_front: TlsFront, case: str
) -> None:
    if case == "plaintext":
        env = clean_env(TEMPORAL_ADDRESS=tls_front.address, TEMPORAL_NAMESPACE="default")
    else:
        env = mtls_env(tls_front, None if case == "no client certificate" else tls_front.rogue)
    code, out, err = await run(["ops.py", "list"], env)
    assert code == 1, (out, err)
    assert err.startswith("error: cannot connect to Temporal:"), err
    assert "verify=SUCCESS" not in tls_front.access_log.read_text()

"""A remote cluster configured purely by Temporal's environment configuration, two ways:

- mutual TLS: nginx's ``stream`` module (Debian's nginx-light + libnginx-mod-stream)
  terminates TLS in front of the dev server and requires a client certificate from the CA
  made in the test;
- an API key: nginx's gRPC proxy (HTTP/2 over TLS) lets through only requests carrying
  ``authorization: Bearer <the test's key>``, as Temporal Cloud checks API keys.

The real worker, intake CLI, ops CLI (and the HTTP service) run as processes with nothing
but ``TEMPORAL_*`` variables (or a TOML profile) and drive a ticket through the front."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from subprocess import PIPE

import pytest
import pytest_asyncio
from temporalio.testing import WorkflowEnvironment

from harness.processes import (
    ROOT,
    background,
    eventually,
    eventually_blocking,
    free_port,
    listening,
    service_process,
)
from policy.load import default_policy_path, load_policy
from tests.certs import Authority, Issued

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


@dataclass
class ApiKeyFront:
    address: str
    ca: Path
    key: str
    access_log: Path


NGINX_MAIN = """
daemon off;
master_process off;
pid {dir}/nginx.pid;
error_log {dir}/error.log notice;
events {{ worker_connections 256; }}
"""

MTLS_CONF = (
    "load_module {module};\n"
    + NGINX_MAIN
    + """
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
)

# The key is matched by a case-sensitive regex (a plain map string ignores case) and
# logged only as valid / wrong / missing, never itself. A refusal carries gRPC's own
# UNAUTHENTICATED in its headers (the client reads those before the HTML body of a bare
# 401); long polls outlive nginx's 60 s default timeout. The temp paths move out of
# /var/lib/nginx, which needs root. (nginx >= 1.25.1 prefers `http2 on;`; this still works.)
API_KEY_CONF = (
    NGINX_MAIN
    + """
http {{
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    map $http_authorization $api_key {{
        "~^Bearer {key}$" valid;
        "" missing;
        default wrong;
    }}
    log_format grpc '$request_uri $status key=$api_key';
    access_log {dir}/access.log grpc;
    server {{
        listen 127.0.0.1:{port} ssl http2;
        ssl_certificate {server.cert};
        ssl_certificate_key {server.key};
        ssl_protocols TLSv1.2 TLSv1.3;
        location / {{
            if ($api_key != valid) {{
                add_header grpc-status 16 always;
                add_header grpc-message "API key missing or not valid" always;
                return 401;
            }}
            grpc_pass grpc://{upstream};
            grpc_read_timeout 5m;
            grpc_send_timeout 5m;
        }}
    }}
}}
"""
)


def require_nginx(missing: str, *modules: Path) -> None:
    if Path(NGINX).exists() and all(module.exists() for module in modules):
        return
    if REQUIRED:
        pytest.fail(missing)
    pytest.skip(missing)


def dev_upstream(dev_server: WorkflowEnvironment) -> str:
    return dev_server.client.service_client.config.target_host.replace("localhost", "127.0.0.1")


@contextmanager
def nginx(directory: Path, conf: str, port: int) -> Iterator[None]:
    """nginx in the foreground with ``conf``, until the block ends."""
    path = directory / "nginx.conf"
    path.write_text(conf)
    process = subprocess.Popen(
        [NGINX, "-p", str(directory), "-c", str(path), "-e", str(directory / "error.log")],
        stderr=PIPE,
    )
    try:
        wait_for_port(port, process)
        yield
    finally:
        process.send_signal(signal.SIGQUIT)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.fixture
def tls_front(dev_server: WorkflowEnvironment, tmp_path: Path) -> Iterator[TlsFront]:
    require_nginx(
        "nginx with the stream module is not installed (apt: nginx-light libnginx-mod-stream)",
        STREAM_MODULE,
    )
    authority = Authority(tmp_path)
    server = authority.issue("server", "localhost", server=True)
    client = authority.issue("client", "support-worker", server=False)
    rogue = Authority(tmp_path, "Someone else CA").issue("rogue", "intruder", server=False)
    port = free_port()
    conf = MTLS_CONF.format(
        module=STREAM_MODULE,
        dir=tmp_path,
        port=port,
        server=server,
        ca=authority.pem,
        upstream=dev_upstream(dev_server),
    )
    with nginx(tmp_path, conf, port):
        yield TlsFront(f"localhost:{port}", authority.pem, client, rogue, tmp_path / "access.log")


@pytest.fixture
def api_key_front(dev_server: WorkflowEnvironment, tmp_path: Path) -> Iterator[ApiKeyFront]:
    require_nginx("nginx is not installed (apt: nginx-light)")
    authority = Authority(tmp_path)
    server = authority.issue("server", "localhost", server=True)
    key = secrets.token_urlsafe(24)  # [A-Za-z0-9_-]: literal in the regex above
    port = free_port()
    conf = API_KEY_CONF.format(
        dir=tmp_path, port=port, server=server, key=key, upstream=dev_upstream(dev_server)
    )
    with nginx(tmp_path, conf, port):
        yield ApiKeyFront(f"localhost:{port}", authority.pem, key, tmp_path / "access.log")


def wait_for_port(port: int, process: subprocess.Popen[bytes]) -> None:
    def up() -> bool:
        if process.poll() is not None:
            raise AssertionError(
                f"nginx exited: {process.stderr.read().decode() if process.stderr else ''}"
            )
        return listening(port)

    eventually_blocking(f"nginx to listen on :{port}", up, 5)


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


def api_key_env(front: ApiKeyFront, key: str | None, **extra: str) -> dict[str, str]:
    """An API key turns TLS on by itself; the CA path is only there because the front's
    CA is private (a CA path alone turns TLS on too, so "no key" is still TLS)."""
    settings = {
        "TEMPORAL_ADDRESS": front.address,
        "TEMPORAL_NAMESPACE": "default",
        "TEMPORAL_TLS_SERVER_CA_CERT_PATH": str(front.ca),
    }
    if key is not None:
        settings["TEMPORAL_API_KEY"] = key
    return clean_env(**settings, **extra)


def worker_settings(tmp_path: Path) -> dict[str, str]:
    return {
        "SUPPORT_TASK_QUEUE": f"tls-{uuid.uuid4()}",
        "SUPPORT_LEDGER_URL": f"sqlite:///{tmp_path / 'ledger.sqlite3'}",
    }


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
    env = mtls_env(tls_front, tls_front.client, **worker_settings(tmp_path))
    async with background(["worker.py"], env, tmp_path / "worker.log"):
        yield env


@pytest_asyncio.fixture(loop_scope="session")
async def worker_over_api_key(
    api_key_front: ApiKeyFront, tmp_path: Path
) -> AsyncIterator[dict[str, str]]:
    """``worker.py`` through the API-key front; yields the env the CLIs share with it."""
    env = api_key_env(api_key_front, api_key_front.key, **worker_settings(tmp_path))
    async with background(["worker.py"], env, tmp_path / "worker.log"):
        yield env


async def show(ticket_id: str, env: dict[str, str]) -> dict[str, object]:
    code, out, err = await run(["-m", "ops", "show", ticket_id, "--json"], env)
    assert code == 0, err
    status: dict[str, object] = json.loads(out)
    return status


async def shown(ticket_id: str, env: dict[str, str], field: str) -> dict[str, object] | None:
    """``ops show``'s status once ``field`` is set."""
    status = await show(ticket_id, env)
    return status if status.get(field) else None


def sessions(access_log: Path, at_least: int) -> list[str]:
    """The stream front's log once it has ``at_least`` lines: nginx logs a session when
    the connection closes, a moment after the client process has exited."""

    def logged() -> list[str] | None:
        lines = access_log.read_text().splitlines()
        return lines if len(lines) >= at_least else None

    return eventually_blocking(f"{at_least} sessions in {access_log}", logged, 5, every=0.1)


async def open_and_acknowledge(env: dict[str, str], prefix: str) -> str:
    """``starter.py open``, then ``ops.py ack`` once the worker has set the deadline, all
    with ``env``; returns the ticket id."""
    ticket_id = f"{prefix}-{uuid.uuid4().hex[:8]}"
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
    # The worker (through the front) resolves the policy and sets the deadline.
    status = await eventually(
        f"{ticket_id}'s deadline", partial(shown, ticket_id, env, "response_due_at"), 10
    )
    assert status["state"] == "open" and status["policy_version"] == (
        load_policy(default_policy_path()).version
    )

    code, _, err = await run(["-m", "ops", "ack", ticket_id, "--agent", "ana"], env)
    assert code == 0, err
    status = await eventually(
        f"{ticket_id} acknowledged", partial(shown, ticket_id, env, "acknowledged_by"), 10
    )
    assert status["state"] == "acknowledged" and status["acknowledged_by"] == "ana"
    return ticket_id


async def test_a_ticket_runs_through_mutual_tls_from_environment_configuration(
    tls_front: TlsFront, worker_over_mtls: dict[str, str], tmp_path: Path
) -> None:
    ticket_id = await open_and_acknowledge(worker_over_mtls, "TLS")

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

    # Every connection went through TLS with the client certificate verified. (The first
    # line is the fixture's readiness probe, a bare TCP connect; then the starter and at
    # least four ops commands. The worker's connection is still open, so not logged yet.)
    probe, *connections = sessions(tls_front.access_log, 6)
    assert probe.endswith('client="-" verify=NONE')
    assert len(connections) >= 5, connections
    assert all(line.endswith('client="CN=support-worker" verify=SUCCESS') for line in connections)


@pytest.mark.parametrize("case", ["no client certificate", "another CA's certificate", "plaintext"])
async def test_the_front_refuses_clients_without_a_trusted_certificate(
    tls_front: TlsFront, case: str
) -> None:
    if case == "plaintext":
        env = clean_env(TEMPORAL_ADDRESS=tls_front.address, TEMPORAL_NAMESPACE="default")
    else:
        env = mtls_env(tls_front, None if case == "no client certificate" else tls_front.rogue)
    code, out, err = await run(["-m", "ops", "list"], env)
    assert code == 1, (out, err)
    assert err.startswith("error: cannot connect to Temporal:"), err
    assert "verify=SUCCESS" not in tls_front.access_log.read_text()


async def test_the_http_service_opens_a_ticket_over_mutual_tls(
    tls_front: TlsFront, dev_server: WorkflowEnvironment, tmp_path: Path
) -> None:
    token, ticket_id = "tls-intake-0123456789", f"WEB-{uuid.uuid4().hex[:8]}"
    env = mtls_env(
        tls_front,
        tls_front.client,
        SUPPORT_TASK_QUEUE=f"tls-{uuid.uuid4()}",
        SUPPORT_INTAKE_TOKENS=f"portal:{token}",
        SUPPORT_INTAKE_SCOPES="portal=customers:*;max_tier:premium",
        SUPPORT_LINK_SECRET="tls-link-secret-7Pd2Rg9Lf4Yw1Tk6Hc3Mz",
    )
    async with service_process(env, tmp_path / "service.log") as http:
        health = await http.get("/healthz")
        assert health.json() == {"status": "ok", "temporal": True}
        body = {
            "ticket_id": ticket_id,
            "customer_id": "acme",
            "tier": "premium",
            "severity": "sev2",
        }
        response = await http.post(
            "/api/tickets", json=body, headers={"Authorization": f"Bearer {token}"}
        )
        assert response.status_code == 201, response.text
    started = await dev_server.client.get_workflow_handle(f"ticket-{ticket_id}").describe()
    assert started.workflow_type == "SupportTicket"
    _probe, *connections = sessions(tls_front.access_log, 2)
    assert connections, "the service's connection is not in the front's log"
    assert all(line.endswith('client="CN=support-worker" verify=SUCCESS') for line in connections)


async def test_a_ticket_runs_through_an_api_key_front_from_environment_configuration(
    api_key_front: ApiKeyFront, worker_over_api_key: dict[str, str]
) -> None:
    await open_and_acknowledge(worker_over_api_key, "KEY")

    # Every request the worker and the CLIs made went through the front with the key,
    # the very first one (GetSystemInfo, at connect) included.
    requests = api_key_front.access_log.read_text().splitlines()
    assert requests and all(line.endswith(" 200 key=valid") for line in requests), requests
    methods = {line.split()[0].rsplit("/", 1)[-1] for line in requests}
    assert {
        "GetSystemInfo",
        "StartWorkflowExecution",
        "PollWorkflowTaskQueue",
        # (No RespondActivityTaskCompleted: the ticket's activities succeed in their local
        # first attempt, inside the workflow task.)
        "RespondWorkflowTaskCompleted",
        "UpdateWorkflowExecution",  # the ack: agent actions are Updates
        "QueryWorkflow",
    } <= methods, methods


@pytest.mark.parametrize("case", ["wrong", "missing"])
async def test_the_front_refuses_a_wrong_or_missing_api_key(
    api_key_front: ApiKeyFront, case: str
) -> None:
    env = api_key_env(api_key_front, secrets.token_urlsafe(24) if case == "wrong" else None)
    code, out, err = await run(["-m", "ops", "list"], env)
    assert code == 1, (out, err)
    assert err.startswith("error: cannot connect to Temporal:"), err
    assert "Unauthenticated" in err and "API key missing or not valid" in err, err
    log = api_key_front.access_log.read_text()
    assert f"GetSystemInfo 401 key={case}" in log and "key=valid" not in log, log

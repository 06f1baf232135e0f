"""Issue 15, part 6: no acknowledge link or token in any log.

The attacks: read the HTTP service's access log after acknowledge links were followed (the
real ``python -m service`` process, and the app under a uvicorn logging set up by someone
else), and read the worker's log after the ``log`` channel delivered a notification with a
link. Each asserts the link's token is not there, and that the line itself is (redacted).
"""

from __future__ import annotations

import io
import logging
import secrets
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
import structlog
from temporalio.testing import WorkflowEnvironment

from activities.channels import ChannelSender, Notification
from contract.models import Channel, Recipient
from harness.processes import clean_env, service_process
from harness.serve import serve
from runtime.links import AckLinks
from runtime.logs import REDACTED, configure_logging, redact
from service.app import create_app
from service.auth import Settings
from tests.unit.tickets import delivery

SECRET = f"k1:{secrets.token_urlsafe(32)}"
AGENT = "agent-ana-" + secrets.token_hex(12)


@pytest.fixture
def root_logging() -> Iterator[io.StringIO]:
    """The project's JSON logging (runtime.logs) into a buffer; the previous set-up back
    afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    stream = io.StringIO()
    configure_logging("INFO", stream)
    try:
        yield stream
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        structlog.reset_defaults()


def target_of(dev_server: WorkflowEnvironment) -> str:
    return dev_server.client.service_client.config.target_host


async def test_the_service_access_log_never_shows_an_acknowledge_link(
    dev_server: WorkflowEnvironment, tmp_path: Path
) -> None:
    log = tmp_path / "service.log"
    env = clean_env(
        TEMPORAL_ADDRESS=target_of(dev_server),
        SUPPORT_LINK_SECRET=SECRET,
        SUPPORT_AGENT_TOKENS=f"ana:{AGENT}",
        SUPPORT_LEDGER_URL=f"sqlite:///{tmp_path / 'ledger.sqlite3'}",
        SUPPORT_LOG_LEVEL="INFO",
    )
    links = AckLinks(SECRET, timedelta(hours=1), "http://localhost:8000")
    token = links.token(f"LOG-{uuid.uuid4().hex[:8]}", "ana")
    forged = "eyJ0IjoiWCJ9.forged-link-token-" + secrets.token_hex(8)
    async with service_process(env, log) as http:
        assert (await http.get(f"/board/ack/{token}")).status_code == 404  # no such ticket
        assert (await http.post(f"/board/ack/{token}")).status_code == 404
        assert (await http.get(f"/board/ack/{forged}")).status_code == 403
        # An agent token sent as a bearer token or in a query is not logged either.
        await http.get(f"/api/tickets?token={AGENT}", headers={"Authorization": f"Bearer {AGENT}"})
        # Nor a requester's confirmation link (its token rides in the query).
        confirm = secrets.token_urlsafe(32)
        assert (await http.get(f"/support/confirm?token={confirm}")).status_code in (404, 503)
    text = log.read_text()
    access = [line for line in text.splitlines() if "/board/ack/" in line]
    assert len(access) >= 3, text  # the access log has the requests...
    assert all(f"/board/ack/{REDACTED}" in line for line in access), access
    assert any("/support/confirm?token=" in line for line in text.splitlines()), text
    for secret in (token, forged, forged.split(".")[1], AGENT, confirm):
        assert secret not in text  # ...and none of the secrets


async def test_the_access_log_is_redacted_whoever_configures_uvicorns_logging(
    dev_server: WorkflowEnvironment, tmp_path: Path
) -> None:
    """`uvicorn service...` with uvicorn's own logging: its access logger has a handler of
    its own, and the app still keeps links out of it."""
    access = logging.getLogger("uvicorn.access")
    before = (access.handlers[:], access.level, access.propagate, access.filters[:])
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter('%(client_addr)s - "%(request_line)s" %(status_code)s'))
    access.handlers[:] = [handler]
    access.setLevel(logging.INFO)
    access.propagate = False
    access.filters[:] = []
    settings = Settings(
        agent_tokens={AGENT: "ana"},
        link_secret=SECRET,
        ledger_url=f"sqlite:///{tmp_path / 'ledger.sqlite3'}",
    )
    token = AckLinks(SECRET, timedelta(hours=1), "http://x").token("LOG-X", "ana")

    class RequestLine(logging.Filter):  # the fields uvicorn's access formatter reads
        def filter(self, record: logging.LogRecord) -> bool:
            client, method, path, version, status = record.args  # type: ignore[misc]
            record.client_addr, record.status_code = client, status
            record.request_line = f"{method} {path} HTTP/{version}"
            return True

    handler.addFilter(RequestLine())
    try:
        app = create_app(client=dev_server.client, settings=settings, queue="tq-logs")
        async with serve(app) as url, httpx.AsyncClient(base_url=url) as http:
            await http.get(f"/board/ack/{token}")
        text = stream.getvalue()
        assert f"GET /board/ack/{REDACTED} HTTP/1.1" in text, text
        assert token not in text
    finally:
        access.handlers[:], access.level, access.propagate, access.filters[:] = before


async def test_the_log_channel_writes_no_acknowledge_link(
    root_logging: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SUPPORT_LINK_SECRET", SECRET)
    monkeypatch.setenv("SUPPORT_PUBLIC_URL", "https://support.example")
    recipient = Recipient(name="duty-engineer", channels=[Channel(type="log")])
    message = Notification.of(
        delivery(ticket_id="LOG-1", workflow_id="ticket-LOG-1"), recipient, "k"
    )
    link = message.ack_link
    assert link is not None and "/board/ack/" in link  # the other channels carry it
    token = link.rsplit("/", 1)[1]
    async with httpx.AsyncClient() as http:
        await ChannelSender(http).send(Channel(type="log"), message)
    text = root_logging.getvalue()
    assert '"channel": "log"' in text and "https://support.example/board/ack/[redacted]" in text
    assert token not in text and link not in text


def test_every_log_line_is_redacted_structlog_and_stdlib_alike(
    root_logging: io.StringIO,
) -> None:
    link = "https://support.example/board/ack/" + secrets.token_urlsafe(40)
    structlog.get_logger("support.test").warning("a link", url=link, nested={"u": [link]})
    logging.getLogger("some.library").warning("fetched %s with Bearer %s", link, AGENT)
    text = root_logging.getvalue()
    assert text.count(REDACTED) == 4, text
    assert link.rsplit("/", 1)[1] not in text and AGENT not in text
    assert redact("GET /board?page=2 HTTP/1.1") == "GET /board?page=2 HTTP/1.1"

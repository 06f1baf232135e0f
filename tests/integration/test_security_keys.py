"""Issue 15, part 5: separate keys, HMAC-SHA256, a key ring, and no weak secret.

The attacks: a link signed with a key that was removed from the ring, a link or a cookie
signed with the key of another purpose (or with the master secret itself, or the old
HMAC-SHA1 scheme), and a service started with a weak secret. What rotation must not break
is checked too: a link and a session signed with an old key that is still listed.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
import structlog
from itsdangerous import URLSafeTimedSerializer
from temporalio.testing import WorkflowEnvironment

from harness.processes import ROOT, clean_env
from harness.serve import serve
from runtime.links import (
    CSRF_KEY,
    LINK_KEY,
    SESSION_KEY,
    AckLinks,
    KeyConfigError,
    KeyRing,
    LinkError,
    check_strength,
)
from service.app import create_app
from service.auth import Settings, TokenConfigError
from service.pages import SESSION_COOKIE
from service.sessions import session_cookie

OLD = secrets.token_urlsafe(32)
NEW = secrets.token_urlsafe(32)
AGENT = "agent-ana-" + secrets.token_hex(12)
CSRF_FIELD = re.compile(r'name="csrf" value="([^"]+)"')
TTL = timedelta(hours=1)


def links(ring: str) -> AckLinks:
    return AckLinks(KeyRing.parse(ring), TTL, "https://support.example")


@asynccontextmanager
async def service(
    dev_server: WorkflowEnvironment, ring: str, ledger_url: str
) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(agent_tokens={AGENT: "ana"}, link_secret=ring, ledger_url=ledger_url)
    app = create_app(client=dev_server.client, settings=settings, queue=f"tq-{uuid.uuid4()}")
    async with (
        serve(app) as url,
        httpx.AsyncClient(base_url=url, timeout=10, follow_redirects=False) as http,
    ):
        yield http


# --- the key ring: rotation keeps what a listed key signed, and only that ---------------------


async def test_a_link_signed_with_an_old_but_listed_key_works_and_a_removed_key_does_not(
    dev_server: WorkflowEnvironment, tmp_path: Path
) -> None:
    ledger = f"sqlite:///{tmp_path}/ledger.sqlite3"
    old_link = links(f"k1:{OLD}").token(f"KEY-{uuid.uuid4().hex[:6]}", "ana")
    # Rotated: the new key first, the old one still listed.
    async with service(dev_server, f"k2:{NEW},k1:{OLD}", ledger) as http:
        accepted = await http.get(f"/board/ack/{old_link}")
        assert accepted.status_code == 404 and "No such ticket" in accepted.text  # verified
    # The old key removed: what it signed is refused.
    async with service(dev_server, f"k2:{NEW}", ledger) as http:
        refused = await http.get(f"/board/ack/{old_link}")
        assert refused.status_code == 403 and "this acknowledge link is not valid" in refused.text
        refused = await http.post(f"/board/ack/{old_link}")
        assert refused.status_code == 403


def test_links_are_signed_with_the_newest_key_and_verified_with_any_listed() -> None:
    rotated = links(f"k2:{NEW},k1:{OLD}")
    token = rotated.token("T", "ana")
    assert links(f"k2:{NEW}").read(token).ticket_id == "T"  # signed with the newest
    with pytest.raises(LinkError, match="not valid"):
        links(f"k1:{OLD}").read(token)
    assert rotated.read(links(f"k1:{OLD}").token("T", "ana")).agent == "ana"


def test_links_are_hmac_sha256_with_a_key_of_their_own() -> None:
    ring = KeyRing.parse(f"k1:{OLD}")
    token = links(f"k1:{OLD}").token("T", "ana")
    signature = token.rsplit(".", 1)[1]
    assert len(base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4))) == 32
    # Each purpose has its own key, none of them the master secret.
    keys = {purpose: ring.derived(purpose)[0] for purpose in (LINK_KEY, SESSION_KEY, CSRF_KEY)}
    assert len(set(keys.values())) == 3 and OLD.encode() not in keys.values()
    # A link signed with another purpose's key, with the master secret itself, or in the
    # old HMAC-SHA1 scheme is refused.
    payload = {"t": "T", "a": "ana", "n": "0011223344556677"}
    forged = [
        URLSafeTimedSerializer(
            keys[SESSION_KEY], salt=AckLinks.SALT, signer_kwargs={"digest_method": hashlib.sha256}
        ).dumps(payload),
        URLSafeTimedSerializer(
            OLD, salt=AckLinks.SALT, signer_kwargs={"digest_method": hashlib.sha256}
        ).dumps(payload),
        URLSafeTimedSerializer(OLD, salt="support-ack-link").dumps(payload),
    ]
    for token in forged:
        with pytest.raises(LinkError, match="not valid"):
            links(f"k1:{OLD}").read(token)


async def test_a_session_survives_rotation_while_its_key_is_listed_and_ends_when_removed(
    dev_server: WorkflowEnvironment, tmp_path: Path
) -> None:
    ledger = f"sqlite:///{tmp_path}/ledger.sqlite3"
    async with service(dev_server, f"k1:{OLD}", ledger) as http:
        form = await http.get("/board/login")
        csrf = CSRF_FIELD.search(form.text)
        assert csrf is not None
        data = {"token": AGENT, "csrf": csrf.group(1)}
        assert (await http.post("/board/login", data=data)).status_code == 303
        cookie = http.cookies[SESSION_COOKIE]
        board = await http.get("/board")
        old_csrf = CSRF_FIELD.search(board.text)
        assert board.status_code == 200 and old_csrf is not None

    async with service(dev_server, f"k2:{NEW},k1:{OLD}", ledger) as http:
        http.cookies.set(SESSION_COOKIE, cookie)
        board = await http.get("/board")
        assert board.status_code == 200, "a session signed with a listed key goes on"
        new_csrf = CSRF_FIELD.search(board.text)
        assert new_csrf is not None and new_csrf.group(1) != old_csrf.group(1)
        # The form the agent already had (its token signed with the old key) still works.
        action = await http.post("/board/tickets/NOPE/ack", data={"csrf": old_csrf.group(1)})
        assert action.status_code == 303 and action.headers["location"].startswith("/board?")

    async with service(dev_server, f"k2:{NEW}", ledger) as http:
        http.cookies.set(SESSION_COOKIE, cookie)
        board = await http.get("/board")
        assert (board.status_code, board.headers["location"]) == (303, "/board/login")
        # The same session id, signed with the new key, is the live session: the cookie's
        # signature alone was refused.
        session_id = cookie.rsplit(".", 1)[0]
        http.cookies.set(SESSION_COOKIE, session_cookie(KeyRing.parse(f"k2:{NEW}"), session_id))
        assert (await http.get("/board")).status_code == 200


# --- no weak or malformed secret --------------------------------------------------------------

WEAK = {
    "short": "web-test-secret",
    "repeated": "changeme-changeme-changeme-changeme",
    "one character": "a" * 48,
    "a sequence twice": "0123456789abcdef" * 2,
}


@pytest.mark.parametrize("secret", WEAK.values(), ids=WEAK.keys())
def test_a_weak_secret_is_refused(secret: str) -> None:
    assert check_strength(secret) is not None
    with pytest.raises(KeyConfigError, match="SUPPORT_LINK_SECRET: the secret of key '0'"):
        KeyRing.parse(secret)
    with pytest.raises(KeyConfigError, match=r"key 'k1' \(entry 2\) is too weak"):
        KeyRing.parse(f"k2:{NEW},k1:{secret}")


def test_random_secrets_are_accepted() -> None:
    for _ in range(200):
        for secret in (secrets.token_urlsafe(32), secrets.token_hex(16), secrets.token_hex(32)):
            assert check_strength(secret) is None, secret


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (f"k1:{OLD},{NEW}", "entry 2 must be id:secret"),
        (f"k1:{OLD},k1:{NEW}", "key id 'k1' is listed twice"),
        (" , ", "no secret given"),
    ],
    # OLD and NEW are random: ids of their own, the same in every pytest-xdist worker.
    ids=["an entry without an id", "an id twice", "blank entries"],
)
def test_a_malformed_key_ring_is_refused(value: str, problem: str) -> None:
    with pytest.raises(KeyConfigError, match=problem):
        KeyRing.parse(value)


def test_the_settings_refuse_a_weak_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUPPORT_LINK_SECRET", "k1:short-secret")
    with pytest.raises(TokenConfigError, match="SUPPORT_LINK_SECRET: the secret of key 'k1'"):
        Settings.from_env()
    monkeypatch.setenv("SUPPORT_LINK_SECRET", f"k2:{NEW},k1:{OLD}")
    assert Settings.from_env().keys.ids == ["k2", "k1"]


def start_refused(
    command: list[str], error: str, **settings: str
) -> subprocess.CompletedProcess[str]:
    """``python <command>`` from the project's root with none of this machine's Temporal or
    support settings but ``settings``: it must refuse to start (a non-zero exit), with
    ``error`` on stderr."""
    done = subprocess.run(
        [sys.executable, *command],
        cwd=ROOT,
        env=clean_env(**settings),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    assert error in done.stderr, done.stderr
    return done


WEAK_SECRET = "web-test-secret"
WEAK_SECRET_ERROR = (
    "error: SUPPORT_LINK_SECRET: the secret of key '0' (entry 1) is too weak: it has 15"
    " characters, at least 32 are needed"
)


def test_the_service_refuses_to_start_with_a_weak_secret() -> None:
    done = start_refused(["-m", "service"], WEAK_SECRET_ERROR, SUPPORT_LINK_SECRET=WEAK_SECRET)
    assert WEAK_SECRET not in done.stderr + done.stdout  # the error names no secret


def test_the_worker_refuses_to_start_with_a_weak_secret() -> None:
    done = start_refused(["worker.py"], WEAK_SECRET_ERROR, SUPPORT_LINK_SECRET=WEAK_SECRET)
    assert done.returncode == 2
    assert WEAK_SECRET not in done.stderr + done.stdout


def test_the_worker_makes_no_links_with_a_weak_secret_and_says_why(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SUPPORT_PUBLIC_URL", "https://support.example")
    monkeypatch.setenv("SUPPORT_LINK_SECRET", "short")
    with structlog.testing.capture_logs() as logs:
        assert AckLinks.from_env() is None
    assert logs[0]["log_level"] == "error"
    assert "SUPPORT_LINK_SECRET: the secret of key '0'" in logs[0]["error"]
    monkeypatch.setenv("SUPPORT_LINK_SECRET", f"k2:{NEW},k1:{OLD}")
    assert AckLinks.from_env() is not None

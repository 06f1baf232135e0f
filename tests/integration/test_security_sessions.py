"""Issue 15, part 4: server-side board sessions and CSRF, attacked over real HTTP.

The service runs on uvicorn against the real dev server, its sessions in a real ledger
database (SQLite and PostgreSQL). Each test performs an attack -- a copied cookie replayed
after logout, a session kept after the agent's token is rotated, a POST without its CSRF
token or with another session's -- and asserts it fails.
"""

from __future__ import annotations

import re
import secrets
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
import structlog
from sqlalchemy import func, select
from temporalio.testing import WorkflowEnvironment

from harness.serve import serve
from service.api import ApiError
from service.app import create_app
from service.auth import Settings
from service.pages import LOGIN_COOKIE, SESSION_COOKIE
from service.sessions import UNAVAILABLE, SessionStore, agent_sessions, session_cookie

AGENTS = {"ana": "agent-ana-" + secrets.token_hex(12), "bob": "agent-bob-" + secrets.token_hex(12)}
KEYS = f"k1:{secrets.token_urlsafe(32)}"
CSRF_FIELD = re.compile(r'name="csrf" value="([^"]+)"')


@dataclass
class Board:
    url: str
    settings: Settings
    client: object


def settings_for(ledger_url: str, agents: dict[str, str] = AGENTS) -> Settings:
    return Settings(
        agent_tokens={token: name for name, token in agents.items()},
        link_secret=KEYS,
        ledger_url=ledger_url,
    )


@asynccontextmanager
async def served(dev_server: WorkflowEnvironment, settings: Settings) -> AsyncIterator[str]:
    app = create_app(client=dev_server.client, settings=settings, queue=f"tq-{uuid.uuid4()}")
    async with serve(app) as url:
        yield url


@pytest_asyncio.fixture(loop_scope="session")
async def board(dev_server: WorkflowEnvironment, ledger_url: str) -> AsyncIterator[Board]:
    settings = settings_for(ledger_url)
    async with served(dev_server, settings) as url:
        yield Board(url, settings, dev_server.client)


def browser(url: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=url, timeout=10, follow_redirects=False)


def csrf_of(page: httpx.Response) -> str:
    found = CSRF_FIELD.search(page.text)
    assert found, page.text
    return found.group(1)


async def sign_in(http: httpx.AsyncClient, token: str) -> str:
    """Sign in as a browser does (the form, then its POST); the board's CSRF token."""
    form = await http.get("/board/login")
    assert form.status_code == 200
    response = await http.post("/board/login", data={"token": token, "csrf": csrf_of(form)})
    assert response.status_code == 303 and response.headers["location"] == "/board"
    return await board_csrf(http)


async def board_csrf(http: httpx.AsyncClient) -> str:
    page = await http.get("/board")
    assert page.status_code == 200, page.text
    return csrf_of(page)


async def signed_in(http: httpx.AsyncClient) -> bool:
    response = await http.get("/board")
    if response.status_code == 303:
        assert response.headers["location"] == "/board/login"
        return False
    assert response.status_code == 200
    return True


async def act(http: httpx.AsyncClient, csrf: str | None) -> httpx.Response:
    """A board action on a ticket that does not exist: past the session and CSRF checks
    it is answered with the board's notice, else with the login page or 403."""
    data = {} if csrf is None else {"csrf": csrf}
    return await http.post(f"/board/tickets/NOPE-{uuid.uuid4().hex[:6]}/ack", data=data)


def passed_checks(response: httpx.Response) -> bool:
    return response.status_code == 303 and response.headers["location"].startswith("/board?notice=")


async def rows(settings: Settings) -> int:
    store = SessionStore(settings.ledger_url)
    db = await store._db()
    try:
        async with db.engine.connect() as conn:
            return int(await conn.scalar(select(func.count()).select_from(agent_sessions)) or 0)
    finally:
        await store.close()


# --- logout ends the session, copies of its cookie included ---------------------------------


async def test_a_copied_cookie_stops_working_after_logout(board: Board) -> None:
    async with browser(board.url) as agent, browser(board.url) as thief:
        csrf = await sign_in(agent, AGENTS["ana"])
        thief.cookies.set(SESSION_COOKIE, agent.cookies[SESSION_COOKIE])
        assert await signed_in(thief)  # the copy is the session, until it ends
        assert await rows(board.settings) == 1

        logout = await agent.post("/board/logout", data={"csrf": csrf})
        assert logout.status_code == 303 and logout.headers["location"] == "/board/login"
        assert await rows(board.settings) == 0  # ended on the server, not only in the browser

        assert not await signed_in(thief)
        replay = await act(thief, csrf)
        assert replay.status_code == 303 and replay.headers["location"] == "/board/login"
        # The agent's own browser, replaying the cookie it had, is refused the same way.
        agent.cookies.set(SESSION_COOKIE, thief.cookies[SESSION_COOKIE])
        assert not await signed_in(agent)


async def test_signing_in_again_ends_the_browsers_previous_session(board: Board) -> None:
    async with browser(board.url) as agent, browser(board.url) as copy:
        await sign_in(agent, AGENTS["ana"])
        copy.cookies.set(SESSION_COOKIE, agent.cookies[SESSION_COOKIE])
        await sign_in(agent, AGENTS["ana"])
        assert await signed_in(agent) and not await signed_in(copy)


# --- rotating an agent's token ends the sessions made with it --------------------------------


async def test_a_session_ends_when_the_agents_token_is_rotated(
    board: Board, dev_server: WorkflowEnvironment
) -> None:
    async with browser(board.url) as ana, browser(board.url) as bob:
        await sign_in(ana, AGENTS["ana"])
        await sign_in(bob, AGENTS["bob"])
        ana_cookie, bob_cookie = ana.cookies[SESSION_COOKIE], bob.cookies[SESSION_COOKIE]

    # The operator gives ana a new token and restarts the service: same database, same keys.
    new_token = "agent-ana-" + secrets.token_hex(12)
    rotated = settings_for(str(board.settings.ledger_url), {**AGENTS, "ana": new_token})
    async with served(dev_server, rotated) as url, browser(url) as ana, browser(url) as bob:
        ana.cookies.set(SESSION_COOKIE, ana_cookie)
        bob.cookies.set(SESSION_COOKIE, bob_cookie)
        assert not await signed_in(ana), "a session made with the old token must end"
        assert await signed_in(bob), "the sessions of other agents survive the restart"
        # Signing in with the old token fails; the new one works.
        form = await ana.get("/board/login")
        old = await ana.post("/board/login", data={"token": AGENTS["ana"], "csrf": csrf_of(form)})
        assert old.status_code == 401
        await sign_in(ana, new_token)

    # An agent whose token is removed altogether keeps no session either.
    removed = settings_for(str(board.settings.ledger_url), {"ana": new_token})
    async with served(dev_server, removed) as url, browser(url) as bob:
        bob.cookies.set(SESSION_COOKIE, bob_cookie)
        assert not await signed_in(bob)


async def test_an_expired_session_is_refused(board: Board) -> None:
    store = SessionStore(board.settings.ledger_url)
    try:
        past = datetime.now(UTC) - timedelta(hours=13)
        old = await store.create("ana", AGENTS["ana"], now=past)
        live = await store.create("ana", AGENTS["ana"])
    finally:
        await store.close()
    async with browser(board.url) as http:
        http.cookies.set(SESSION_COOKIE, session_cookie(board.settings.keys, old.id))
        assert not await signed_in(http)
        http.cookies.set(SESSION_COOKIE, session_cookie(board.settings.keys, live.id))
        assert await signed_in(http)


async def test_a_forged_or_unsigned_session_cookie_is_refused(board: Board) -> None:
    store = SessionStore(board.settings.ledger_url)
    try:
        live = await store.create("ana", AGENTS["ana"])
    finally:
        await store.close()
    other_keys = replace(board.settings, link_secret=f"k1:{secrets.token_urlsafe(32)}").keys
    async with browser(board.url) as http:
        for cookie in (live.id, session_cookie(other_keys, live.id), "x.y"):
            http.cookies.set(SESSION_COOKIE, cookie)
            assert not await signed_in(http), cookie


# --- CSRF: login, logout and the board's actions ---------------------------------------------


async def test_login_without_its_csrf_token_is_refused(board: Board) -> None:
    async with browser(board.url) as victim, browser(board.url) as attacker:
        # A cross-site form: no token, and no pre-session cookie (SameSite=Strict).
        blind = await victim.post("/board/login", data={"token": AGENTS["ana"]})
        assert blind.status_code == 403 and "sign-in form has expired" in blind.text
        assert SESSION_COOKIE not in victim.cookies
        # The attacker's own valid form token does not fit the victim's pre-session.
        await victim.get("/board/login")
        theirs = csrf_of(await attacker.get("/board/login"))
        forged = await victim.post("/board/login", data={"token": AGENTS["ana"], "csrf": theirs})
        assert forged.status_code == 403 and SESSION_COOKIE not in victim.cookies
        # ...nor without the pre-session cookie it was made for.
        victim.cookies.delete(LOGIN_COOKIE, path="/board")
        mine = csrf_of(await attacker.get("/board/login"))
        attacker.cookies.clear()
        lost = await attacker.post("/board/login", data={"token": AGENTS["ana"], "csrf": mine})
        assert lost.status_code == 403 and SESSION_COOKIE not in attacker.cookies
        assert await rows(board.settings) == 0


async def test_logout_without_its_csrf_token_ends_nothing(board: Board) -> None:
    async with browser(board.url) as agent, browser(board.url) as other:
        csrf = await sign_in(agent, AGENTS["ana"])
        other_csrf = await sign_in(other, AGENTS["ana"])
        for data in ({}, {"csrf": "forged"}, {"csrf": other_csrf}):
            response = await agent.post("/board/logout", data=data)
            assert response.status_code == 403, data
            assert await signed_in(agent)
        assert (await agent.post("/board/logout", data={"csrf": csrf})).status_code == 303
        assert not await signed_in(agent) and await signed_in(other)


async def test_a_board_action_needs_its_own_sessions_csrf_token(board: Board) -> None:
    async with browser(board.url) as ana, browser(board.url) as again, browser(board.url) as bob:
        csrf = await sign_in(ana, AGENTS["ana"])
        same_agent_other_session = await sign_in(again, AGENTS["ana"])
        bobs = await sign_in(bob, AGENTS["bob"])
        assert csrf != same_agent_other_session, "one CSRF token per session, not per agent"
        for token in (None, "", "forged", same_agent_other_session, bobs):
            response = await act(ana, token)
            assert response.status_code == 403, token
            assert "the form has expired" in response.text
        assert passed_checks(await act(ana, csrf))
        # A session's token stays its own across the board's reloads.
        assert await board_csrf(ana) == csrf


async def test_session_cookies_are_httponly_and_samesite_strict(board: Board) -> None:
    async with browser(board.url) as http:
        form = await http.get("/board/login")
        pre = form.headers["set-cookie"].lower()
        assert pre.startswith(f"{LOGIN_COOKIE}=") and "httponly" in pre
        assert "samesite=strict" in pre and "path=/board" in pre
        response = await http.post(
            "/board/login", data={"token": AGENTS["ana"], "csrf": csrf_of(form)}
        )
        cookies = [c.lower() for c in response.headers.get_list("set-cookie")]
        session = next(c for c in cookies if c.startswith(f"{SESSION_COOKIE}="))
        assert "httponly" in session and "samesite=strict" in session
        assert any(c.startswith(f"{LOGIN_COOKIE}=") and "max-age=0" in c for c in cookies)


# --- the store itself, on both backends -------------------------------------------------------


async def test_the_store_keeps_only_a_digest_of_the_session_id(ledger_url: str) -> None:
    store = SessionStore(ledger_url)
    try:
        session = await store.create("ana", AGENTS["ana"])
        db = await store._db()
        async with db.engine.connect() as conn:
            row = (await conn.execute(select(agent_sessions))).one()
        assert session.id not in (row.id_digest, row.token_fingerprint)
        assert AGENTS["ana"] not in (row.id_digest, row.token_fingerprint)
        prints = settings_for(ledger_url).agent_fingerprints
        assert (await store.find(session.id, prints)) == session
        assert await store.end_all("ana") == 1
        assert await store.find(session.id, prints) is None
    finally:
        await store.close()


async def test_an_unmigrated_or_unreachable_database_is_a_clear_503(
    ledger_url: str, dev_server: WorkflowEnvironment, tmp_path: Path
) -> None:
    store = SessionStore(ledger_url, migrate=False)  # SUPPORT_LEDGER_MIGRATE=0
    try:
        with structlog.testing.capture_logs() as logs:
            with pytest.raises(ApiError) as refused:
                await store.create("ana", AGENTS["ana"])
        assert (refused.value.status, refused.value.code) == (503, "sessions_unavailable")
        assert "python -m ledger migrate" in logs[0]["error"]  # the reason, for operators
    finally:
        await store.close()
    # Over HTTP: a database the service cannot open answers 503 and says so.
    unreachable = settings_for(f"sqlite:///{tmp_path}")  # a directory, not a database
    async with served(dev_server, unreachable) as url, browser(url) as http:
        form = await http.get("/board/login")
        answer = await http.post(
            "/board/login", data={"token": AGENTS["ana"], "csrf": csrf_of(form)}
        )
        assert answer.status_code == 503
        assert answer.json()["message"] == UNAVAILABLE

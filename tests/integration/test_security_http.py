"""Issue 15, part 7: HTTP hardening, each attack performed against the app on uvicorn with
the service's own server configuration (``service.limits.server_config``); and from part 1,
the contact form's rate-limit keys: whose address is the client's behind a reverse proxy,
and counts of their own (``form:``), apart from the mailbox's."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
import uvicorn
from fastapi.routing import APIRoute
from sqlalchemy import select
from starlette.routing import Mount
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from intake.guards import MAIL, WINDOW, IntakeGuards, Limit, intake_counts
from runtime.codec import DecryptionError, KeylessCodec, new_key, parse_keys
from service.app import create_app
from service.auth import Settings
from service.codec import CorsConfigError, codec_app
from service.headers import SECURITY_HEADERS
from service.limits import (
    LOOPBACK_PROXIES,
    HttpConfigError,
    HttpLimits,
    server_config,
    trusted_proxies,
)
from tests.conftest import sqlite_ledger
from tests.integration.test_encryption import payloads_json, plain_payload
from tests.integration.test_security_keys import start_refused

AGENT = "agent-http-0123456789abc"
UI = "http://localhost:8233"


def app_with(limits: HttpLimits) -> Any:
    settings = Settings(agent_tokens={AGENT: "ana"})
    return create_app(
        client=cast(Client, object()),  # no route here reaches Temporal
        settings=settings,
        queue="q",
        codec=parse_keys(new_key("k-secret-id")),
        limits=limits,
    )


@asynccontextmanager
async def served(
    limits: HttpLimits, app: Any = None, proxies: Sequence[str] = LOOPBACK_PROXIES
) -> AsyncIterator[tuple[str, int]]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    app = app or app_with(limits)
    server = uvicorn.Server(
        server_config(app, limits, "127.0.0.1", port, proxies, log_config=None, lifespan="off")
    )
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:  # noqa: ASYNC110 (uvicorn offers no event)
        await asyncio.sleep(0.01)
    try:
        yield "127.0.0.1", port
    finally:
        server.should_exit = True
        await task
        sock.close()


async def raw(address: tuple[str, int], data: bytes) -> tuple[asyncio.StreamReader, Any]:
    reader, writer = await asyncio.open_connection(*address)
    writer.write(data)
    await writer.drain()
    return reader, writer


def assert_secure_headers(response: httpx.Response) -> None:
    headers, where = response.headers, f"{response.request.method} {response.request.url.path}"
    assert "unsafe-inline" not in headers["content-security-policy"], where
    assert "frame-ancestors 'none'" in headers["content-security-policy"], where
    assert headers["x-frame-options"] == "DENY", where
    assert headers["referrer-policy"] == "no-referrer", where
    assert headers["x-content-type-options"] == "nosniff", where


async def test_every_route_sends_the_security_headers() -> None:
    """Every route of the app and of the codec server mounted at ``/codec`` (its routes
    read from the mount, so a new one is covered too), GET and POST, with and without an
    agent's token, and the codec's CORS preflight: the security headers on each; the
    codec's answers (decrypted ticket data on success) also ``Cache-Control: no-store``."""
    limits = HttpLimits()
    app = app_with(limits)
    paths = ["/nope", "/static/board.js", "/static/support.css"]
    codec_paths = ["/codec", "/codec/", "/codec/nope"]
    for route in app.routes:
        if isinstance(route, APIRoute) or getattr(route, "path", None) == "/docs":
            path = route.path.replace("{token}", "x").replace("{ticket_id}", "T-1")
            paths.append(path.replace("{action}", "ack"))
        if isinstance(route, Mount) and route.path == "/codec":
            codec_paths += [route.path + sub.path for sub in route.routes if hasattr(sub, "path")]
    assert {"/codec/decode", "/codec/encode"} <= set(codec_paths)
    agent = {"Authorization": f"Bearer {AGENT}"}
    payloads = payloads_json(plain_payload("x"))
    async with served(limits) as (host, port):
        async with httpx.AsyncClient(base_url=f"http://{host}:{port}", timeout=10) as http:
            for path in paths:
                for method in ("GET", "POST"):
                    assert_secure_headers(await http.request(method, path))
            page = (await http.get("/support/new")).text
            assert "<script>" not in page and "<style>" not in page
            codec_answers = [
                await http.options(
                    "/codec/decode",
                    headers={"Origin": origin, "Access-Control-Request-Method": "POST"},
                )
                for origin in (UI, "https://evil.example")
            ]
            for path in codec_paths:
                for method in ("GET", "POST"):
                    codec_answers.append(await http.request(method, path))
                    codec_answers.append(
                        await http.request(method, path, headers=agent, content=payloads)
                    )
            statuses = {(r.request.url.path, r.status_code) for r in codec_answers}
            assert {("/codec/decode", 200), ("/codec/encode", 200), ("/codec/decode", 401)} <= (
                statuses
            )
            for response in codec_answers:
                assert_secure_headers(response)
                where = (response.request.method, response.request.url.path, response.status_code)
                if where[1] != "/codec":  # the app's redirect to /codec/, before the mount
                    assert response.headers.get("cache-control") == "no-store", where


async def test_a_request_that_never_finishes_its_headers_is_cut_off() -> None:
    async with served(HttpLimits(header_timeout=1.0)) as address:
        reader, writer = await raw(address, b"GET /support/new HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()
        writer.write(b"X-Slow: 1\r\n")  # one more header line, then never the blank line
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 5)
        assert answer.startswith(b"HTTP/1.1 408") and time.monotonic() - started < 3
        writer.close()


def headers_of(answer: bytes) -> dict[str, str]:
    """The headers of a raw HTTP/1.1 response, names in lower case."""
    lines = answer.partition(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")[1:]
    return {name.lower(): value for name, _, value in (line.partition(": ") for line in lines)}


def assert_secure(answer: bytes) -> None:
    headers = headers_of(answer)
    assert {name: headers.get(name) for name in SECURITY_HEADERS} == SECURITY_HEADERS, answer


async def test_the_servers_own_answers_carry_the_security_headers() -> None:
    """What uvicorn answers by itself, never passing the app's middleware: late headers
    (408), a malformed request (400), one connection over the limit (503)."""
    async with served(HttpLimits(header_timeout=1.0)) as address:
        reader, writer = await raw(address, b"GET /support/new HTTP/1.1\r\nHost: x\r\n")
        late = await asyncio.wait_for(reader.read(), 5)
        assert late.startswith(b"HTTP/1.1 408")
        assert_secure(late)
        writer.close()
        reader, writer = await raw(address, b"NOT HTTP AT ALL\r\n\r\n")
        malformed = await asyncio.wait_for(reader.read(), 5)
        assert malformed.startswith(b"HTTP/1.1 400")
        assert_secure(malformed)
        writer.close()
    async with served(HttpLimits(concurrency=3, header_timeout=30)) as address:
        idle = [await asyncio.open_connection(*address) for _ in range(3)]
        await asyncio.sleep(0.2)
        reader, writer = await raw(address, b"GET /static/board.js HTTP/1.1\r\nHost: x\r\n\r\n")
        busy = await asyncio.wait_for(reader.read(4096), 5)
        assert busy.startswith(b"HTTP/1.1 503")
        assert_secure(busy)
        writer.close()
        for _, w in idle:
            w.close()


async def test_an_unhandled_exception_is_a_500_with_the_security_headers() -> None:
    """Starlette's plain 500 page comes from its outermost error middleware: the headers
    are put outside it, in the app itself (whatever serves it) and on uvicorn."""
    limits = HttpLimits()
    app = app_with(limits)

    async def fails() -> None:
        raise RuntimeError("a bug")

    app.add_api_route("/fails", fails)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        response = await http.get("/fails")
    assert response.status_code == 500 and "a bug" not in response.text
    assert {n: response.headers.get(n) for n in SECURITY_HEADERS} == SECURITY_HEADERS
    async with served(limits, app) as address:
        reader, writer = await raw(address, b"GET /fails HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), 5)
        assert answer.startswith(b"HTTP/1.1 500")
        assert_secure(answer)
        writer.close()


async def test_a_body_that_never_arrives_is_cut_off() -> None:
    async with served(HttpLimits(body_timeout=1.0)) as address:
        head = (
            b"POST /api/tickets/T1/ack HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n"
            b"Authorization: Bearer " + AGENT.encode() + b"\r\n\r\n{"
        )
        reader, writer = await raw(address, head)
        answer = await asyncio.wait_for(reader.read(4096), 5)
        assert answer.startswith(b"HTTP/1.1 408") and b'"timeout"' in answer
        writer.close()


async def test_more_connections_than_the_limit_get_503() -> None:
    async with served(HttpLimits(concurrency=3, header_timeout=30)) as address:
        idle = [await asyncio.open_connection(*address) for _ in range(3)]
        await asyncio.sleep(0.2)
        reader, writer = await raw(address, b"GET /static/board.js HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await asyncio.wait_for(reader.read(4096), 5)).startswith(b"HTTP/1.1 503")
        writer.close()
        for _, w in idle:
            w.close()


async def test_an_unauthenticated_codec_post_is_refused_before_its_body_is_read() -> None:
    async with served(HttpLimits()) as address:
        head = (
            b"POST /codec/decode HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 4000000\r\n\r\n"
        )
        reader, writer = await raw(address, head)  # not one byte of the 4 MB body sent
        answer = await asyncio.wait_for(reader.read(4096), 5)
        assert answer.startswith(b"HTTP/1.1 401") and b"unauthenticated" in answer
        assert await asyncio.wait_for(reader.read(), 5) == b""  # and the connection ends
        writer.close()


async def test_an_api_post_without_a_valid_token_is_refused_before_its_body_is_read() -> None:
    """The attack: many connections each declaring a 256 KiB body to ``/api/``, no token,
    so the service holds their bodies. Refused 401 before one byte of the body is read,
    with no token, a wrong scheme or an unknown one; a known token's body is read."""
    async with served(HttpLimits(body_timeout=1.0)) as address:
        for authorization in (
            b"",
            b"Authorization: Basic YTpi\r\n",
            b"Authorization: Bearer x\r\n",
        ):
            head = (
                b"POST /api/tickets HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: 262000\r\n" + authorization + b"\r\n"
            )
            reader, writer = await raw(address, head)  # not one byte of the body sent
            answer = await asyncio.wait_for(reader.read(4096), 5)
            assert answer.startswith(b"HTTP/1.1 401") and b"unauthenticated" in answer, answer
            assert await asyncio.wait_for(reader.read(), 5) == b""  # and the connection ends
            writer.close()
        # An agent's token: the body is waited for (and, never sent, times out).
        head = (
            b"POST /api/tickets HTTP/1.1\r\nHost: x\r\nContent-Length: 262000\r\n"
            b"Authorization: Bearer " + AGENT.encode() + b"\r\n\r\n"
        )
        reader, writer = await raw(address, head)
        answer = await asyncio.wait_for(reader.read(4096), 5)
        assert answer.startswith(b"HTTP/1.1 408"), answer
        writer.close()


async def test_cors_refuses_any_origin_with_credentials() -> None:
    settings = Settings(agent_tokens={AGENT: "ana"})
    for origins in (["*"], ["null"], ["http://ui.example/path"], []):
        with pytest.raises(CorsConfigError):
            codec_app(settings, None, origins)
    app = codec_app(settings, None, [UI])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as h:
        preflight = {"Access-Control-Request-Method": "POST"}
        evil = await h.options("/decode", headers={"Origin": "https://evil.example", **preflight})
        assert evil.status_code == 400 and "access-control-allow-origin" not in evil.headers
        ok = await h.options("/decode", headers={"Origin": UI, **preflight})
        assert ok.headers["access-control-allow-origin"] == UI


async def test_decryption_errors_name_no_key_id() -> None:
    sealed = (await parse_keys(new_key("k-old-secret")).encode([plain_payload("x")]))[0]
    for codec in (parse_keys(new_key("k-configured")), KeylessCodec()):
        with pytest.raises(DecryptionError) as err:
            await codec.decode([sealed])
        assert "k-old-secret" not in str(err.value) and "k-configured" not in str(err.value)
    async with served(HttpLimits()) as (host, port):
        async with httpx.AsyncClient(base_url=f"http://{host}:{port}") as http:
            reply = await http.post(
                "/codec/decode",
                content=payloads_json(sealed),
                headers={"Authorization": f"Bearer {AGENT}"},
            )
    assert reply.status_code == 422 and "k-" not in reply.text


def test_http_limits_are_checked() -> None:
    assert HttpLimits.from_env({}) == HttpLimits()
    with pytest.raises(HttpConfigError, match="SUPPORT_HTTP_CONCURRENCY"):
        HttpLimits.from_env({"SUPPORT_HTTP_CONCURRENCY": "many"})
    with pytest.raises(HttpConfigError, match="SUPPORT_HTTP_HEADER_TIMEOUT"):
        HttpLimits.from_env({"SUPPORT_HTTP_HEADER_TIMEOUT": "0"})


def test_the_service_refuses_to_start_with_a_bad_intake_limit() -> None:
    """A rate limit of the form that cannot be used stops the service at start, naming the
    setting, instead of turning every form submission into a 503 later."""
    start_refused(
        ["-m", "service"],
        "error: SUPPORT_INTAKE_LIMIT_PER_DOMAIN: 'lots' is not a positive whole number of"
        " submissions",
        SUPPORT_INTAKE_LIMIT_PER_DOMAIN="lots",
    )


# --- the client's address behind a reverse proxy ----------------------------------------------


class TemporalDown:
    """A Temporal client that cannot start anything: a submission the form admits (and
    counts) is answered 503, one over a limit 429, and nothing else is needed."""

    async def start_workflow(self, *args: Any, **kwargs: Any) -> None:
        raise RPCError("unreachable", RPCStatusCode.UNAVAILABLE, b"")


ONE_PER_CLIENT = Limit("client", 1, WINDOW)


@asynccontextmanager
async def form_behind(
    tmp_path: Path, proxies: Sequence[str], limit: Limit = ONE_PER_CLIENT
) -> AsyncIterator[tuple[httpx.AsyncClient, IntakeGuards]]:
    """The contact form on uvicorn (``server_config`` with ``proxies``) under the one
    ``limit`` (one submission an hour per client), its counts in a fresh database."""
    path = tmp_path / f"ledger-{uuid.uuid4().hex[:8]}.sqlite3"
    ledger = await sqlite_ledger(path)
    limits = HttpLimits()
    app = create_app(
        client=cast(Client, TemporalDown()),
        settings=Settings(agent_tokens={AGENT: "ana"}, ledger_url=f"sqlite:///{path}"),
        queue="q",
        limits=limits,
    )
    guards = IntakeGuards(ledger.engine, limits=(limit,))
    app.state.guards = guards
    try:
        async with served(limits, app, proxies) as (host, port):
            async with httpx.AsyncClient(base_url=f"http://{host}:{port}", timeout=10) as http:
                yield http, guards
    finally:
        await ledger.close()


async def submit(http: httpx.AsyncClient, forwarded_for: str, email: str = "") -> int:
    form = {
        "form_id": uuid.uuid4().hex,
        "email": email or f"{uuid.uuid4().hex[:8]}@public.example",
        "category": "question",
        "subject": "How do I export a report?",
    }
    response = await http.post(
        "/support/new", data=form, headers={"X-Forwarded-For": forwarded_for}
    )
    return response.status_code


async def counted(guards: IntakeGuards, scope: str = "client") -> dict[str, int]:
    """The stored counts of ``scope``, by key."""
    async with guards.engine.connect() as conn:
        rows = await conn.execute(
            select(intake_counts.c.key, intake_counts.c.count).where(intake_counts.c.scope == scope)
        )
        return {key: count for key, count in rows}


async def test_behind_a_trusted_proxy_each_forwarded_client_has_its_own_allowance(
    tmp_path: Path,
) -> None:
    """The attack: behind a reverse proxy every submission comes from the proxy's address,
    so one client spending its allowance (1 here) would lock everyone out of the form.
    With the proxy trusted (``SUPPORT_FORWARDED_ALLOW_IPS``; loopback is the proxy here)
    each client in ``X-Forwarded-For`` is counted apart; a client's own forged entries
    before the address the proxy appended are ignored."""
    async with form_behind(tmp_path, ["127.0.0.1"]) as (http, guards):
        assert await submit(http, "203.0.113.1") == 503  # admitted (Temporal is down here)
        assert await submit(http, "203.0.113.2") == 503, "another client: its own allowance"
        assert await submit(http, "203.0.113.1") == 429, "the first client's is spent"
        # A client naming a fresh address in the header it sends: the proxy appends the
        # real one, and that is the one counted.
        assert await submit(http, "198.51.100.99, 203.0.113.2") == 429
        assert await counted(guards) == {"form:203.0.113.1": 1, "form:203.0.113.2": 1}


async def test_a_forged_forwarded_for_from_an_untrusted_peer_is_ignored(tmp_path: Path) -> None:
    """The attack: a client that is not a trusted proxy sends ``X-Forwarded-For`` with a
    new address each time, to escape its per-client limit (or to spend someone else's).
    The header is ignored: the peer's own address is counted, and refused once spent,
    whether the setting names other proxies or none."""
    for proxies in (["10.0.0.5", "172.16.0.0/12"], []):
        async with form_behind(tmp_path, proxies) as (http, guards):
            assert await submit(http, "203.0.113.1") == 503  # admitted, counted as the peer
            assert await submit(http, "203.0.113.2") == 429, proxies
            assert await submit(http, "127.0.0.1, 203.0.113.3") == 429, proxies
            assert await counted(guards) == {"form:127.0.0.1": 1}


def test_trusted_proxies_are_addresses_or_networks_never_everyone() -> None:
    assert trusted_proxies({}) == LOOPBACK_PROXIES == ("127.0.0.1", "::1")
    assert trusted_proxies({"SUPPORT_FORWARDED_ALLOW_IPS": "none"}) == ()
    assert trusted_proxies(
        {"SUPPORT_FORWARDED_ALLOW_IPS": " 10.0.0.5, 172.16.0.0/12,fd00::/8"}
    ) == (
        "10.0.0.5",
        "172.16.0.0/12",
        "fd00::/8",
    )
    for everyone in ("*", "0.0.0.0/0", "::/0", "10.0.0.5,*"):
        with pytest.raises(HttpConfigError, match="trusts everyone"):
            trusted_proxies({"SUPPORT_FORWARDED_ALLOW_IPS": everyone})
    for bad in ("proxy.example", ","):
        with pytest.raises(HttpConfigError, match="SUPPORT_FORWARDED_ALLOW_IPS"):
            trusted_proxies({"SUPPORT_FORWARDED_ALLOW_IPS": bad})
    start_refused(
        ["-m", "service"],
        "error: SUPPORT_FORWARDED_ALLOW_IPS: '*' trusts everyone",
        SUPPORT_FORWARDED_ALLOW_IPS="*",
    )


async def test_the_form_and_the_mailbox_never_share_a_counter(tmp_path: Path) -> None:
    """The attack: the mailbox counts a sender's domain under ``mail:bank.example``; with
    the form's keys bare, 50 submissions typing ``x@mail:bank.example`` (the form checks
    only that an address is there before it counts) filled that very counter, and the
    bank's unverified mail was deferred with 451 for the hour. The form counts under
    ``form:`` keys: its flood spends only its own count, and mail at its limit spends none
    of the form's."""
    now = datetime.now(UTC)
    mail = {"address": None, "domain": "bank.example", "client": None}
    async with form_behind(tmp_path, ["127.0.0.1"], Limit("domain", 1, WINDOW)) as (http, guards):
        assert await submit(http, "203.0.113.1", "x@mail:bank.example") != 429  # counted
        assert await submit(http, "203.0.113.2", "y@mail:bank.example") == 429  # its own limit
        # The mailbox's count for bank.example is untouched: its first message gets in.
        assert await guards.admit(mail, now, source=MAIL) is None
        assert await guards.admit(mail, now, source=MAIL) is not None  # now its limit holds
        # And the mailbox at its limit leaves the form's count for bank.example alone.
        assert await submit(http, "203.0.113.3", "z@bank.example") != 429
        assert await counted(guards, "domain") == {
            "form:mail:bank.example": 1,
            "mail:bank.example": 1,
            "form:bank.example": 1,
        }
    with pytest.raises(ValueError, match="unknown intake source"):
        await guards.admit(mail, now, source="api")

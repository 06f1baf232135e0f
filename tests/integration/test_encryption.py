"""Payload encryption: the AES-GCM codec and its key rotation, histories on the real dev
server that hold no personal data in clear while the worker, the CLI and the ledger still
read it (signals of every kind, a continue-as-new, the statement-of-work child, and a failed
delivery's error message and stack trace), search attributes and workflow ids free of
personal data, and the Web UI's codec server (agent auth, CORS limited to the UI's
origin)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from subprocess import PIPE
from typing import TypeVar

import httpx
import pytest
import pytest_asyncio
from google.protobuf import json_format
from google.protobuf.message import Message
from temporalio.api.common.v1 import Payload, Payloads
from temporalio.api.enums.v1 import EventType
from temporalio.api.failure.v1 import Failure
from temporalio.api.history.v1 import History
from temporalio.api.workflow.v1 import PendingActivityInfo
from temporalio.client import Client
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment

from contract.models import (
    Acknowledge,
    ChangeSeverity,
    CustomerReply,
    MarkOutOfScope,
    Resolve,
    SowDecision,
    SowOutcome,
    TicketInput,
    TicketState,
    TicketStatus,
    sow_workflow_id,
    ticket_workflow_id,
)
from harness.policy import webhooks, write_policy
from harness.processes import ROOT, eventually
from harness.serve import serve
from harness.sinks import Mailbox, Sink
from ledger.store import SqlLedger
from runtime.codec import (
    ENCODING,
    CodecConfigError,
    DecryptionError,
    EncryptionCodec,
    codec_from_env,
    data_converter,
    new_key,
    parse_keys,
)
from service.app import create_app
from service.auth import Settings
from tests.conftest import settled, sqlite_ledger
from worker import build_worker

AGENT_TOKEN = "agent-token-0123456789"
INTAKE_TOKEN = "intake-token-0123456789"
UI = "http://localhost:8233"

# Personal data a ticket carries; none of it may reach the server in clear.
EMAIL = "jane.roe@acme-payroll.example"
NAME = "Jane Roe-Quixotic"
DESCRIPTION = f"{NAME} (phone +1 555 0100) cannot export payroll since 09:00."
SUBJECT = f"Payroll export fails for {NAME}"
NOTE = f"Called {NAME} back on +1 555 0100"
RESOLUTION = f"Export fixed for {NAME}"
REASON = f"{NAME} says nobody at her firm was paid"
REPLY = f"Re: payroll export - {NAME} still locked out"
SOW_REASON = f"{NAME} asks for a custom payroll connector"
SOW_REFERENCE = f"SOW-2026-17 signed by {NAME}"
PERSONAL = (EMAIL, NAME, "555 0100")
# What a failed webhook delivery's error carries: its message and its stack trace.
DELIVERY_ERROR = ("webhook answered 500", "delivery failed for", "notify.py")
# The SDK's stand-in for a failure's message once the real one is in encoded_attributes.
ENCODED_FAILURE = "Encoded failure"

ProtoMessage = TypeVar("ProtoMessage", bound=Message)


def codec_of(*entries: str) -> EncryptionCodec:
    return parse_keys(",".join(entries))


def plain_payload(text: str) -> Payload:
    return Payload(metadata={"encoding": b"json/plain"}, data=json.dumps(text).encode())


# --- the codec ----------------------------------------------------------------------------


async def test_round_trip_hides_the_data_and_names_the_key() -> None:
    codec = codec_of(new_key("k1"))
    [sealed] = await codec.encode([plain_payload(DESCRIPTION)])
    assert sealed.metadata["encoding"] == b"binary/encrypted"
    assert sealed.metadata["encryption-key-id"] == b"k1"
    assert NAME.encode() not in sealed.SerializeToString()
    [opened] = await codec.decode([sealed])
    assert opened == plain_payload(DESCRIPTION)
    # A fresh nonce every time: the same payload never encrypts to the same bytes.
    [again] = await codec.encode([plain_payload(DESCRIPTION)])
    assert again.data != sealed.data


async def test_key_rotation_reads_old_payloads_until_the_old_key_is_dropped() -> None:
    k1, k2 = new_key("k1"), new_key("k2")
    [old] = await codec_of(k1).encode([plain_payload("written under k1")])
    rotated = codec_of(k2, k1)  # k2 now encrypts; k1 still decrypts
    [new] = await rotated.encode([plain_payload("written under k2")])
    assert new.metadata["encryption-key-id"] == b"k2"
    assert await rotated.decode([old, new]) == [
        plain_payload("written under k1"),
        plain_payload("written under k2"),
    ]
    with pytest.raises(DecryptionError, match="encrypted with a key that is not configured"):
        await codec_of(k2).decode([old])


async def test_tampering_and_key_substitution_fail_authentication() -> None:
    k1 = new_key("k1")
    codec = codec_of(k1)
    [sealed] = await codec.encode([plain_payload("amount: 100")])
    flipped = Payload()
    flipped.CopyFrom(sealed)
    flipped.data = sealed.data[:-1] + bytes([sealed.data[-1] ^ 1])
    with pytest.raises(DecryptionError, match="failed authentication"):
        await codec.decode([flipped])
    # The same key material under another id: the key id is authenticated data.
    relabelled = codec_of(k1, "k9:" + k1.partition(":")[2])
    moved = Payload()
    moved.CopyFrom(sealed)
    moved.metadata["encryption-key-id"] = b"k9"
    with pytest.raises(DecryptionError, match="failed authentication"):
        await relabelled.decode([moved])


async def test_payloads_written_before_encryption_stay_readable() -> None:
    codec = codec_of(new_key("k1"))
    assert await codec.decode([plain_payload("old")]) == [plain_payload("old")]


# A key written out, not new_key()'s random one: a parameter is part of the test's id, and
# pytest-xdist's workers must collect the same ids.
FIXED_KEY = base64.urlsafe_b64encode(bytes(range(32))).decode()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "SUPPORT_CODEC_KEYS: no keys given"),
        ("k1", "SUPPORT_CODEC_KEYS: entry 1 must be key_id:base64_key"),
        ("bad id:AAAA", "SUPPORT_CODEC_KEYS: entry 1 must be key_id:base64_key"),
        ("k1:%%%", "SUPPORT_CODEC_KEYS: entry 1 (k1): the key is not valid base64"),
        ("k1:" + base64.b64encode(b"short").decode(), "the key must be 32 bytes (AES-256), not 5"),
        (f"k1:{FIXED_KEY},k1:{FIXED_KEY}", "entry 2: key id 'k1' is given twice"),
    ],
)
def test_malformed_key_configuration_is_refused_precisely(value: str, message: str) -> None:
    with pytest.raises(CodecConfigError, match=re.escape(message)):
        parse_keys(value)


def test_configuration_from_env_or_a_key_file(tmp_path: Path) -> None:
    assert codec_from_env({}) is None
    keys = tmp_path / "keys"
    keys.write_text(f"# rotated 2026-11-30\n{new_key('k2')}\n{new_key('k1')}\n")
    codec = codec_from_env({"SUPPORT_CODEC_KEYS_FILE": str(keys)})
    assert codec is not None and codec.active == "k2" and codec.key_ids == ["k2", "k1"]
    with pytest.raises(CodecConfigError, match="SUPPORT_CODEC_KEYS_FILE: cannot read"):
        codec_from_env({"SUPPORT_CODEC_KEYS_FILE": str(tmp_path / "missing")})


def test_new_key_command_prints_a_usable_entry() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "runtime.codec", "new-key", "k2026"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert codec_of(done.stdout.strip()).key_ids == ["k2026"]


# --- histories on the real dev server -----------------------------------------------------


class Encrypted:
    """A worker and a client that encrypt, beside the dev server's plain client."""

    def __init__(self, server: WorkflowEnvironment, keys: str, queue: str, ledger: SqlLedger):
        self.keys = keys
        self.plain = server.client
        self.client = Client(
            server.client.service_client,
            namespace=server.client.namespace,
            data_converter=data_converter(parse_keys(keys)),
        )
        self.queue = queue
        self.ledger = ledger


# The SLA ladder's targets, all posting to the sink at /hook.
LADDER_TARGETS = ("support-queue", "duty-engineer", "support-lead", "duty-manager")


@pytest_asyncio.fixture(loop_scope="session")
async def encrypted(
    dev_server: WorkflowEnvironment, tmp_path: Path, sink: Sink, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Encrypted]:
    monkeypatch.setenv(
        "SUPPORT_POLICY_FILE",
        str(write_policy(tmp_path, targets=webhooks(sink.url, LADDER_TARGETS, "hook"))),
    )
    ledger = await sqlite_ledger(tmp_path / "ledger.sqlite3")
    setup = Encrypted(dev_server, new_key("k1"), f"tq-{uuid.uuid4()}", ledger)
    async with httpx.AsyncClient(timeout=5.0) as http:
        async with build_worker(setup.client, setup.queue, ledger, http):
            yield setup
    await ledger.close()


def personal_ticket(ticket_id: str) -> TicketInput:
    return TicketInput(
        ticket_id=ticket_id,
        customer_id="acme",
        tier="premium",
        severity="sev2",
        subject=SUBJECT,
        description=DESCRIPTION,
        reporter_email=EMAIL,
    )


async def run_cli(args: list[str], env: dict[str, str]) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, *args, cwd=ROOT, env=env, stdout=PIPE, stderr=PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def raw_history(
    client: Client, workflow_id: str, run_id: str | None = None
) -> tuple[bytes, str]:
    """The history as the server holds it (no codec): protobuf bytes and its JSON; the
    latest run unless ``run_id`` names another."""
    history = await client.get_workflow_handle(workflow_id, run_id=run_id).fetch_history()
    return History(events=history.events).SerializeToString(), history.to_json()


def assert_not_in_clear(raw: bytes, as_json: str, secrets: tuple[str, ...]) -> None:
    for secret in secrets:
        assert secret.encode() not in raw, secret
        assert secret not in as_json, secret
    assert ENCODING in raw


def nested(message: Message, kind: type[ProtoMessage]) -> Iterator[ProtoMessage]:
    """Every protobuf message of type ``kind`` in ``message`` (itself included), at any
    depth: a failure's cause, a payload in a map or a list."""
    if isinstance(message, kind):
        yield message
    for field, value in message.ListFields():
        if field.message_type is None:
            continue
        if field.message_type.GetOptions().map_entry:
            is_message = field.message_type.fields_by_name["value"].message_type is not None
            items = list(value.values()) if is_message else []
        else:
            items = list(value) if field.is_repeated else [value]
        for item in items:
            yield from nested(item, kind)


def sealed_failures(message: Message) -> list[Failure]:
    """Every failure in ``message``, each asserted to hold its message and stack trace only
    encrypted (DefaultFailureConverterWithEncodedAttributes, then the codec)."""
    failures = list(nested(message, Failure))
    for failure in failures:
        assert (failure.message, failure.stack_trace) == (ENCODED_FAILURE, ""), failure
        assert failure.encoded_attributes.metadata["encoding"] == ENCODING, failure
    return failures


def revealed(raw: bytes, keys: str) -> str:
    """Every payload of a raw history decrypted with ``keys``: what the server holds, read."""
    codec = parse_keys(keys)
    payloads = nested(History.FromString(raw), Payload)
    return "\n".join(codec.decrypt(p).data.decode() for p in payloads)


async def run_ticket(client: Client, setup: Encrypted, sink: Sink, ticket_id: str) -> str:
    """Open with ``client``, acknowledge (with a personal note) and resolve; returns the
    workflow id."""
    ticket = personal_ticket(ticket_id)
    await client.start_workflow(
        "SupportTicket", ticket, id=ticket.workflow_id, task_queue=setup.queue
    )
    # Signals and the result go through the encrypting client whoever started the ticket.
    handle = setup.client.get_workflow_handle(ticket.workflow_id, result_type=TicketStatus)
    await eventually(
        f"{ticket_id}'s intake at the sink",
        lambda: any(ticket_id in json.dumps(m) for m in sink.messages()),
    )
    await handle.signal("acknowledge", Acknowledge(agent="ana", note=NOTE))
    await handle.signal("resolve", Resolve(by="ana", summary=RESOLUTION))
    status = await handle.result()
    assert status.state == TicketState.RESOLVED
    return ticket.workflow_id


async def test_encrypted_history_holds_no_personal_data_yet_everyone_reads_it(
    encrypted: Encrypted, sink: Sink, dev_server: WorkflowEnvironment, tmp_path: Path
) -> None:
    ticket_id = f"ENC-{uuid.uuid4().hex[:8]}"
    workflow_id = await run_ticket(encrypted.client, encrypted, sink, ticket_id)

    raw, as_json = await raw_history(encrypted.plain, workflow_id)
    assert_not_in_clear(raw, as_json, (*PERSONAL, DESCRIPTION, SUBJECT, NOTE, RESOLUTION))

    # Search attributes and the workflow id carry no personal data.
    description = await encrypted.plain.get_workflow_handle(workflow_id).describe()
    exposed = [workflow_id, *map(str, description.search_attributes.values())]
    assert not [s for s in PERSONAL if any(s.lower() in e.lower() for e in exposed)]
    assert not any("jane" in e.lower() for e in exposed)

    # The worker read them: the intake notification reached the sink with the subject.
    delivered = [json.dumps(m) for m in sink.messages() if ticket_id in json.dumps(m)]
    assert delivered and all(SUBJECT in m for m in delivered)

    # The CLI reads them with the keys, and says plainly what is missing without them.
    address = dev_server.client.service_client.config.target_host
    base = {**os.environ, "TEMPORAL_ADDRESS": address, "TEMPORAL_NAMESPACE": "default"}
    base.pop("SUPPORT_CODEC_KEYS", None)
    show = ["-m", "ops", "show", ticket_id, "--json"]
    code, out, err = await run_cli(show, {**base, "SUPPORT_CODEC_KEYS": encrypted.keys})
    assert code == 0, err
    status = json.loads(out)
    assert status["state"] == "resolved" and status["acknowledged_by"] == "ana"
    assert RESOLUTION in [entry.get("detail") for entry in status["history"]]
    code, out, err = await run_cli(show, base)
    assert code == 1
    assert err.strip() == (
        "error: payloads are encrypted: set SUPPORT_CODEC_KEYS or"
        " SUPPORT_CODEC_KEYS_FILE to the keys the workers use"
    )

    # The HTTP API too; without the keys it answers 503 naming what to configure.
    keyless = Client(
        encrypted.plain.service_client,
        namespace=encrypted.plain.namespace,
        data_converter=data_converter(None),
    )
    for client, expected in ((encrypted.client, 200), (keyless, 503)):
        app = create_app(client, Settings(agent_tokens={AGENT_TOKEN: "ana"}), encrypted.queue)
        async with serve(app) as url, httpx.AsyncClient(base_url=url, timeout=10) as http:
            reply = await http.get(
                f"/api/tickets/{ticket_id}", headers={"Authorization": f"Bearer {AGENT_TOKEN}"}
            )
        assert reply.status_code == expected, reply.text
    assert reply.json()["error"] == "encrypted"
    assert "set SUPPORT_CODEC_KEYS" in reply.json()["message"]

    # The ledger (and so the reports) got the ticket's SLA events from the worker.
    outcome = await encrypted.ledger.outcome(ticket_id)
    assert outcome is not None and outcome.acknowledged_by == "ana"


async def test_a_plain_history_shows_what_the_check_would_catch(
    encrypted: Encrypted, sink: Sink
) -> None:
    """Control: a ticket started by a client without the codec (as before encryption was
    turned on) is in clear in its input, and the encrypting worker still runs it."""
    workflow_id = await run_ticket(
        encrypted.plain, encrypted, sink, f"PLAIN-{uuid.uuid4().hex[:8]}"
    )
    raw, _ = await raw_history(encrypted.plain, workflow_id)
    assert EMAIL.encode() in raw
    # Everything the worker wrote afterwards (activity inputs, results) is encrypted.
    assert b"binary/encrypted" in raw


async def failed_attempt(client: Client, workflow_id: str) -> PendingActivityInfo:
    """Wait (real time, bounded) until an activity of the workflow failed an attempt and
    waits to retry; returns it as the server holds it."""
    handle = client.get_workflow_handle(workflow_id)

    async def failed() -> PendingActivityInfo | None:
        description = await handle.describe()
        for activity in description.raw_description.pending_activities:
            if activity.HasField("last_failure"):
                return activity
        return None

    # RPCError: not started yet
    return await eventually(f"{workflow_id}: a failed activity attempt", failed, ignoring=RPCError)


async def test_a_failed_delivery_keeps_its_error_and_stack_trace_encrypted(
    encrypted: Encrypted, sink: Sink
) -> None:
    """A webhook answering 500 fails a delivery attempt. The failure the server keeps (on
    the pending activity while it backs off, then in history on the attempt that
    succeeded) has the SDK's placeholder for a message, no stack trace and the real ones
    encrypted; the keys read them back. Deliveries retry until their deadline (never an
    ActivityTaskFailed event), so the server records the failure as the retried attempt's
    ActivityTaskStarted ``last_failure``: the worker's failure converter wrote it, as it
    would an ActivityTaskFailed's."""
    ticket_id = f"FAIL-{uuid.uuid4().hex[:8]}"
    workflow_id = ticket_workflow_id(ticket_id)
    with sink.lock:
        sink.down.add("/hook")
    ticket = asyncio.create_task(run_ticket(encrypted.client, encrypted, sink, ticket_id))
    try:
        pending = await failed_attempt(encrypted.plain, workflow_id)
    finally:
        with sink.lock:
            sink.down.discard("/hook")  # the retry (1 s later) delivers
    await ticket

    assert pending.activity_type.name == "deliver_step"
    assert sealed_failures(pending)
    # Its heartbeat details (the attempt's progress, with the error) are encrypted too.
    stored = list(nested(pending, Payload))
    assert stored and all(p.metadata["encoding"] == ENCODING for p in stored)
    for marker in (*DELIVERY_ERROR, *PERSONAL):
        assert marker.encode() not in pending.SerializeToString(), marker

    raw, as_json = await raw_history(encrypted.plain, workflow_id)
    assert_not_in_clear(raw, as_json, (*DELIVERY_ERROR, *PERSONAL, DESCRIPTION, SUBJECT))
    history = History.FromString(raw)
    retried = [
        e.activity_task_started_event_attributes
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED
        and e.activity_task_started_event_attributes.attempt > 1
    ]
    assert retried and all(a.HasField("last_failure") for a in retried)
    assert sealed_failures(history), "no failure in history: the check proved nothing"

    # The worker's keys read the error back: it was there, encrypted.
    failure = Failure()
    failure.CopyFrom(retried[0].last_failure)
    error = await encrypted.client.data_converter.decode_failure(failure)
    assert isinstance(error, ApplicationError) and error.type == "TransientDeliveryError"
    assert "delivery failed for" in error.message and "webhook answered 500" in error.message
    assert error.failure is not None and "notify.py" in error.failure.stack_trace
    first_try = next(r for r in sink.received if ticket_id in json.dumps(r["body"]))
    assert first_try["status"] == 500


async def test_severity_reply_continue_as_new_and_sow_child_hold_no_personal_data(
    encrypted: Encrypted,
    sink: Sink,
    mailbox: Mailbox,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every other way personal data reaches the server: a severity change's reason,
    customer replies' subjects, the state a long ticket carries into its next run
    (continue-as-new, after the policy's smallest history limit) and the statement of work
    child (its input holds the reporter's address). No raw history holds any in clear; the
    keys reveal every one, and the worker acted on them."""
    (tmp_path / "short-history").mkdir()
    policy = write_policy(
        tmp_path / "short-history",
        lambda p: p.update(limits={"continue_as_new_after_events": 50}),
        targets=webhooks(sink.url, LADDER_TARGETS, "hook"),
    )
    monkeypatch.setenv("SUPPORT_POLICY_FILE", str(policy))
    ticket_id = f"LONG-{uuid.uuid4().hex[:8]}"
    ticket = personal_ticket(ticket_id)
    started = await encrypted.client.start_workflow(
        "SupportTicket", ticket, id=ticket.workflow_id, task_queue=encrypted.queue
    )
    first_run = started.result_run_id
    handle = encrypted.client.get_workflow_handle(ticket.workflow_id, result_type=TicketStatus)
    await handle.signal(
        "change_severity", ChangeSeverity(severity="sev1", by="triage", reason=REASON)
    )
    await settled(encrypted.plain.get_workflow_handle(ticket.workflow_id))
    # Each reply adds a handful of events (signal, workflow task, ledger write): a few take
    # the run past 50 events, and the ticket continues as new once they have landed.
    for n in range(15):
        if (await handle.describe()).run_id != first_run:
            break
        reply = CustomerReply(
            received_at=datetime.now(UTC),
            subject=REPLY,
            reference=f"<reply-{n}.{ticket_id}@mail.example>",
        )
        await handle.signal("customer_reply", reply)
        await settled(encrypted.plain.get_workflow_handle(ticket.workflow_id))
    second_run = (await handle.describe()).run_id
    assert second_run != first_run, "the ticket did not continue as new"

    await handle.signal("mark_out_of_scope", MarkOutOfScope(by="ana", reason=SOW_REASON))
    sow = encrypted.client.get_workflow_handle(sow_workflow_id(ticket_id))
    await eventually(f"{sow.id} to start", sow.describe, ignoring=RPCError)
    decision = SowDecision(decision="accepted", by="advisor", reference=SOW_REFERENCE)
    await sow.signal("sow_decision", decision)
    status = await handle.result()
    assert status.state is TicketState.CLOSED and status.sow is not None
    assert status.sow.outcome is SowOutcome.ACCEPTED

    secrets = (*PERSONAL, DESCRIPTION, SUBJECT, REASON, REPLY, SOW_REASON, SOW_REFERENCE)
    # What each history holds once decrypted, so the check looked where the data is: the
    # second run has the reason and the reply only in the state carried over to it.
    expected = {
        (ticket.workflow_id, first_run): (DESCRIPTION, REASON, REPLY),
        (ticket.workflow_id, second_run): (DESCRIPTION, REASON, REPLY, SOW_REASON),
        (sow.id, None): (EMAIL, SUBJECT, SOW_REASON, SOW_REFERENCE),
    }
    for (workflow_id, run_id), inside in expected.items():
        raw, as_json = await raw_history(encrypted.plain, workflow_id, run_id)
        assert_not_in_clear(raw, as_json, secrets)
        history = History.FromString(raw)
        sealed_failures(history)
        read = revealed(raw, encrypted.keys)
        assert [s for s in inside if s not in read] == [], (workflow_id, run_id)
        if run_id == first_run:
            ended = history.events[-1].event_type
            assert ended == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW

    # The child's id and search attributes carry none either.
    description = await encrypted.plain.get_workflow_handle(sow.id).describe()
    exposed = [sow.id, *map(str, description.search_attributes.values())]
    assert not [s for s in PERSONAL if any(s.lower() in e.lower() for e in exposed)]

    # The worker read them all: the ledger has the reason and the replies, the reporter the
    # statement-of-work mail with its reason.
    events = await encrypted.ledger.events(ticket_id)
    assert [e.detail["reason"] for e in events if e.kind == "severity_changed"] == [REASON]
    assert {e.detail["subject"] for e in events if e.kind == "customer_reply"} == {REPLY}
    to_reporter = [
        m for m, to in zip(mailbox.received, mailbox.envelopes, strict=True) if EMAIL in to
    ]
    bodies = [m.get_body() for m in to_reporter]
    assert any(b is not None and SOW_REASON in b.get_content() for b in bodies)


# --- the codec server ---------------------------------------------------------------------


@pytest_asyncio.fixture(loop_scope="session")
async def codec_server(dev_server: WorkflowEnvironment) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(intake_tokens={INTAKE_TOKEN: "portal"}, agent_tokens={AGENT_TOKEN: "ana"})
    codec = codec_of(new_key("k1"))
    app = create_app(dev_server.client, settings, "unused", codec=codec)
    async with serve(app) as url, httpx.AsyncClient(base_url=url, timeout=10) as http:
        http.headers["x-codec-test"] = "1"
        yield http


def payloads_json(*payloads: Payload) -> str:
    return json_format.MessageToJson(Payloads(payloads=list(payloads)))


def payloads_of(body: str) -> list[Payload]:
    return list(json_format.Parse(body, Payloads()).payloads)


async def test_codec_server_decodes_for_agents_only(codec_server: httpx.AsyncClient) -> None:
    agent = {"Authorization": f"Bearer {AGENT_TOKEN}", "X-Namespace": "default"}
    encoded = await codec_server.post(
        "/codec/encode", content=payloads_json(plain_payload(EMAIL)), headers=agent
    )
    assert encoded.status_code == 200
    [sealed] = payloads_of(encoded.text)
    assert sealed.metadata["encoding"] == b"binary/encrypted" and EMAIL not in encoded.text
    decoded = await codec_server.post("/codec/decode", content=encoded.text, headers=agent)
    assert decoded.status_code == 200 and payloads_of(decoded.text) == [plain_payload(EMAIL)]

    for headers, status in (
        ({}, 401),
        ({"Authorization": f"Bearer {INTAKE_TOKEN}"}, 401),
        ({"Authorization": "Bearer not-a-token-at-all"}, 401),
    ):
        refused = await codec_server.post("/codec/decode", content=encoded.text, headers=headers)
        assert refused.status_code == status
        assert refused.json()["error"] == "unauthenticated"

    bad = await codec_server.post("/codec/decode", content="{not json", headers=agent)
    assert bad.status_code == 400
    assert "the body is not Temporal's JSON Payloads" in bad.json()["message"]

    foreign = (await codec_of(new_key("k7")).encode([plain_payload("x")]))[0]
    unknown = await codec_server.post(
        "/codec/decode", content=payloads_json(foreign), headers=agent
    )
    assert unknown.status_code == 422
    assert "a key that is not configured" in unknown.json()["message"]
    assert "k7" not in unknown.text and "k1" not in unknown.text  # no key ids


async def test_codec_server_accepts_a_board_session(codec_server: httpx.AsyncClient) -> None:
    form = await codec_server.get("/board/login")  # the sign-in form's CSRF token
    csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert csrf is not None
    login = await codec_server.post(
        "/board/login",
        data={"token": AGENT_TOKEN, "csrf": csrf.group(1)},
        follow_redirects=False,
    )
    assert login.status_code == 303, login.text
    sealed = await codec_server.post("/codec/encode", content=payloads_json(plain_payload("hi")))
    assert sealed.status_code == 200, sealed.text
    codec_server.cookies.clear()


async def test_codec_server_cors_allows_only_the_web_ui(codec_server: httpx.AsyncClient) -> None:
    preflight = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type,x-namespace",
    }
    allowed = await codec_server.options("/codec/decode", headers={"Origin": UI, **preflight})
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == UI
    assert allowed.headers["access-control-allow-credentials"] == "true"
    assert "x-namespace" in allowed.headers["access-control-allow-headers"].lower()

    evil = await codec_server.options(
        "/codec/decode", headers={"Origin": "https://evil.example", **preflight}
    )
    assert evil.status_code == 400
    assert "access-control-allow-origin" not in evil.headers

    actual = await codec_server.post(
        "/codec/encode",
        content=payloads_json(plain_payload("x")),
        headers={"Origin": UI, "Authorization": f"Bearer {AGENT_TOKEN}"},
    )
    assert actual.headers["access-control-allow-origin"] == UI


async def test_codec_server_says_when_encryption_is_off(dev_server: WorkflowEnvironment) -> None:
    app = create_app(dev_server.client, Settings(agent_tokens={AGENT_TOKEN: "ana"}), "unused")
    async with serve(app) as url, httpx.AsyncClient(base_url=url, timeout=10) as http:
        reply = await http.post(
            "/codec/decode",
            content=payloads_json(plain_payload("x")),
            headers={"Authorization": f"Bearer {AGENT_TOKEN}"},
        )
    assert reply.status_code == 404
    assert reply.json()["error"] == "codec_not_configured"

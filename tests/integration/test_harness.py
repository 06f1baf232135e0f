"""The harness's dev-server launcher: a start-up that dies (a port taken between choosing
it and binding it, a bad argument) is tried again on fresh ports, and a launcher that
gives up says why, with the end of the server's log."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.processes import listening
from harness.temporal import DevServer, DevServerError


@pytest.fixture
def server(tmp_path: Path) -> Iterator[DevServer]:
    launcher = DevServer(tmp_path, in_memory=True)
    yield launcher
    launcher.stop()


def hold(port: int) -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", port))
    sock.listen()
    return sock


def test_a_port_taken_before_the_start_is_replaced(server: DevServer) -> None:
    chosen = server.address
    assert server.port is not None
    with hold(server.port):  # another process took it: it must not pass for the server
        server.start_blocking()
    assert server.address != chosen and listening(server.port)
    assert server.failures == [
        f"attempt 1: port {chosen.rpartition(':')[2]} was in use before the server started"
    ]


def test_a_server_that_exits_at_start_up_is_started_again_on_fresh_ports(
    server: DevServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The port is taken after the launcher's own check: the server meets it and exits.
    monkeypatch.setattr(server, "_ports", list)
    assert server.metrics_port is not None
    first = server.address
    with hold(server.metrics_port):
        server.start_blocking()
    assert server.address != first
    assert server.failures == [
        f"attempt 1 on {first}: the dev server exited with 1 (address already in use)"
    ]
    port = server.port
    server.stop()
    server.start_blocking()  # a restart keeps its ports
    assert server.port == port


def test_a_launcher_that_gives_up_names_each_attempt_and_the_log(server: DevServer) -> None:
    server.extra_args = ["--dynamic-config-value", "not-a-pair"]
    with pytest.raises(DevServerError) as raised:
        server.start_blocking()
    message = str(raised.value)
    assert message.startswith("the dev server did not start in 3 attempts (attempt 1 on ")
    assert message.count("the dev server exited with 1") == 3
    assert "invalid dynamic config values" in message  # the log's tail

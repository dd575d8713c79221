"""AcceptBatchPart: several waiting connections per loop wake-up."""

from __future__ import annotations

import os
import select
import socket
import time
from contextlib import ExitStack
from typing import Any

import pytest
from servertools import (
    USER_HANDLER,
    config_for,
)

pytestmark = pytest.mark.leakcheck


def _shut_down(socks: list[socket.socket]) -> None:
    """End connections whose descriptors forked children share (close alone would not)."""
    for sock in socks:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork")
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_fork_mode_takes_a_burst_of_connections_in_one_wake_up(captured: list) -> None:
    """Connections waiting together are accepted in one loop iteration, a child each; every
    one is served, counted and reaped."""
    from clitools import RecordsObserver

    from sockserve import builtins as bh
    from sockserve.compose import make_server

    config = config_for(captured, "tcp", "127.0.0.1:0", "-H", "echo", "-c", "fork")
    observer = RecordsObserver()
    server = make_server(config, bh.stream_handler("echo", bh.HandlerOptions(observer=observer)))
    with server, ExitStack() as clients_open:  # the clients end first: no child waits for them
        clients = [
            clients_open.enter_context(socket.create_connection(server.server_address, timeout=5))
            for _ in range(12)
        ]
        clients_open.callback(_shut_down, clients)  # the children hold copies of these sockets
        server.handle_ready()  # the loop's step once the listener is readable
        first = server.requests_started  # all 12 unless a handshake is still in flight
        deadline = time.monotonic() + 5
        while server.requests_started < 12 and time.monotonic() < deadline:
            if select.select([server.socket], [], [], 0.1)[0]:
                server.handle_ready()
        assert first > 1 and server.requests_started == 12
        for i, client in enumerate(clients):
            client.sendall(b"%d" % i)
            client.shutdown(socket.SHUT_WR)
            assert client.recv(100) == b"%d" % i
        server.collect_children(blocking=True)
        assert not server.active_children


def test_a_batch_of_accepts_stops_without_a_failing_accept(captured: list) -> None:
    """The loop accepts while connections wait, and asks the listener (poll) before each
    further accept: one waiting connection costs one accept, not a second one that fails."""
    from sockserve.compose import make_server

    config = config_for(captured, "tcp", "127.0.0.1:0", "-H", USER_HANDLER, "-c", "thread")
    server = make_server(config, config.handler.cls)
    assert server.accept_batch > 1
    calls: list[str] = []
    real_get_request = server.get_request

    def get_request() -> tuple[Any, Any]:
        try:
            result = real_get_request()
        except OSError as exc:
            calls.append(type(exc).__name__)
            raise
        calls.append("accepted")
        return result

    server.get_request = get_request  # type: ignore[method-assign]
    with server, socket.create_connection(server.server_address, timeout=5) as client:
        assert select.select([server.socket], [], [], 5)[0]
        server.handle_ready()
        client.sendall(b"hi\n")
        client.shutdown(socket.SHUT_WR)
        assert client.recv(100).endswith(b" hi\n")  # the example numbers its lines
    assert calls == ["accepted"]

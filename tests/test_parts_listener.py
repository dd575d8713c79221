"""The listener parts: TCP_NODELAY set once on it; a forked child's copy closed."""

from __future__ import annotations

import socket
import sys
import threading

import pytest
from servertools import (
    config_for,
    echo_hi,
    stop_serving,
)

import sockserve as ss
from sockserve.parts.listener import ChildClosesListenerPart, NodelayListenerPart

pytestmark = pytest.mark.leakcheck


@pytest.mark.parametrize("concurrency", ["sync", "thread"])
def test_builtin_connections_get_nodelay_from_the_listener(
    captured: list, concurrency: str
) -> None:
    """TCP_NODELAY is set once on the listener; accepted connections have it without a call."""
    from sockserve import builtins as bh
    from sockserve.compose import make_server

    seen: list[int] = []
    set_here: list[bool] = []

    class Probe(bh.stream_handler("echo", bh.HandlerOptions())):  # type: ignore[misc]
        def setup(self) -> None:
            calls: list[tuple] = []
            self.request = _Spy(self.request, calls)
            super().setup()
            self.request = self.request.sock
            set_here.append(any(c[1] == socket.TCP_NODELAY for c in calls))

        def serve(self, sock: socket.socket) -> None:
            seen.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            super().serve(sock)

    config = config_for(captured, "tcp", "127.0.0.1:0", "-H", "echo", "-c", concurrency)
    server = make_server(config, Probe)
    assert server.nodelay_inherited is sys.platform.startswith("linux")
    thread = threading.Thread(target=server.serve_forever, args=(0.05,))
    thread.start()
    try:
        echo_hi(server)
    finally:
        stop_serving(server, thread)
    assert seen and seen[0] != 0
    assert set_here == [not server.nodelay_inherited]


class _Spy:
    """A socket stand-in for `setup`: records setsockopt calls, passes everything on."""

    def __init__(self, sock: socket.socket, calls: list[tuple]) -> None:
        self.sock = sock
        self.calls = calls

    def setsockopt(self, *args: object) -> None:
        self.calls.append(args)
        self.sock.setsockopt(*args)

    def __getattr__(self, name: str) -> object:
        return getattr(self.sock, name)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux hands TCP_NODELAY down")
def test_the_listener_hands_nodelay_down_to_connections() -> None:
    cls = type("Server", (NodelayListenerPart, ss.TCPServer), {})
    with cls(("127.0.0.1", 0), ss.BaseRequestHandler) as server:
        assert server.nodelay_inherited
        with socket.create_connection(server.server_address, timeout=5):
            request, _ = server.get_request()
            with request:
                assert request.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


def test_the_listener_is_closed_before_the_handler_runs() -> None:
    """What a forked child does first, shown on a synchronous server."""
    seen: list[int] = []

    class Handler(ss.BaseRequestHandler):
        def handle(self) -> None:
            seen.append(self.server.socket.fileno())

    cls = type("Server", (ChildClosesListenerPart, ss.TCPServer), {})
    with cls(("127.0.0.1", 0), Handler) as server:
        with socket.create_connection(server.server_address, timeout=5):
            server.handle_request()
    assert seen == [-1]

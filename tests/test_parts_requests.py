"""RequestsPart: the stop a handler asks for, on a plain threading server."""

from __future__ import annotations

import socket
import threading

import pytest

import sockserve as ss
from sockserve.parts.requests import RequestsPart

pytestmark = pytest.mark.leakcheck


def test_request_stop_from_a_handler_thread_returns_fast() -> None:
    cls = type("Server", (RequestsPart, ss.ThreadingTCPServer), {})
    entered = threading.Event()

    class Handler(ss.BaseRequestHandler):
        def handle(self) -> None:
            self.server.request_stop("handler asked")
            entered.set()

    with cls(("127.0.0.1", 0), Handler) as server:
        t = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 30})
        t.start()
        with socket.create_connection(server.server_address, timeout=5):
            assert entered.wait(5)
        t.join(5)
        assert not t.is_alive()
        assert server.stop_reason == "handler asked"


def test_requests_are_counted_up_to_the_limit_then_refused() -> None:
    cls = type("Server", (RequestsPart, ss.TCPServer), {"request_limit": 2})
    with cls(("127.0.0.1", 0), ss.BaseRequestHandler) as server:
        assert [server.verify_request(None, None) for _ in range(3)] == [True, True, False]
        assert server.requests_started == 2
        assert server.stop_reason == "request limit reached"
        assert server.shutdown_requested


def test_open_connections_are_tracked_until_closed() -> None:
    cls = type("Server", (RequestsPart, ss.TCPServer), {})
    with cls(("127.0.0.1", 0), ss.BaseRequestHandler) as server:
        with socket.create_connection(server.server_address, timeout=5):
            request, _ = server.get_request()
            assert server.active_requests == {request}
            server.shutdown_request(request)
        assert server.active_requests == set()
        assert request.fileno() == -1

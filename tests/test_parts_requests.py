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

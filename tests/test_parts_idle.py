"""IdleTimeoutPart: every accepted connection gets the --timeout."""

from __future__ import annotations

import socket

import pytest

import sockserve as ss
from sockserve.parts.idle import IdleTimeoutPart

pytestmark = pytest.mark.leakcheck


def test_accepted_connections_get_the_idle_timeout() -> None:
    seen: list[float | None] = []

    class Handler(ss.BaseRequestHandler):
        def handle(self) -> None:
            seen.append(self.request.gettimeout())

    cls = type("Server", (IdleTimeoutPart, ss.TCPServer), {"idle_timeout": 0.25})
    with cls(("127.0.0.1", 0), Handler) as server:
        with socket.create_connection(server.server_address, timeout=5):
            server.handle_request()
    assert seen == [0.25]

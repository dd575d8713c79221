"""ReportingPart: accepted connections, handler errors and the loop's poll, told to the events."""

from __future__ import annotations

import socket

import pytest
from servertools import EventsRecorder

import sockserve as ss
from sockserve.parts.reporting import ReportingPart

pytestmark = pytest.mark.leakcheck


class Fails(ss.BaseRequestHandler):
    def handle(self) -> None:
        raise ValueError("broken handler")


def test_connections_and_handler_errors_go_to_the_events(
    capsys: pytest.CaptureFixture[str],
) -> None:
    events = EventsRecorder()
    cls = type("Server", (ReportingPart, ss.TCPServer), {"monitor": events})
    with cls(("127.0.0.1", 0), Fails) as server:
        with socket.create_connection(server.server_address, timeout=5) as client:
            server.handle_request()
            here = client.getsockname()
    assert events.named("connected") == [(here,)]
    [(client_address, exc)] = events.named("handler_error")
    assert client_address == here and isinstance(exc, ValueError)
    assert "Traceback" not in capsys.readouterr().err  # reported once, to the events


def test_datagrams_are_not_reported_as_connections() -> None:
    events = EventsRecorder()
    cls = type("Server", (ReportingPart, ss.UDPServer), {"monitor": events})
    with cls(("127.0.0.1", 0), ss.BaseRequestHandler) as server:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.sendto(b"x", server.server_address)
            server.handle_request()
    assert events.calls == []


def test_each_loop_iteration_lets_the_events_poll() -> None:
    events = EventsRecorder()
    cls = type("Server", (ReportingPart, ss.TCPServer), {"monitor": events})
    with cls(("127.0.0.1", 0), ss.BaseRequestHandler) as server:
        server.service_actions()
        server.service_actions()
    assert events.polls == 2

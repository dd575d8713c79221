"""ReportingPart: accepted connections, handler errors and the loop's poll, told to the events."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest
from clitools import finish, inet_address, spawn, tcp_exchange, wait_listening
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


# -- through the real command: a handler cannot stop the server --------------------------------

EXITING_HANDLERS = """
import asyncio
import socketserver


def answer(data):
    if data == b"exit":
        raise SystemExit(3)
    if data == b"int":
        raise KeyboardInterrupt
    return data


class Stream(socketserver.BaseRequestHandler):
    def handle(self):
        self.request.sendall(answer(self.request.recv(100)))


class Datagram(socketserver.BaseRequestHandler):
    def handle(self):
        data, sock = self.request
        sock.sendto(answer(data), self.client_address)


class StreamProtocol(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(answer(data))


class DatagramProtocol(asyncio.DatagramProtocol):
    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        self.transport.sendto(answer(data), addr)
"""


@pytest.mark.parametrize(
    ("transport", "args"),
    [
        ("tcp", ["-c", "sync"]),
        ("tcp", ["-c", "thread"]),
        ("tcp", ["-c", "fork"]),
        ("tcp", ["-c", "event"]),
        ("tcp", ["--workers", "2"]),
        ("udp", ["-c", "sync"]),
        ("udp", ["-c", "thread"]),
        ("udp", ["-c", "event"]),
    ],
    ids=["sync", "thread", "fork", "event", "workers", "udp-sync", "udp-thread", "udp-event"],
)
def test_a_handler_raising_system_exit_or_keyboard_interrupt_is_an_error(
    tmp_path: Path, transport: str, args: list[str]
) -> None:
    """The command's rule (the framework lets both through, as the stdlib does): a handler
    cannot stop the server; each is one error line, with its traceback, and counted."""
    handlers = tmp_path / "exiting.py"
    handlers.write_text(EXITING_HANDLERS)
    stream = transport == "tcp"
    name = "Stream" if stream else "Datagram"
    if "event" in args:
        name += "Protocol"
    child = spawn([transport, ":0", "-H", f"{handlers}:{name}", *args])
    addr = inet_address(wait_listening(child))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(10)
        if stream:
            assert tcp_exchange(addr, b"exit") == b""
            assert tcp_exchange(addr, b"int") == b""
            assert tcp_exchange(addr, b"fine", expect=4) == b"fine"
        else:
            for payload in (b"exit", b"int", b"fine"):
                client.sendto(payload, addr)
            assert client.recv(100) == b"fine"
        child.sendintr()
        status, out = finish(child)
        if not stream:  # the server is gone, every datagram handled: no other answer came
            client.setblocking(False)
            with pytest.raises(BlockingIOError):
                client.recv(100)
    assert status == 0, out
    assert re.search(r"error handling 127\.0\.0\.1:\d+: SystemExit: 3", out), out
    assert re.search(r"error handling 127\.0\.0\.1:\d+: KeyboardInterrupt", out), out
    assert re.search(r'exiting\.py", line \d+, in answer', out), out  # the traceback
    assert "Exception in thread" not in out
    assert re.search(r"stopped after .*, 2 errors \(SIGINT received\)", out), out

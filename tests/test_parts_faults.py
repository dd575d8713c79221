"""FaultPart: chosen by the configuration, before the parts it relies on; unchosen connections
go unwatched; --fail-first and --delay-accept at accept time (a server in this process)."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import pytest
from servertools import EventsRecorder, config_for

from sockserve.compose import make_server
from sockserve.parts.faults import FaultPart
from sockserve.parts.reporting import ReportingPart
from sockserve.parts.watching import WatchPart
from sockserve.socketserver import BaseRequestHandler
from sockserve.watch import WatchedSocket

pytestmark = pytest.mark.leakcheck


class Seen(BaseRequestHandler):
    """Echoes once and keeps the type of socket it was handed."""

    sockets: list[type] = []

    def handle(self) -> None:
        Seen.sockets.append(type(self.request))
        self.request.sendall(self.request.recv(100))


def serve(captured: list, *args: str) -> tuple[Any, threading.Thread, EventsRecorder]:
    config = config_for(captured, "tcp", "127.0.0.1:0", "-c", "thread", *args)
    events = EventsRecorder()
    server = make_server(config, Seen, events)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,))
    thread.start()
    return server, thread, events


def stop(server: Any, thread: threading.Thread) -> None:
    server.shutdown()
    thread.join(5)
    server.server_close()


def exchange(server: Any) -> bytes | str:
    try:
        with socket.create_connection(server.server_address, timeout=5) as s:
            s.sendall(b"hi")
            return s.recv(10)
    except ConnectionResetError:
        return "reset"


def test_no_fault_no_part(captured: list) -> None:
    server, thread, _ = serve(captured)
    try:
        assert not isinstance(server, FaultPart)
    finally:
        stop(server, thread)


def test_the_part_comes_first(captured: list) -> None:
    server, thread, _ = serve(captured, "--fail-first", "1")
    try:
        mro = type(server).__mro__
        assert mro.index(FaultPart) < mro.index(ReportingPart) < mro.index(WatchPart)
    finally:
        stop(server, thread)


def test_fail_first_then_serve_reported_connected_first(captured: list) -> None:
    server, thread, events = serve(captured, "--fail-first", "1")
    try:
        assert exchange(server) == "reset"
        assert exchange(server) == b"hi"
    finally:
        stop(server, thread)
    kinds = [call[0] for call in events.calls if call[0] in ("connected", "fault")]
    assert kinds == ["connected", "fault", "connected"]


def test_unchosen_connections_are_not_watched(captured: list) -> None:
    Seen.sockets.clear()
    server, thread, events = serve(captured, "--delay", "1s", "--fault-rate", "0")
    try:
        assert exchange(server) == b"hi"
    finally:
        stop(server, thread)
    assert Seen.sockets and WatchedSocket not in Seen.sockets
    assert events.named("fault") == []


def test_delay_accept_waits_in_the_requests_thread(captured: list) -> None:
    server, thread, events = serve(captured, "--delay-accept", "200ms")
    try:
        start = time.monotonic()
        results: list[Any] = []
        clients = [threading.Thread(target=lambda: results.append(exchange(server))) for _ in "ab"]
        for client in clients:
            client.start()
        for client in clients:
            client.join(5)
        elapsed = time.monotonic() - start
    finally:
        stop(server, thread)
    assert results == [b"hi", b"hi"]
    assert 0.195 <= elapsed < 0.38  # both waited at once, not one after the other
    assert [call[1] for call in events.named("fault")] == ["delay-accept", "delay-accept"]

"""AcceptBackoffPart and DispatchRefusalPart: short of descriptors, threads or processes."""

from __future__ import annotations

import errno
import os
import socket
import threading
from typing import Any

import pytest
from servertools import EventsRecorder

import sockserve as ss
from sockserve.parts.backoff import AcceptBackoffPart, DispatchRefusalPart

pytestmark = pytest.mark.leakcheck


class FailingAccepts(ss.TCPServer):
    """A TCP server whose next accepts fail with the errors in `failures`."""

    failures: list[OSError] = []

    def get_request(self) -> tuple[Any, Any]:
        if self.failures:
            raise self.failures.pop()
        return super().get_request()


def test_accepts_out_of_descriptors_back_off_then_recover() -> None:
    """One warning, a wait that doubles, and one line when an accept works again."""
    events = EventsRecorder()
    emfile = OSError(errno.EMFILE, os.strerror(errno.EMFILE))
    attrs = {"monitor": events, "failures": [emfile, emfile]}
    cls = type("Server", (AcceptBackoffPart, FailingAccepts), attrs)
    with cls(("127.0.0.1", 0), ss.BaseRequestHandler) as server:
        with socket.create_connection(server.server_address, timeout=5):
            waits = []
            for _ in range(2):
                with pytest.raises(OSError):
                    server.get_request()
                waits.append(server._accept_backoff)
            request, _ = server.get_request()
            request.close()
    assert waits == [0.01, 0.02]
    assert events.named("warning") == [
        (
            "cannot accept: Too many open files; pausing accepts until descriptors free up "
            "(raise the limit with `ulimit -n`)",
        )
    ]
    [(info,)] = events.named("info")
    assert info.startswith("accepting again after ")


def test_other_accept_errors_do_not_back_off() -> None:
    events = EventsRecorder()
    attrs = {"monitor": events, "failures": [ConnectionAbortedError(errno.ECONNABORTED, "")]}
    cls = type("Server", (AcceptBackoffPart, FailingAccepts), attrs)
    with cls(("127.0.0.1", 0), ss.BaseRequestHandler) as server:
        with pytest.raises(ConnectionAbortedError):
            server.get_request()
        assert server._accept_failing_since is None
    assert events.calls == []


class Echo(ss.StreamRequestHandler):
    def handle(self) -> None:
        self.wfile.write(self.rfile.readline())


def test_a_thread_that_cannot_start_refuses_its_request(monkeypatch: pytest.MonkeyPatch) -> None:
    """That client is closed without an answer, one warning; the next one is served."""
    events = EventsRecorder()
    real_start = threading.Thread.start
    failures = [RuntimeError("can't start new thread")]

    def start(self: threading.Thread) -> None:
        if failures:
            raise failures.pop()
        real_start(self)

    cls = type("Server", (DispatchRefusalPart, ss.ThreadingTCPServer), {"monitor": events})
    with cls(("127.0.0.1", 0), Echo) as server:
        monkeypatch.setattr(threading.Thread, "start", start)
        with socket.create_connection(server.server_address, timeout=5) as refused:
            server.handle_request()
            assert refused.recv(10) == b""
        with socket.create_connection(server.server_address, timeout=5) as served:
            server.handle_request()
            served.sendall(b"hi\n")
            assert served.recv(10) == b"hi\n"
    [(warning,)] = events.named("warning")
    assert warning.startswith("cannot start a thread for a new request (can't start new thread)")
    [(info,)] = events.named("info")
    assert info.startswith("serving again after ") and info.endswith(" (1 refused)")
    assert events.named("record") == []  # a handler of the user's: no connect was reported
